"""dropout_add_layer_norm and dropout_add_rms_norm in plain PyTorch (tests and the reference backend)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

OP_NAME = "dropout_add_layer_norm"
# One row lives in registers; the widest config.
MAX_KERNEL_D = 4096
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dropout_add_layer_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    keep_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    eps: float = 1e-6,
    drop_path_scale: torch.Tensor | None = None,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch: ``(LayerNorm(h) * weight + bias, h)`` for ``h = residual + x * keep_mask / (1 - p) *
    drop_path_scale[sample]``, computed in x's dtype (``upcast``: in float64, returned as float64).
    `keep_mask` (bool, x's shape) is the dropout mask; None keeps everything."""
    dtype = torch.float64 if upcast else x.dtype
    new_residual = _new_residual_ref(x, residual, keep_mask, dropout_p, drop_path_scale, dtype)
    normed = F.layer_norm(
        new_residual, (x.shape[-1],),
        None if weight is None else weight.to(dtype), None if bias is None else bias.to(dtype), eps,
    )
    return normed, new_residual


def dropout_add_rms_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    keep_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    eps: float = 1e-6,
    drop_path_scale: torch.Tensor | None = None,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dropout_add_layer_norm_ref` with RMSNorm: ``h / sqrt(mean(h^2) + eps) * weight + bias``."""
    dtype = torch.float64 if upcast else x.dtype
    new_residual = _new_residual_ref(x, residual, keep_mask, dropout_p, drop_path_scale, dtype)
    normed = F.rms_norm(new_residual, (x.shape[-1],), None if weight is None else weight.to(dtype), eps)
    return (normed if bias is None else normed + bias.to(dtype)), new_residual


def _new_residual_ref(x, residual, keep_mask, dropout_p, drop_path_scale, dtype) -> torch.Tensor:
    """``residual + x * keep_mask / (1 - p) * drop_path_scale[sample]`` in `dtype` (the references' h)."""
    dropped = x.to(dtype)
    if keep_mask is not None:
        dropped = dropped * keep_mask.to(dtype) * (1.0 / (1.0 - dropout_p))
    if drop_path_scale is not None:
        dropped = dropped * drop_path_scale.to(dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return dropped if residual is None else residual.to(dtype) + dropped
