"""Assertions shared by the op tests."""

from __future__ import annotations

import torch


def describe_difference(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """Where and how much two tensors differ, for assertion messages."""
    difference = (actual.double() - expected.double()).abs()
    if difference.numel() == 0:
        return "empty tensors"
    worst = int(difference.flatten().nan_to_num(float("inf")).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), difference.shape))
    return (
        f"max abs diff {difference.flatten()[worst].item():.3e} at {index} "
        f"(actual {actual[index].item():.6g}, expected {expected[index].item():.6g}); "
        f"{int(torch.isnan(actual).sum())} NaN in actual; shape {tuple(actual.shape)}"
    )


def assert_close_to_reference(
    actual: torch.Tensor,
    reference: torch.Tensor,
    same_dtype_baseline: torch.Tensor,
    *,
    factor: float = 2.0,
    atol: float = 1e-5,
    name: str = "output",
) -> None:
    """flash-attention's rule: the kernel's error against a float64 (or fp32) `reference` must be at most
    `factor` times the error of `same_dtype_baseline` (the same math in PyTorch at the kernel's dtype),
    plus `atol`. Use factor 2 for outputs and 3 for gradients."""
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    assert not torch.isnan(actual).any() or torch.isnan(reference).any(), f"{name}: NaN in kernel output"
    kernel_error = (actual.double() - reference.double()).abs().max().item()
    baseline_error = (same_dtype_baseline.double() - reference.double()).abs().max().item()
    assert kernel_error <= factor * baseline_error + atol, (
        f"{name}: kernel error {kernel_error:.3e} > {factor} x PyTorch error {baseline_error:.3e} + {atol:.1e}; "
        + describe_difference(actual, reference)
    )


from internvideo_fast.ops.framework.outputs import poison_, poisoned_outputs  # noqa: E402,F401  (re-exported for tests)

import pytest  # noqa: E402

from internvideo_fast.ops.framework.backend import (  # noqa: E402
    interpreter_problem,
    triton_interpreter_on,
    triton_runs_on,
)

# Triton kernels run on CPU tensors only under the interpreter (conftest.py sets it when there is no GPU).
CPU_TRITON = triton_runs_on(torch.device("cpu"))
needs_triton = pytest.mark.skipif(
    not CPU_TRITON,
    reason=(interpreter_problem() if triton_interpreter_on() else None) or "needs TRITON_INTERPRET=1 on CPU",
)
