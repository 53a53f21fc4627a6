"""Output allocation for every op's Triton launcher, with the tests' poisoning switch.

Under :func:`poisoned_outputs`, every output that a Triton launcher or a C++/CUDA op allocates is first
filled with a value no kernel writes (NaN for floats, the dtype's minimum for integers, True for bools),
so an element that a kernel forgets to write fails the comparison with the reference."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from internvideo_fast._extension import HAS_C

_poison = False


def poison_(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point():
        return tensor.fill_(float("nan"))
    if tensor.dtype == torch.bool:
        return tensor.fill_(True)
    return tensor.fill_(torch.iinfo(tensor.dtype).min)


def new_output(like: torch.Tensor, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.empty on `like`'s device (poisoned under :func:`poisoned_outputs`)."""
    out = like.new_empty(shape, dtype=dtype if dtype is not None else like.dtype)
    return poison_(out) if _poison else out


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    global _poison
    previous = _poison
    _poison = True
    if HAS_C:
        torch.ops.internvideo_fast._set_poison_outputs(True)
    try:
        yield
    finally:
        _poison = previous
        if HAS_C:
            torch.ops.internvideo_fast._set_poison_outputs(previous)
