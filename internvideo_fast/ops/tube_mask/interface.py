"""The public ``tube_mask``: argument checks and the backend choice (see the package docstring)."""

from __future__ import annotations

import torch

from internvideo_fast.ops.framework.backend import available_backends, select_backend
from internvideo_fast.ops.framework.seeds import seed_tensor
from internvideo_fast.ops.tube_mask.kernels import _tube_mask_triton
from internvideo_fast.ops.tube_mask.reference import MAX_KERNEL_POSITIONS, OP_NAME, TubeMask, tube_mask_ref


def _check_positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def tube_mask(
    batch: int,
    frames: int,
    height: int,
    width: int,
    mask_ratio: float,
    *,
    seed: int | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TubeMask:
    """Tube masks for `batch` samples of `frames x height x width` tokens (see the package docstring).

    Args:
        batch, frames, height, width: the token grid (e.g. 8 x 14 x 14 for 16 frames at 224 px, tubelet 2,
            patch 16).
        mask_ratio: fraction of spatial positions to mask, in [0, 1); ``int(mask_ratio * height * width)``
            positions are masked.
        seed: an int, or a one-element int64 tensor on the target device (no host sync, CUDA-graph safe).
            None draws one from `generator`; without one, from the device's default generator (on a
            CUDA device, drawn there: a CUDA graph replay draws anew).
        device: where the outputs live; defaults to the seed tensor's device, else the CPU.

    Returns:
        ``TubeMask(ids_keep, ids_masked, mask)``.
    """
    _check_positive_int("batch", batch, 0)
    _check_positive_int("frames", frames, 1)
    _check_positive_int("height", height, 1)
    _check_positive_int("width", width, 1)
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be a float in [0, 1), got {mask_ratio!r}")
    positions = height * width
    if positions >= 2**31:
        raise ValueError(f"height * width must be < 2**31, got {positions}")
    num_masked = int(mask_ratio * positions)
    seed = seed_tensor(seed, device, generator)

    available = available_backends(OP_NAME, seed.device)
    if positions > MAX_KERNEL_POSITIONS:
        available.discard("triton")
        available.discard("cuda")
    backend = select_backend(OP_NAME, seed.device, available)
    args = (seed, batch, frames, height, width, num_masked)
    if backend == "reference":
        return tube_mask_ref(*args)
    if backend == "triton":
        return TubeMask(*_tube_mask_triton(*args))
    return TubeMask(*torch.ops.internvideo_fast.tube_mask(*args))
