"""linear_act and fused_mlp in plain PyTorch (tests and the reference backend), and the op's constants."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from internvideo_fast.ops.framework.seeds import seed_tensor
from internvideo_fast.ops.triton_common.philox import dropout_keep_mask

OP_NAME = "linear_act"
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "none")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_QUICK_GELU_SCALE = 1.702
# The CUTLASS fc1 GEMM's schedules (kernels/mlp_gemm_sm90.cuh), one tuner candidate each.
CUTLASS_SCHEDULES = ("cooperative", "pingpong")


def apply_activation_ref(pre: torch.Tensor, activation: str) -> torch.Tensor:
    """act(pre) with torch.nn.functional (see the module docstring)."""
    if activation == "gelu":
        return F.gelu(pre)
    if activation == "gelu_tanh":
        return F.gelu(pre, approximate="tanh")
    if activation == "quick_gelu":
        return pre * torch.sigmoid(_QUICK_GELU_SCALE * pre)
    if activation == "none":
        return pre
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def linear_act_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "gelu",
    upcast: bool = False,
    keep_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Plain PyTorch: ``dropout(act(F.linear(x, weight, bias)))`` in x's dtype (``upcast``: in float64,
    returned as float64). `keep_mask` (bool, the output's shape; None keeps everything) is the dropout
    mask, e.g. ``dropout_keep_mask(seed, out_shape, dropout_p, elements_per_draw=8)`` -- the kernels' mask for
    that seed."""
    dtype = torch.float64 if upcast else x.dtype
    pre = F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    out = apply_activation_ref(pre, activation)
    if keep_mask is not None:
        out = out * keep_mask.to(dtype) * (1.0 / (1.0 - dropout_p))
    return out


def fused_mlp_ref(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
    activation: str = "gelu",
    dropout_p: float = 0.0,
    seed: int | torch.Tensor | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """Plain PyTorch ``dropout(fc2(dropout(act(fc1(x)))))`` with the kernels' masks: the first dropout's
    from `seed`, the second's from ``seed + 1`` (no dropout when `seed` is None or dropout_p is 0)."""
    keep1 = keep2 = None
    out_shape = (*x.shape[:-1], weight1.shape[0])
    if seed is not None and dropout_p > 0.0:
        seed = seed_tensor(seed, x.device)
        keep1 = dropout_keep_mask(seed, out_shape, dropout_p, elements_per_draw=8)
        keep2 = dropout_keep_mask(seed + 1, (*x.shape[:-1], weight2.shape[0]), dropout_p,
                                  elements_per_draw=8)
    h = linear_act_ref(x, weight1, bias1, activation, upcast, keep1, dropout_p)
    return linear_act_ref(h, weight2, bias2, "none", upcast, keep2, dropout_p)
