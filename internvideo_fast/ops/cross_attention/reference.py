"""Cross-attention in plain PyTorch (tests and the reference backend), and the op's limits."""

from __future__ import annotations

import torch

OP_NAME = "cross_attention"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (32, 40, 64, 80, 96, 128)
# Queries at most this many take the split-key (flash-decoding) forward.
SPLIT_MAX_SQ = 16
# b * h runs along the second grid dim (query blocks along the first, so that neighbouring programs share
# k / v in L2), which CUDA caps at 65535.
MAX_BATCH_HEADS = 65535


def cross_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float | None = None,
    kv_lengths: torch.Tensor | None = None,
    keep_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    upcast: bool = True,
    return_lse: bool = False,
):
    """Plain PyTorch attention, in float64 (`upcast`) or q's dtype. `keep_mask` (bool ``[B, H, Sq, Sk]``)
    is the dropout mask, scaled by ``1 / (1 - dropout_p)``. Returns ``out [B, Sq, H, D]`` (float64 when
    `upcast`), or ``(out, lse [B, H, Sq])`` with `return_lse`."""
    dtype = torch.float64 if upcast else q.dtype
    D, Sk = q.shape[-1], k.shape[1]
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    qh, kh, vh = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    if kv_lengths is not None:
        masked = torch.arange(Sk, device=q.device)[None, :] >= kv_lengths.to(q.device)[:, None].long()
        scores = scores.masked_fill(masked[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores.float() if dtype != torch.float64 else scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    if keep_mask is not None:
        probs = probs * keep_mask.to(dtype) * (1.0 / (1.0 - dropout_p))
    out = torch.matmul(probs, vh).transpose(1, 2)
    return (out, lse) if return_lse else out
