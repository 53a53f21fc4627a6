"""Shared by the linear_act tests: module handles, tolerances and helpers against float64."""

import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close_to_reference, describe_difference, poisoned_outputs
from internvideo_fast._extension import HAS_C
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.linear_act import OP_NAME, apply_activation_ref, linear_act, linear_act_ref
from internvideo_fast.ops.framework.seeds import seed_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_linear_act import saved_bytes  # noqa: E402  (the benchmark's measure of the saved bytes)

# The modules whose plans and launchers the tests inspect or force (the package's `linear_act` attribute
# is the function).
la_plans = importlib.import_module("internvideo_fast.ops.linear_act.plans")
la_launch = importlib.import_module("internvideo_fast.ops.linear_act.launch")
la_fused = importlib.import_module("internvideo_fast.ops.linear_act.fused_mlp")
la_reference = importlib.import_module("internvideo_fast.ops.linear_act.reference")

# Tolerances of the CPU tests against float64: (outputs, gradients) per dtype. The gradients sum over up
# to 100 (dx) or 37 (dweight, dbias) products, so they get more room.
TOLERANCE = {torch.float32: (2e-5, 1e-4), torch.float16: (4e-3, 3e-2)}
IN, HIDDEN = 40, 100


def _inputs(shape, out_features, dtype, device="cpu", bias=True):
    K = shape[-1]
    x = torch.randn(shape, device=device).to(dtype)
    w = (torch.randn(out_features, K, device=device) / K**0.5).to(dtype)
    b = (0.5 * torch.randn(out_features, device=device)).to(dtype) if bias else None
    return x, w, b


def _leaves(*tensors):
    return [t.detach().requires_grad_() if t is not None else None for t in tensors]


def _forward_backward(fn, x, w, b, dy):
    """The output and the grads of (x, weight, bias) for the upstream grad dy."""
    y = fn(x, w, b)
    wanted = [t for t in (x, w, b) if t is not None]
    grads = iter(torch.autograd.grad((y.double() * dy).sum(), wanted))
    return y, [next(grads) if t is not None else None for t in (x, w, b)]


def _assert_close(actual, expected, tol, name):
    assert actual.shape == expected.shape, f"{name}: {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.allclose(actual.double(), expected.double(), rtol=tol, atol=tol), (
        f"{name}: " + describe_difference(actual, expected)
    )


def _check_against_reference(shape, dtype, activation, bias=True, out_features=HIDDEN):
    x, w, b = _inputs(shape, out_features, dtype, bias=bias)
    dy = torch.randn(*shape[:-1], out_features, dtype=torch.float64)

    def kernel(x, w, b):
        return linear_act(x, w, b, activation)

    def reference(x, w, b):
        return linear_act_ref(x, w, b, activation, upcast=True)

    with use_backend("triton", OP_NAME), poisoned_outputs():
        actual, actual_grads = _forward_backward(kernel, *_leaves(x, w, b), dy)
    expected, expected_grads = _forward_backward(reference, *_leaves(x, w, b), dy)
    out_tol, grad_tol = TOLERANCE[dtype]
    assert actual.dtype == dtype
    _assert_close(actual, expected, out_tol, "y")
    for name, a, e in zip(("dx", "dweight", "dbias"), actual_grads, expected_grads):
        assert (a is None) == (e is None), name
        if a is not None:
            assert a.dtype == dtype, name
            _assert_close(a, e, grad_tol, name)


def _run_plan(label_prefix, x, w, b, activation, seed, dropout_p, interpreter, store_pre=None):
    """(y, pre) of the forward plan whose label starts with `label_prefix`, into poisoned outputs; `pre` is
    stored when `store_pre` (default: for an activation)."""
    M, N = x.shape[0], w.shape[0]
    y = torch.full((M, N), float("nan"), dtype=x.dtype, device=x.device)
    pre = torch.full((M, N), float("nan"), dtype=x.dtype, device=x.device)
    seed_t = None if seed is None else seed_tensor(seed, x.device)
    plans = dict(
        la_launch._fwd_plans(x, w, b, seed_t, y, pre, activation,
                                     activation != "none" if store_pre is None else store_pre, dropout_p,
                                     interpreter, True)
    )
    matching = [label for label in plans if label.startswith(label_prefix)]
    assert matching, f"no {label_prefix!r} plan among {list(plans)}"
    for label in matching:
        y.fill_(float("nan"))
        pre.fill_(float("nan"))
        plans[label]()
        yield label, y.clone(), pre.clone()


needs_c = pytest.mark.skipif(not HAS_C, reason="internvideo_fast._C is not built")


def _check_mlp_gemm_bias_act(x, w, b, activation, schedule):
    """mlp_gemm_bias_act's (y, pre) against float64 (flash-attn's rule, PyTorch at x's dtype as the
    baseline), written into poisoned outputs."""
    M, N = x.shape[0], w.shape[0]
    y = torch.full((M, N), float("nan"), dtype=x.dtype, device=x.device)
    pre = torch.full_like(y, float("nan"))
    with poisoned_outputs():
        torch.ops.internvideo_fast.mlp_gemm_bias_act(x, w, b, activation, schedule, y, pre)
    pre64 = F.linear(x.double(), w.double(), b.double())
    pre_baseline = F.linear(x, w, b)
    assert_close_to_reference(pre, pre64, pre_baseline, name=f"pre ({activation}, {schedule})")
    assert_close_to_reference(y, apply_activation_ref(pre64, activation),
                              apply_activation_ref(pre_baseline, activation),
                              name=f"y ({activation}, {schedule})")
