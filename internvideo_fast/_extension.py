"""Loads the compiled extension `internvideo_fast._C` once.

Without it (not built, or built for another torch) the package still imports and every op runs on
its PyTorch reference; one warning says so and why."""

from __future__ import annotations

import warnings

import torch

try:
    from internvideo_fast import _C  # noqa: F401  (registers torch.ops.internvideo_fast.*)

    HAS_C = True
    LOAD_ERROR: str | None = None
    CUDA_ARCHS: str = _C.cuda_archs
except ImportError as error:  # pragma: no cover - exercised only on broken installs
    HAS_C = False
    LOAD_ERROR = str(error)
    CUDA_ARCHS = ""
    warnings.warn(
        f"internvideo_fast._C could not be loaded ({error}); the C++/CUDA kernels are unavailable and ops "
        "fall back to their PyTorch references. Rebuild with `pip install -e . --no-build-isolation`.",
        RuntimeWarning,
        stacklevel=2,
    )


_HAS_KERNEL: dict[tuple[str, str], bool] = {}


@torch.compiler.assume_constant_result  # registrations do not change once _C is loaded
def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether `_C` registered a kernel for torch.ops.internvideo_fast.<op> under `dispatch_key`
    ("CPU" or "CUDA"). Remembered per pair: every op call asks, and the dispatcher lookups cost host time.
    (A dict, not functools.lru_cache: Dynamo traces through lru_cache wrappers, not into this constant.)"""
    known = _HAS_KERNEL.get((op, dispatch_key))
    if known is None:
        name = f"internvideo_fast::{op}"
        # _C may not define this op at all (a Triton-only or Python-only op).
        defined = HAS_C and torch._C._dispatch_has_kernel(name)
        known = bool(defined) and torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key)
        _HAS_KERNEL[op, dispatch_key] = known
    return known
