"""UniFormerV2: a CLIP image ViT turned video encoder (the multimodal encoder of InternVideo).

Math (UV2 ``slowfast/models/uniformerv2_model.py``; facts in ``shared/REFERENCE.md`` §2), for a video
``[N, 3, T, H, W]`` with patch ``p``, width ``C``, ``HW = (H / p) * (W / p)`` patches per frame:

1. ``conv1``: Conv3d ``3 -> C``, kernel ``(1, p, p)`` (or ``(3, p, p)`` stride ``(2, p, p)`` with
   ``temporal_downsample``), no bias -> every frame is one image of ``HW`` tokens; the frames run through
   the image ViT as one batch of ``N * T``: ``x [N*T, 1+HW, C] = ln_pre([class_embedding; tokens] +
   positional_embedding)``.
2. ``transformer.resblocks.i`` (pre-norm CLIP blocks, QuickGELU MLP) with optional local temporal MHRA on
   the patch tokens: ``x_p += lmhra1(x_p)`` before attention and ``x_p += lmhra2(x_p)`` before the FFN,
   ``lmhra = BN3d -> Conv 1x1x1 (C -> C/1.5) -> depthwise Conv (3,1,1) -> Conv 1x1x1 (-> C, zero-init)``
   over ``[N, C, T, H/p, W/p]``.
3. Global UniBlocks after the layers in ``dec_layers`` (B/16: 8..11): a copy of the tokens gets the
   depthwise 3x3x3 position encoding ``transformer.dpe.j`` added on its patch tokens; the ``T * (1+HW)``
   tokens of each video are flattened, and one learnable query ``transformer.temporal_cls_token [1,1,C]``,
   carried from block to block, is updated by ``transformer.dec.j``:
   ``q += attn(ln_1(q), ln_3(tokens)); q += mlp(ln_2(q))`` (cross-attention through
   :func:`~internvideo_fast.ops.cross_attention`; MLP QuickGELU with dropout 0.5 after the activation).
4. Fusion: ``f = sigmoid(balance) * mean_t(frame CLS of the last layer) + (1 - sigmoid(balance)) * q``,
   ``balance`` init 0; head ``transformer.proj = Sequential(LayerNorm, Dropout(0.5), Linear)``.

The state dict has the official names (``conv1.weight``, ``class_embedding``, ``positional_embedding``,
``ln_pre.*``, ``transformer.resblocks.i.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.*, ln_1,
mlp.c_fc, mlp.c_proj, ln_2, lmhra1.pos_embed.{0..3}, lmhra2...}``, ``transformer.temporal_cls_token``,
``transformer.dpe.j.*``, ``transformer.dec.j.{attn.*, ln_1, ln_2, ln_3, mlp.c_fc, mlp.c_proj}``,
``transformer.balance``, ``transformer.proj.{0,2}.*``), so UniFormerV2 checkpoints (keys prefixed
``backbone.``, PySlowFast's ``{'model_state': ...}``) load with :func:`load_checkpoint` (strict; also what
``create_model(name, pretrained=path)`` calls), and OpenAI-CLIP image weights (``visual.*``, 2-D ``conv1``)
with :func:`load_clip_image_weights`.

Differences from the official code (none changes the math): tokens are kept batch-first
``[N*T, 1+HW, C]`` instead of ``[1+HW, N*T, C]``; the backbone self-attention runs through
``F.scaled_dot_product_attention`` with ``nn.MultiheadAttention``'s parameter names; the MLPs run through
the fused ``linear_act`` op; every LayerNorm computes in float32 (the official ``dec`` norms use a plain
``nn.LayerNorm``, identical in float32); ``T`` is read from the input instead of fixed at construction;
stochastic depth drops whole frames (blocks) or whole videos (UniBlocks, local MHRA), where the official
``DropPath`` on ``[1+HW, N*T, C]`` drops tokens (and on the ``[1, N, C]`` query, all videos at once).
The ``frozen`` (no-balance) variant is not implemented. InternVideo-MM's global-only encoder
(``vit_only_global_b16/_l14``: no local MHRA, the same ``temporal_cls_token`` / ``dpe`` / ``dec`` /
``balance`` branch, no ``transformer.proj``) is ``lmhra=False, num_classes=0`` (see ``internvideo_mm.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from internvideo_fast.errors import CheckpointError
from internvideo_fast.layers.constants import CLIP_MEAN, CLIP_STD
from internvideo_fast.layers.drop import drop_path
from internvideo_fast.layers.norm import LayerNorm
from internvideo_fast.models.checkpoint import (
    LoadReport, load_matching, read_checkpoint, register_checkpoint_loader, unwrap_state_dict,
)
from internvideo_fast.models.registry import register_model
from internvideo_fast.ops.cross_attention import SUPPORTED_HEAD_DIMS, cross_attention
from internvideo_fast.ops.linear_act import linear_act



# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------
def _linspace(end: float, steps: int) -> list[float]:
    """``torch.linspace(0, end, steps).tolist()`` without a tensor (works under a meta device)."""
    return [end * i / (steps - 1) if steps > 1 else 0.0 for i in range(steps)]


class ClipMLP(nn.Module):
    """``c_proj(dropout(quick_gelu(c_fc(x))))`` with CLIP's child names; both matmuls through the fused
    ``linear_act`` op (bias and activation in the epilogue)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)
        self.drop = float(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t if t.dtype == dtype else t.to(dtype)

        h = linear_act(cast(x), cast(self.c_fc.weight), cast(self.c_fc.bias), "quick_gelu")
        h = F.dropout(h, self.drop, self.training)
        return linear_act(h, cast(self.c_proj.weight), cast(self.c_proj.bias), "none")


class InProjAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters (``in_proj_weight [3C, C]``, q rows
    first, then k, then v; ``in_proj_bias [3C]``; ``out_proj``), batch-first.

    ``forward(x)`` is self-attention through ``F.scaled_dot_product_attention`` (CLIP blocks, any head
    dim); ``forward(x_q, x_kv)`` is cross-attention through our :func:`cross_attention` op (the UniBlock
    query; head dims 32, 40, 64, 80, 96, 128).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"num_heads {num_heads} must divide dim {dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, x_kv: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, Sq, C]`` (and ``x_kv [B, Sk, C]`` for cross-attention) -> ``[B, Sq, C]``."""
        B, Sq, C = x.shape
        H, D = self.num_heads, self.head_dim
        if x_kv is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, Sq, 3, H, D)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, S, D] each
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        else:
            Sk = x_kv.shape[1]
            q = F.linear(x, self.in_proj_weight[:C], self.in_proj_bias[:C]).view(B, Sq, H, D)
            kv = F.linear(x_kv, self.in_proj_weight[C:], self.in_proj_bias[C:]).view(B, Sk, 2, H, D)
            out = cross_attention(q, kv[:, :, 0], kv[:, :, 1])
        return self.out_proj(out.reshape(B, Sq, C))


class LocalMHRA(nn.Module):
    """Local temporal relation aggregation over ``[N, C, T, h, w]``: ``pos_embed = Sequential(BN3d,
    Conv 1x1x1 C -> int(C // dw_reduction), depthwise Conv (k,1,1), Conv 1x1x1 -> C)``; the last conv is
    zero-initialised so the residual branch starts as the identity."""

    def __init__(self, dim: int, dw_reduction: float = 1.5, kernel_size: int = 3) -> None:
        super().__init__()
        reduced = int(dim // dw_reduction)
        self.pos_embed = nn.Sequential(
            nn.BatchNorm3d(dim),
            nn.Conv3d(dim, reduced, kernel_size=1),
            nn.Conv3d(reduced, reduced, kernel_size=(kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0),
                      groups=reduced),
            nn.Conv3d(reduced, dim, kernel_size=1),
        )
        nn.init.zeros_(self.pos_embed[3].weight)
        nn.init.zeros_(self.pos_embed[3].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_embed(x)


def _patches_to_video(x: torch.Tensor, T: int, h: int, w: int) -> torch.Tensor:
    """``[N*T, h*w, C] -> [N, C, T, h, w]``."""
    NT, _, C = x.shape
    return x.reshape(NT // T, T, h, w, C).permute(0, 4, 1, 2, 3)


def _video_to_patches(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, T, h, w] -> [N*T, h*w, C]``."""
    N, C, T, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(N * T, h * w, C)


class ResidualAttentionBlock(nn.Module):
    """A CLIP block with optional local MHRA on the patch tokens (before attention and before the FFN)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 lmhra: bool = False, double_lmhra: bool = True, dw_reduction: float = 1.5) -> None:
        super().__init__()
        self.lmhra = lmhra
        self.double_lmhra = double_lmhra
        self.drop_path = drop_path
        if lmhra:
            self.lmhra1 = LocalMHRA(dim, dw_reduction)
            if double_lmhra:
                self.lmhra2 = LocalMHRA(dim, dw_reduction)
        self.attn = InProjAttention(dim, num_heads)
        self.ln_1 = LayerNorm(dim)
        self.mlp = ClipMLP(dim, round(dim * mlp_ratio))
        self.ln_2 = LayerNorm(dim)

    def _local(self, module: LocalMHRA, x: torch.Tensor, T: int, grid: tuple[int, int]) -> torch.Tensor:
        patches = _patches_to_video(x[:, 1:], T, *grid)
        patches = patches + drop_path(module(patches), self.drop_path, self.training)
        return torch.cat([x[:, :1], _video_to_patches(patches)], dim=1)

    def forward(self, x: torch.Tensor, T: int, grid: tuple[int, int]) -> torch.Tensor:
        """``x [N*T, 1+h*w, C]`` (frames of one video adjacent), ``grid = (h, w)``."""
        if self.lmhra:
            x = self._local(self.lmhra1, x, T, grid)
        x = x + drop_path(self.attn(self.ln_1(x)), self.drop_path, self.training)
        if self.lmhra and self.double_lmhra:
            x = self._local(self.lmhra2, x, T, grid)
        return x + drop_path(self.mlp(self.ln_2(x)), self.drop_path, self.training)


class Extractor(nn.Module):
    """A global UniBlock: the query ``q [N, 1, C]`` cross-attends to ``ln_3(tokens [N, T*(1+hw), C])``,
    then a QuickGELU MLP with dropout after the activation; ``out_proj`` and ``c_proj`` zero-init."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.5,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.drop_path = drop_path
        self.attn = InProjAttention(dim, num_heads)
        self.ln_1 = LayerNorm(dim)
        self.mlp = ClipMLP(dim, round(mlp_ratio * dim), drop=dropout)
        self.ln_2 = LayerNorm(dim)
        self.ln_3 = LayerNorm(dim)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)
        nn.init.xavier_uniform_(self.mlp.c_fc.weight)
        nn.init.zeros_(self.mlp.c_proj.weight)
        nn.init.zeros_(self.mlp.c_proj.bias)

    def forward(self, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q = q + drop_path(self.attn(self.ln_1(q), self.ln_3(tokens)), self.drop_path, self.training)
        return q + drop_path(self.mlp(self.ln_2(q)), self.drop_path, self.training)


class Transformer(nn.Module):
    """``resblocks`` + the global branch (``temporal_cls_token``, ``dpe``, ``dec``, ``balance``, ``proj``);
    the official module layout, so the state-dict names match."""

    def __init__(self, cfg: UniFormerV2Config) -> None:
        super().__init__()
        C = cfg.width
        rates = _linspace(cfg.backbone_drop_path_rate, cfg.layers)
        self.resblocks = nn.ModuleList([
            ResidualAttentionBlock(C, cfg.heads, cfg.mlp_ratio, rates[i], cfg.lmhra, cfg.double_lmhra,
                                   cfg.dw_reduction)
            for i in range(cfg.layers)
        ])
        self.dec_layers = tuple(cfg.dec_layers)
        n = len(self.dec_layers)
        dec_heads = cfg.dec_heads or cfg.heads
        if C % dec_heads or C // dec_heads not in SUPPORTED_HEAD_DIMS:
            raise ValueError(
                f"the UniBlock head dim width / dec_heads = {C} / {dec_heads} must be one of "
                f"{SUPPORTED_HEAD_DIMS} (the cross_attention op's head dims)"
            )
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.dpe = nn.ModuleList(
            [nn.Conv3d(C, C, kernel_size=3, stride=1, padding=1, bias=True, groups=C) for _ in range(n)]
        )
        for conv in self.dpe:
            nn.init.zeros_(conv.bias)
        dec_rates = _linspace(cfg.drop_path_rate, n)
        self.dec = nn.ModuleList([
            Extractor(C, dec_heads, cfg.dec_mlp_ratio, cfg.dec_mlp_dropout, dec_rates[j])
            for j in range(n)
        ])
        self.balance = nn.Parameter(torch.zeros(C))
        # num_classes=0: no classifier head (InternVideo-MM's global-only encoder has none).
        self.proj = None
        if cfg.num_classes > 0:
            self.proj = nn.Sequential(nn.LayerNorm(C), nn.Dropout(cfg.cls_dropout),
                                      nn.Linear(C, cfg.num_classes))


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------
@dataclass
class UniFormerV2Config:
    """Sizes and switches, with the official names where they exist (``no_lmhra`` is ``not lmhra``,
    ``return_list`` is ``dec_layers``).

    The defaults are the released Kinetics setting: local MHRA off (``NO_LMHRA: True``) and no temporal
    downsampling (``conv1`` kernel ``(1, p, p)``, ``[768, 3, 1, 16, 16]`` in the checkpoints); the SSv2
    configs switch ``lmhra`` on."""

    img_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    dec_layers: Sequence[int] = (8, 9, 10, 11)
    dec_heads: int | None = None  # None: `heads`
    dec_mlp_ratio: float = 4.0
    dec_mlp_dropout: float = 0.5
    cls_dropout: float = 0.5
    num_classes: int = 400  # 0: no ``transformer.proj`` head (InternVideo-MM's global-only video encoder)
    lmhra: bool = False
    double_lmhra: bool = True
    dw_reduction: float = 1.5
    temporal_downsample: bool = False
    temporal_kernel: int = 3  # conv1's temporal kernel with temporal_downsample
    backbone_drop_path_rate: float = 0.0
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False


class UniFormerV2(nn.Module):
    """UniFormerV2 video classifier (module docstring). ``forward(video [N, 3, T, H, W]) -> logits``;
    ``forward_features`` gives the fused feature ``[N, C]``, ``forward_head`` the logits, and
    ``forward_tokens`` the token interface the CMA fusion reads."""

    def __init__(self, cfg: UniFormerV2Config | None = None, **overrides) -> None:
        super().__init__()
        if "no_lmhra" in overrides:  # the official switch name
            overrides["lmhra"] = not overrides.pop("no_lmhra")
        if "return_list" in overrides:
            overrides["dec_layers"] = overrides.pop("return_list")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(UniFormerV2Config)})
        if unknown:
            raise ValueError(f"unknown UniFormerV2 options {unknown}")
        cfg = dataclasses.replace(cfg or UniFormerV2Config(), **overrides)
        cfg.dec_layers = tuple(cfg.dec_layers)
        if any(not 0 <= i < cfg.layers for i in cfg.dec_layers) or list(cfg.dec_layers) != sorted(
            set(cfg.dec_layers)
        ):
            raise ValueError(
                f"dec_layers must be increasing indices in [0, {cfg.layers}), got {cfg.dec_layers}"
            )
        self.cfg = cfg
        C, p = cfg.width, cfg.patch_size
        self.embed_dim = self.num_features = C
        if cfg.temporal_downsample:
            k = cfg.temporal_kernel
            self.conv1 = nn.Conv3d(3, C, (k, p, p), (2, p, p), ((k - 1) // 2, 0, 0), bias=False)
        else:
            self.conv1 = nn.Conv3d(3, C, (1, p, p), (1, p, p), bias=False)
        scale = C ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(C))
        self.positional_embedding = nn.Parameter(scale * torch.randn((cfg.img_size // p) ** 2 + 1, C))
        self.ln_pre = LayerNorm(C)
        self.transformer = Transformer(cfg)
        self.grad_checkpointing = cfg.grad_checkpointing

    # -- embedding and backbone ----------------------------------------------------------------------
    def _embed(self, video: torch.Tensor) -> tuple[torch.Tensor, int, tuple[int, int]]:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [N, 3, T, H, W], got {tuple(video.shape)}")
        x = self.conv1(video.to(self.conv1.weight.dtype))  # [N, C, T, h, w]
        N, C, T, h, w = x.shape
        if h * w + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"video of {tuple(video.shape[-2:])} gives {h}x{w} patches, but positional_embedding has "
                f"{self.positional_embedding.shape[0] - 1}"
            )
        x = _video_to_patches(x)  # [N*T, hw, C]
        cls = self.class_embedding.to(x.dtype).expand(N * T, 1, C)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x), T, (h, w)

    def _block(self, i: int, x: torch.Tensor, T: int, grid: tuple[int, int]) -> torch.Tensor:
        block = self.transformer.resblocks[i]
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, T, grid, use_reentrant=False)
        return block(x, T, grid)

    def _global_tokens(self, j: int, x: torch.Tensor, T: int, grid: tuple[int, int]) -> torch.Tensor:
        """A copy of ``x [N*T, 1+hw, C]`` with ``dpe[j]`` added on its patch tokens, as
        ``[N, T*(1+hw), C]``."""
        NT, L, C = x.shape
        N = NT // T
        pos = _video_to_patches(self.transformer.dpe[j](_patches_to_video(x[:, 1:], T, *grid)))
        tokens = torch.cat([x[:, :1], x[:, 1:] + pos], dim=1)
        return tokens.reshape(N, T * L, C)

    def _run(self, video: torch.Tensor, keep_layers: Sequence[int] = ()) -> tuple:
        """Backbone + UniBlocks: ``(fused feature [N, C], last tokens [N*T, 1+hw, C], T, kept tokens)``."""
        x, T, grid = self._embed(video)
        N = x.shape[0] // T
        t = self.transformer
        query = t.temporal_cls_token.to(x.dtype).expand(N, 1, -1)
        kept = {}
        keep = {i % len(t.resblocks) for i in keep_layers}
        j = 0
        for i in range(len(t.resblocks)):
            x = self._block(i, x, T, grid)
            if i in keep:
                kept[i] = x
            if j < len(t.dec_layers) and i == t.dec_layers[j]:
                query = t.dec[j](query, self._global_tokens(j, x, T, grid))
                j += 1
        weight = torch.sigmoid(t.balance)
        frame_cls = x.reshape(N, T, -1, x.shape[-1])[:, :, 0].mean(1)
        feature = (1 - weight) * query[:, 0] + weight * frame_cls
        return feature, x, T, kept

    # -- public interface ------------------------------------------------------------------------------
    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """``video [N, 3, T, H, W]`` (CLIP-normalised) -> the balance-fused feature ``[N, C]``."""
        return self._run(video)[0]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``proj = LayerNorm -> Dropout -> Linear``; `pre_logits` stops before the Linear. Without a head
        (``num_classes=0``) the features are returned unchanged."""
        proj = self.transformer.proj
        if proj is None:
            return features
        return proj[1](proj[0](features)) if pre_logits else proj(features)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))

    def forward_tokens(self, video: torch.Tensor, layers: Sequence[int] | int | None = None,
                       include_global: bool = True) -> torch.Tensor:
        """Tokens for the CMA fusion: ``[N, G + len(layers) * T*(1+hw), C]``.

        `layers`: backbone block indices (negative counts from the end) whose output tokens (frame-major,
        CLS first in each frame) are concatenated; None is the last block. ``include_global`` prepends the
        balance-fused video feature as one token (``G = 1``)."""
        if layers is None:
            layers = [-1]
        elif isinstance(layers, int):
            layers = [layers]
        depth = len(self.transformer.resblocks)
        feature, _, T, kept = self._run(video, keep_layers=layers)
        N, C = feature.shape
        parts = [feature[:, None]] if include_global else []
        parts += [kept[i % depth].reshape(N, -1, C) for i in layers]
        return torch.cat(parts, dim=1)

    def no_weight_decay(self) -> set[str]:
        return {"class_embedding", "positional_embedding", "transformer.temporal_cls_token",
                "transformer.balance"}


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------
_PREFIXES = ("module.", "backbone.", "model.", "clip.")
# Parts of the video model that an image (CLIP) checkpoint cannot hold.
VIDEO_ONLY = ("lmhra", "transformer.dpe.", "transformer.dec.", "transformer.temporal_cls_token",
              "transformer.balance", "transformer.proj.")
_HEAD = "transformer.proj."


def _unwrap(state_dict: Mapping) -> Mapping[str, torch.Tensor]:
    for key in ("model", "module", "state_dict", "model_state"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            return state_dict[key]
    return state_dict


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def checkpoint_filter_fn(state_dict: Mapping, model: UniFormerV2 | None = None) -> dict[str, torch.Tensor]:
    """Official UniFormerV2 checkpoint -> this model's names: unwrap ``{'model' | 'module' | 'state_dict' |
    'model_state': sd}`` (``model_state``: PySlowFast) and strip the ``module.`` / ``backbone.`` /
    ``model.`` / ``clip.`` prefixes (the names are otherwise the official ones). With `model`, 2-D (image) weights of 5-D
    parameters are inflated."""
    out = {_strip_prefixes(key): value for key, value in _unwrap(state_dict).items()}
    if model is not None:
        own = model.state_dict()
        for key, value in out.items():
            if key in own and value.dim() + 1 == own[key].dim() == 5:
                out[key] = inflate_weight(value, own[key].shape[2])
    return out


def interpolate_positional_embedding(pos: torch.Tensor, tokens: int) -> torch.Tensor:
    """A CLIP position table ``[1 + g*g, C]`` (class token first) resized to ``[tokens, C]`` (bicubic over the
    square patch grid; the class token's row is kept)."""
    old, new = round((pos.shape[0] - 1) ** 0.5), round((tokens - 1) ** 0.5)
    if old * old + 1 != pos.shape[0] or new * new + 1 != tokens:
        raise CheckpointError(f"cannot resize a position table of {pos.shape[0]} tokens to {tokens}: "
                              "not a class token plus a square grid")
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1].float(), grid.permute(0, 2, 3, 1).reshape(new * new, -1)]).to(pos.dtype)


def _video_tower(state: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    """The ``visual.*`` part of a video-text (our VideoTextModel, InternVideo-MM) or CLIP checkpoint, without
    the prefix; every other key is dropped as not the video tower."""
    if not any(k.startswith("visual.") for k in state):
        return state
    tower = {}
    for key, value in state.items():
        if key.startswith("visual."):
            tower[key[len("visual."):]] = value
        else:
            report.dropped[key] = "not the video tower (text tower, projections, metadata)"
    return tower


def load_checkpoint(model: UniFormerV2, state_dict, strict: bool = True, source: str | None = None,
                    image: bool | None = None) -> LoadReport:
    """Load a UniFormerV2 checkpoint (a path or a loaded mapping) into `model`: official files
    (``backbone.*``, PySlowFast's ``{'model_state': ...}``), ours, the video tower of a video-text checkpoint
    (``visual.*``), or CLIP image weights (2-D ``conv1``: `image` None detects them).

    Strict by default (:mod:`~internvideo_fast.models.checkpoint`); expected differences, reported: a
    classifier head (``transformer.proj``) of another class count, absent from the checkpoint, or absent from
    the model (``num_classes=0``); a ``positional_embedding`` interpolated to the model's resolution; image
    weights inflated over time; for image weights, CLIP's ``ln_post`` / ``proj`` dropped and the video-only
    parts (local MHRA, ``dpe``, ``dec``, ``temporal_cls_token``, ``balance``) left at their initialisation."""
    if not isinstance(state_dict, Mapping):
        source = source or str(state_dict)
        state_dict = read_checkpoint(state_dict)
    report = LoadReport(source or "<state dict>")
    state = {_strip_prefixes(k): v for k, v in unwrap_state_dict(state_dict, report.source).items()
             if isinstance(v, torch.Tensor)}
    state = _video_tower(state, report)
    own = model.state_dict()
    conv1 = state.get("conv1.weight")
    if image is None:
        image = conv1 is not None and conv1.dim() == 4
    if image:
        for key in [k for k in state if k.startswith("ln_post.") or k == "proj"]:
            report.dropped[key] = "CLIP's image head"
            del state[key]
    for key, value in list(state.items()):
        if key not in own:
            continue
        target = own[key]
        if value.dim() + 1 == target.dim() == 5 and value.shape[:2] == target.shape[:2]:
            state[key] = inflate_weight(value, target.shape[2]).to(target.dtype)
            report.inflated.append(key)
        elif key == "positional_embedding" and value.shape != target.shape and \
                value.shape[-1] == target.shape[-1]:
            state[key] = interpolate_positional_embedding(value, target.shape[0])
            report.interpolated.append(key)
    head = [k for k in state if k.startswith(_HEAD)]
    own_head = [k for k in own if k.startswith(_HEAD)]
    if head and not own_head:
        for key in head:
            report.dropped[key] = "the model has no classifier head (num_classes=0)"
            del state[key]
    elif own_head and f"{_HEAD}2.weight" in state and \
            state[f"{_HEAD}2.weight"].shape != own[f"{_HEAD}2.weight"].shape:
        classes = state[f"{_HEAD}2.weight"].shape[0]
        for key in (f"{_HEAD}2.weight", f"{_HEAD}2.bias"):
            if key in state:
                report.dropped[key] = f"a head of {classes} classes; the model has {model.cfg.num_classes}"
                report.initialized[key] = f"new head of {model.cfg.num_classes} classes"
                del state[key]
    for key in own_head:
        if key not in state and key not in report.initialized:
            report.initialized[key] = "new classifier head (not in the checkpoint)"
    if image:
        for key in own:
            if key not in state and any(part in key for part in VIDEO_ONLY) and key not in report.initialized:
                report.initialized[key] = "video-only part (not in an image checkpoint)"
    return load_matching(model, state, report, strict)


def inflate_weight(weight_2d: torch.Tensor, time_dim: int, center: bool = True) -> torch.Tensor:
    """``[O, I, p, p] -> [O, I, time_dim, p, p]``: the image kernel at the middle time step and zeros
    elsewhere (`center`, the official default), or repeated and divided by `time_dim`."""
    if center:
        weight = weight_2d.new_zeros(weight_2d.shape[:2] + (time_dim,) + weight_2d.shape[2:])
        weight[:, :, time_dim // 2] = weight_2d
        return weight
    return weight_2d.unsqueeze(2).repeat(1, 1, time_dim, 1, 1) / time_dim


def load_clip_image_weights(model: UniFormerV2, state_dict, strict: bool = True) -> LoadReport:
    """Initialise the image ViT from OpenAI-CLIP weights (a path or mapping: a full CLIP state dict with
    ``visual.*`` keys or the visual tower alone; ``backbone.``/``module.`` prefixes accepted): the 2-D
    ``conv1.weight [C, 3, p, p]`` is inflated to conv1's temporal kernel (centre), a ``positional_embedding``
    of another resolution is interpolated, CLIP's ``ln_post`` / ``proj`` and the text tower are dropped, and
    the video-only parts (local MHRA, ``dpe``, ``dec``, ``temporal_cls_token``, ``balance``,
    ``transformer.proj``) keep their initialisation; anything else that does not fit is an error under
    `strict` (see :func:`load_checkpoint`)."""
    return load_checkpoint(model, state_dict, strict=strict, image=True)


register_checkpoint_loader(
    UniFormerV2, lambda model, checkpoint, source, strict: load_checkpoint(model, checkpoint, strict, source))


# ----------------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------------
_SIZES = {
    # name: (img_size, patch, width, layers, heads, dec_layers)
    "b16": (224, 16, 768, 12, 12, (8, 9, 10, 11)),
    "l14": (224, 14, 1024, 24, 16, (20, 21, 22, 23)),
    "l14_336": (336, 14, 1024, 24, 16, (20, 21, 22, 23)),
    # test sizes: head dim 32 (a cross_attention head dim)
    "tiny": (32, 16, 64, 4, 2, (2, 3)),
}


def _factory(size: str):
    img_size, patch, width, layers, heads, dec = _SIZES[size]

    def factory(**overrides) -> UniFormerV2:
        cfg = UniFormerV2Config(img_size=img_size, patch_size=patch, width=width, layers=layers, heads=heads,
                                dec_layers=dec)
        return UniFormerV2(cfg, **overrides)

    factory.__name__ = f"uniformerv2_{size}"
    factory.__doc__ = (
        f"UniFormerV2 {size}: width {width}, {layers} layers, {heads} heads, UniBlocks at {dec}."
    )
    return factory


uniformerv2_b16 = register_model("uniformerv2_b16", _factory("b16"))
uniformerv2_l14 = register_model("uniformerv2_l14", _factory("l14"))
uniformerv2_l14_336 = register_model("uniformerv2_l14_336", _factory("l14_336"))
uniformerv2_tiny = register_model("uniformerv2_tiny", _factory("tiny"))


__all__ = [
    "CLIP_MEAN", "CLIP_STD", "UniFormerV2", "UniFormerV2Config", "checkpoint_filter_fn", "inflate_weight",
    "interpolate_positional_embedding", "load_checkpoint", "load_clip_image_weights", "uniformerv2_b16", "uniformerv2_l14", "uniformerv2_l14_336",
    "uniformerv2_tiny",
]
