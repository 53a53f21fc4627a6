"""The public dropout_add_layer_norm / dropout_add_rms_norm: argument checks and the backend choice."""

from __future__ import annotations

import torch

from internvideo_fast.ops.dropout_add_layer_norm.launch import _dropout_add_layer_norm_fwd
from internvideo_fast.ops.dropout_add_layer_norm.reference import (
    MAX_KERNEL_D,
    OP_NAME,
    SUPPORTED_DTYPES,
    dropout_add_layer_norm_ref,
    dropout_add_rms_norm_ref,
)
from internvideo_fast.ops.framework.backend import available_backends, select_backend
from internvideo_fast.ops.framework.seeds import seed_tensor
from internvideo_fast.ops.triton_common.philox import dropout_keep_mask


def _check_tensor(name: str, tensor, x: torch.Tensor, shape) -> None:
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor or None, got {type(tensor).__name__}")
    if tensor.device != x.device:
        raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")


def dropout_add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    dropout_p: float = 0.0,
    eps: float = 1e-6,
    drop_path_scale: torch.Tensor | None = None,
    seed: int | torch.Tensor | None = None,
    training: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normed, new_residual)`` with ``new_residual = residual + dropout(x) * drop_path_scale[sample]``
    and ``normed = LayerNorm(new_residual) * weight + bias`` over the last dim (see the module docstring;
    :func:`dropout_add_rms_norm` for RMSNorm).

    Args:
        x: ``[..., D]`` float32 / float16 / bfloat16 (the branch output: attention or MLP).
        residual: x's shape and dtype, or None (then ``new_residual = dropout(x) * scale``).
        weight, bias: ``[D]`` LayerNorm affine parameters, or None.
        dropout_p: dropout probability in [0, 1); applied only when `training`.
        eps: LayerNorm epsilon (1e-6 VideoMAE, 1e-5 CLIP).
        drop_path_scale: ``[x.shape[0]]`` per-sample factor (0 or ``1 / (1 - drop_path_rate)``) multiplied
            into the dropped x; applied as given, training or not (the caller builds it only in training).
        seed: the dropout seed: an int or a one-element int64 tensor on x's device; None draws one from
            torch's default generator. The same seed gives the same mask on every backend.
        training: False turns dropout off.

    Returns:
        ``(normed, new_residual)``, both x's shape, in x's dtype, or in the wider of x's and residual's
        (as ``residual + x``) when they differ: an fp32 residual stream under bf16 autocast stays fp32.
    """
    return _dropout_add_norm(x, residual, weight, bias, dropout_p, eps, drop_path_scale, seed, training,
                             rms_norm=False)


def dropout_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    eps: float = 1e-6,
    drop_path_scale: torch.Tensor | None = None,
    seed: int | torch.Tensor | None = None,
    training: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dropout_add_layer_norm` with RMSNorm (flash-attn's ``dropout_add_rms_norm``): ``normed =
    new_residual / sqrt(mean(new_residual^2) + eps) * weight + bias``, the same kernels without the mean.
    Arguments and returns as there; `bias` is usually None."""
    return _dropout_add_norm(x, residual, weight, bias, dropout_p, eps, drop_path_scale, seed, training,
                             rms_norm=True)


def _dropout_add_norm(x, residual, weight, bias, dropout_p, eps, drop_path_scale, seed, training, rms_norm):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0.0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    D = x.shape[-1]
    _check_tensor("residual", residual, x, x.shape)
    if residual is not None and residual.dtype != x.dtype:
        # As `residual + x` would: under autocast the branch output (x) is bf16 while the residual stream
        # stays fp32; both outputs then take the wider dtype.
        dtype = torch.promote_types(x.dtype, residual.dtype)
        x, residual = x.to(dtype), residual.to(dtype)
    _check_tensor("weight", weight, x, (D,))
    _check_tensor("bias", bias, x, (D,))
    if drop_path_scale is not None and x.dim() < 2:
        raise ValueError("drop_path_scale needs x with a leading sample dim, got a 1-D x")
    _check_tensor("drop_path_scale", drop_path_scale, x, x.shape[:1])
    dropout_p = float(dropout_p) if training else 0.0
    seed = seed_tensor(seed, x.device) if dropout_p > 0.0 else None

    available = available_backends(OP_NAME, x.device)
    if D > MAX_KERNEL_D:
        available.discard("triton")
    backend = select_backend(OP_NAME, x.device, available)
    if backend == "reference":
        keep = None if seed is None else dropout_keep_mask(seed, x.shape, dropout_p, elements_per_draw=8)
        reference = dropout_add_rms_norm_ref if rms_norm else dropout_add_layer_norm_ref
        return reference(x, residual, weight, bias, keep, dropout_p, float(eps), drop_path_scale)
    flat_residual = None if residual is None else residual.contiguous().reshape(-1, D)
    normed, new_residual, _, _ = _dropout_add_layer_norm_fwd(
        x.contiguous().reshape(-1, D), flat_residual,
        None if weight is None else weight.contiguous(), None if bias is None else bias.contiguous(),
        None if drop_path_scale is None else drop_path_scale.contiguous(),
        seed, dropout_p, float(eps), rms_norm,
    )
    return normed.reshape(x.shape), new_residual.reshape(x.shape)
