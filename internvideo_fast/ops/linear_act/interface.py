"""The public ``linear_act`` and ``fused_mlp``: argument checks and the backend choice."""

from __future__ import annotations

import torch

from internvideo_fast.ops.framework.backend import available_backends, select_backend
from internvideo_fast.ops.framework.seeds import seed_tensor
from internvideo_fast.ops.linear_act.fused_mlp import _fused_mlp_fwd
from internvideo_fast.ops.linear_act.launch import _linear_act_fwd, _next_seed
from internvideo_fast.ops.linear_act.reference import (
    ACTIVATIONS,
    OP_NAME,
    SUPPORTED_DTYPES,
    fused_mlp_ref,
    linear_act_ref,
)
from internvideo_fast.ops.triton_common.philox import dropout_keep_mask


def _check_parameter(name: str, tensor, x: torch.Tensor, shape) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.device != x.device:
        raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")
    if tensor.dtype != x.dtype:
        raise ValueError(f"{name} must have x's dtype {x.dtype}, got {tensor.dtype}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dim, got shape {tuple(x.shape)}")


def _check_activation(activation) -> None:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _check_dropout_p(dropout_p) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    return float(dropout_p)


def _check_linear(x, weight, bias, name="weight", bias_name="bias", in_features=None) -> int:
    """Checks weight [N, K] / bias [N] against x (K = `in_features` or x's last dim); returns N."""
    K = x.shape[-1] if in_features is None else in_features
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a 2-D [out_features, in_features] tensor, got {shape}")
    if weight.shape[1] != K:
        raise ValueError(
            f"{name} must have shape [out_features, {K}] to match the input's last dim {K}, "
            f"got {tuple(weight.shape)}"
        )
    N = weight.shape[0]
    _check_parameter(name, weight, x, (N, K))
    if bias is not None:
        _check_parameter(bias_name, bias, x, (N,))
    return N


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "gelu",
    dropout_p: float = 0.0,
    seed: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``dropout(act(x @ weight.T + bias))`` with the bias, activation and dropout fused into the matmul
    (module docstring).

    Args:
        x: ``[..., K]`` float32 / float16 / bfloat16; the leading dims are flattened into rows.
        weight: ``[N, K]`` (nn.Linear's layout), x's dtype and device.
        bias: ``[N]`` or None, x's dtype and device.
        activation: ``"gelu"`` (erf), ``"gelu_tanh"``, ``"quick_gelu"`` (``x * sigmoid(1.702 x)``) or
            ``"none"``.
        dropout_p: dropout probability in [0, 1) after the activation (0: none; the caller passes 0 in
            eval). Element ``(row, col)`` of the flattened ``[M, N]`` output is kept when
            ``keep_element8(seed, row * N + col, dropout_threshold(dropout_p))``;
            ``dropout_keep_mask(seed, y.shape, dropout_p, elements_per_draw=8)`` reproduces the mask.
        seed: the dropout seed: an int or a one-element int64 tensor on x's device; None draws one from
            torch's default generator. The backward regenerates the mask from it (no mask is stored).

    Returns:
        ``[..., N]`` in x's dtype.
    """
    _check_x(x)
    _check_activation(activation)
    dropout_p = _check_dropout_p(dropout_p)
    N = _check_linear(x, weight, bias)
    K = x.shape[-1]
    seed = seed_tensor(seed, x.device) if dropout_p > 0.0 else None

    backend = select_backend(OP_NAME, x.device, available_backends(OP_NAME, x.device))
    if backend == "reference":
        keep = (None if seed is None
                else dropout_keep_mask(seed, (*x.shape[:-1], N), dropout_p, elements_per_draw=8))
        return linear_act_ref(x, weight, bias, activation, keep_mask=keep, dropout_p=dropout_p)
    y, _ = _linear_act_fwd(
        x.contiguous().reshape(-1, K), weight.contiguous(), None if bias is None else bias.contiguous(),
        activation, _needs_grad(x, weight, bias), seed, dropout_p,
    )
    return y.reshape(*x.shape[:-1], N)


def fused_mlp(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
    activation: str = "gelu",
    dropout_p: float = 0.0,
    seed: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """The whole MLP ``dropout(fc2(dropout(act(fc1(x)))))`` as one op that saves for backward only x, fc1's
    pre-activation ``[..., hidden]`` and the seed (eager PyTorch also keeps the activation ``[..., hidden]``
    and, with dropout, both masks): fc2's weight gradient recomputes ``dropout(act(pre))`` inside the pass
    that computes fc1's ``dpre``.

    Both dropouts use probability `dropout_p` (0: none), the first keyed on `seed` and the second on
    ``seed + 1`` (see :func:`fused_mlp_ref`). Biases are both present or both None. Arguments otherwise
    as :func:`linear_act` (weight1 ``[hidden, K]``, weight2 ``[N, hidden]``).
    """
    _check_x(x)
    _check_activation(activation)
    dropout_p = _check_dropout_p(dropout_p)
    hidden = _check_linear(x, weight1, bias1, "weight1", "bias1")
    _check_linear(x, weight2, bias2, "weight2", "bias2", in_features=hidden)
    if (bias1 is None) != (bias2 is None):
        raise ValueError("bias1 and bias2 must both be tensors or both be None")
    K = x.shape[-1]
    N = weight2.shape[0]
    seed = seed_tensor(seed, x.device) if dropout_p > 0.0 else None
    if activation == "none":
        # No activation to recompute: two linear_act calls save the same (x and fc1's output).
        h = linear_act(x, weight1, bias1, "none", dropout_p, seed)
        return linear_act(h, weight2, bias2, "none", dropout_p, _next_seed(seed))

    backend = select_backend(OP_NAME, x.device, available_backends(OP_NAME, x.device))
    if backend == "reference":
        return fused_mlp_ref(x, weight1, bias1, weight2, bias2, activation, dropout_p, seed)

    def flat(t):
        return None if t is None else t.contiguous()

    y, _ = _fused_mlp_fwd(
        x.contiguous().reshape(-1, K), flat(weight1), flat(bias1), flat(weight2), flat(bias2),
        activation, _needs_grad(x, weight1, bias1, weight2, bias2), seed, dropout_p,
    )
    return y.reshape(*x.shape[:-1], N)
