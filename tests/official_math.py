"""Test-only reference of the official CLIP / UniFormerV2 math on state-dict tensors (``[S, N, C]`` layout, as
the official code runs), shared by the UniFormerV2 and InternVideo-MM checkpoint tests. Plain PyTorch, written
from the official repositories' formulas, independent of internvideo_fast's modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], 1e-5)


def clip_mlp(x, sd, prefix):
    """c_fc, QuickGELU (``x * sigmoid(1.702 x)``), c_proj."""
    h = x @ sd[prefix + ".c_fc.weight"].T + sd[prefix + ".c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)
    return h @ sd[prefix + ".c_proj.weight"].T + sd[prefix + ".c_proj.bias"]


def mha(x, y, sd, prefix, heads, mask=None):
    """nn.MultiheadAttention / official Extractor.attention: queries from x, keys and values from y."""
    C = x.shape[-1]
    w, b = sd[prefix + ".in_proj_weight"], sd[prefix + ".in_proj_bias"]
    q, k, v = x @ w[:C].T + b[:C], y @ w[C:2 * C].T + b[C:2 * C], y @ w[2 * C:].T + b[2 * C:]
    d = C // heads
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d).permute(1, 2, 0, 3) for t in (q, k, v))
    aff = q @ k.transpose(-2, -1) / d ** 0.5
    if mask is not None:
        aff = aff + mask
    out = (aff.softmax(-1) @ v).permute(2, 0, 1, 3).flatten(2)
    return out @ sd[prefix + ".out_proj.weight"].T + sd[prefix + ".out_proj.bias"]


def residual_block(x, sd, prefix, heads, mask=None):
    """A CLIP ResidualAttentionBlock: x + attn(ln_1 x), then + mlp(ln_2 x)."""
    h = layer_norm(x, sd, prefix + ".ln_1")
    x = x + mha(h, h, sd, prefix + ".attn", heads, mask)
    return x + clip_mlp(layer_norm(x, sd, prefix + ".ln_2"), sd, prefix + ".mlp")


def global_block(x, cls_token, sd, transformer, j, heads, N, T, H, W):
    """UniFormerV2's j-th global UniBlock: the depthwise 3D-conv position encoding ``dpe.j`` added to the
    patch tokens of ``x [L, N*T, C]``, then the query ``cls_token [1, N, C]`` attends (``dec.j``) over every
    frame's tokens. Returns the new cls_token."""
    L, _, C = x.shape
    tokens = x.view(L, N, T, C)
    feats = tokens[1:].permute(1, 3, 2, 0).reshape(N, C, T, H, W)
    dpe = f"{transformer}.dpe.{j}"
    feats = F.conv3d(feats, sd[dpe + ".weight"], sd[dpe + ".bias"], padding=1, groups=C)
    tokens = torch.cat([tokens[:1], tokens[1:] + feats.view(N, C, T, L - 1).permute(3, 0, 2, 1)], dim=0)
    tokens = tokens.permute(2, 0, 1, 3).flatten(0, 1)  # [T*L, N, C]
    dec = f"{transformer}.dec.{j}"
    query, keys = layer_norm(cls_token, sd, dec + ".ln_1"), layer_norm(tokens, sd, dec + ".ln_3")
    cls_token = cls_token + mha(query, keys, sd, dec + ".attn", heads)
    return cls_token + clip_mlp(layer_norm(cls_token, sd, dec + ".ln_2"), sd, dec + ".mlp")


def balanced_feature(x, cls_token, sd, transformer, N, T):
    """``(1 - w) * cls_token + w * mean over frames of the class token``, ``w = sigmoid(balance)``."""
    L, _, C = x.shape
    weight = torch.sigmoid(sd[f"{transformer}.balance"])
    return (1 - weight) * cls_token[0] + weight * x.view(L, N, T, C)[0].mean(1)
