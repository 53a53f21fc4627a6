"""Tube masking (VideoMAE): one random spatial mask per sample, repeated over every token frame.

For a video of ``frames x height x width`` tokens (tokens ordered t, h, w) and a mask ratio ``r``, each
sample masks ``m = int(r * height * width)`` spatial positions (the official rounding) at every token
frame, so ``frames * m`` of its tokens are masked.

How the positions are drawn: spatial position ``s`` of sample ``b`` gets a 63-bit key from Philox4x32-10
with counter ``(s, b, 0, 0)`` and key ``(seed mod 2**32, seed >> 32)`` (``csrc/philox.h``); the ``m``
positions with the smallest keys (ties broken by position) are masked. Since the keys are i.i.d. this is
a uniformly random ``m``-subset, and since the generator is counter-based, **the CPU, CUDA and Triton
kernels and the PyTorch reference return bitwise-identical masks for the same seed.**

Outputs, for ``n_vis = frames * (height*width - m)`` and ``n_mask = frames * m``:

- ``ids_keep [B, n_vis]`` int64: the visible token indices in ascending order (the encoder's input order,
  equal to the official ``x[~mask]``);
- ``ids_masked [B, n_mask]`` int64: the masked token indices in ascending order;
- ``mask [B, frames*height*width]`` bool: True where a token is masked.

The seed is a one-element int64 tensor on the target device, so the kernels never sync with the host and
a CUDA graph can replay the op with a new seed written into the same tensor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from internvideo_fast._extension import HAS_C
from internvideo_fast.ops.backend import available_backends, select_backend
from internvideo_fast.ops.kernel_registry import KernelConfig, TritonKernelSpec, register_triton_kernel
from internvideo_fast.ops.outputs import new_output
from internvideo_fast.ops.seeds import seed_tensor

OP_NAME = "tube_mask"
# The Triton and CUDA kernels keep one sample's keys on chip.
MAX_KERNEL_POSITIONS = 4096


class TubeMask(NamedTuple):
    ids_keep: torch.Tensor
    ids_masked: torch.Tensor
    mask: torch.Tensor


# ----------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors (the same rounds as csrc/philox.h)."""
    for round_index in tl.static_range(10):
        if round_index > 0:
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def _tube_mask_key(position, sample, k0, k1):
    """63-bit sort key of each spatial position (uint64, top bit clear)."""
    zero = tl.zeros_like(position)
    x0, x1, _, _ = _philox4x32_10(position, zero + sample, zero, zero, k0, k1)
    return ((x0 >> 1).to(tl.uint64) << 32) | x1.to(tl.uint64)


@triton.jit
def _tube_mask_kernel(
    seed_ptr, ids_keep_ptr, ids_masked_ptr, mask_ptr,
    frames, positions, num_masked,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):
    # One program per sample; BLOCK >= positions holds the sample's keys.
    sample = tl.program_id(0)
    seed = tl.load(seed_ptr)
    k0 = seed.to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    position = tl.arange(0, BLOCK)
    in_range = position < positions
    key = _tube_mask_key(position.to(tl.uint32), sample.to(tl.uint32), k0, k1)

    # rank = how many keys come before this one; the num_masked smallest are masked.
    rank = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, positions, CHUNK):
        other = start + tl.arange(0, CHUNK)
        other_key = _tube_mask_key(other.to(tl.uint32), sample.to(tl.uint32), k0, k1)
        before = (other_key[None, :] < key[:, None]) | (
            (other_key[None, :] == key[:, None]) & (other[None, :] < position[:, None])
        )
        before = before & (other[None, :] < positions)
        rank += tl.sum(before.to(tl.int32), axis=1)
    masked = (rank < num_masked) & in_range
    visible = (rank >= num_masked) & in_range
    # Slot of each position among the positions of its kind, in ascending position order.
    masked_slot = tl.cumsum(masked.to(tl.int32), axis=0) - masked.to(tl.int32)
    visible_slot = tl.cumsum(visible.to(tl.int32), axis=0) - visible.to(tl.int32)

    num_visible = positions - num_masked
    sample_64 = sample.to(tl.int64)
    mask_row = mask_ptr + sample_64 * frames * positions
    keep_row = ids_keep_ptr + sample_64 * frames * num_visible
    masked_row = ids_masked_ptr + sample_64 * frames * num_masked
    for t in range(frames):
        token = t * positions + position.to(tl.int64)
        tl.store(mask_row + token, masked, mask=in_range)
        tl.store(masked_row + t * num_masked + masked_slot, token, mask=masked)
        tl.store(keep_row + t * num_visible + visible_slot, token, mask=visible)


# Launch configurations by grid size: the [BLOCK, CHUNK] comparison tile stays at <= 32 values a thread.
_TRITON_CONFIGS = (
    KernelConfig({"BLOCK": 256, "CHUNK": 16}, num_warps=4, num_stages=1),
    KernelConfig({"BLOCK": 1024, "CHUNK": 8}, num_warps=8, num_stages=1),
    KernelConfig({"BLOCK": MAX_KERNEL_POSITIONS, "CHUNK": 2}, num_warps=16, num_stages=1),
)
register_triton_kernel(
    TritonKernelSpec(
        name="tube_mask",
        kernel=_tube_mask_kernel,
        signature={
            "seed_ptr": "*i64", "ids_keep_ptr": "*i64", "ids_masked_ptr": "*i64", "mask_ptr": "*i1",
            "frames": "i32", "positions": "i32", "num_masked": "i32",
        },
        configs=_TRITON_CONFIGS,
    )
)


def _triton_config(positions: int) -> KernelConfig:
    return next(config for config in _TRITON_CONFIGS if positions <= config.constexprs["BLOCK"])


def _new_outputs(seed: torch.Tensor, batch: int, frames: int, positions: int, num_masked: int) -> TubeMask:
    return TubeMask(
        new_output(seed, (batch, frames * (positions - num_masked)), torch.int64),
        new_output(seed, (batch, frames * num_masked), torch.int64),
        new_output(seed, (batch, frames * positions), torch.bool),
    )


@torch.library.custom_op("internvideo_fast::tube_mask_triton", mutates_args=())
def _tube_mask_triton(
    seed: torch.Tensor, batch: int, frames: int, height: int, width: int, num_masked: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    positions = height * width
    out = _new_outputs(seed, batch, frames, positions, num_masked)
    if batch > 0:
        config = _triton_config(positions)
        _tube_mask_kernel[(batch,)](
            seed, out.ids_keep, out.ids_masked, out.mask, frames, positions, num_masked,
            **config.constexprs, num_warps=config.num_warps, num_stages=config.num_stages,
        )
    return tuple(out)


def _tube_mask_fake(seed, batch, frames, height, width, num_masked):
    positions = height * width
    return (
        seed.new_empty((batch, frames * (positions - num_masked)), dtype=torch.int64),
        seed.new_empty((batch, frames * num_masked), dtype=torch.int64),
        seed.new_empty((batch, frames * positions), dtype=torch.bool),
    )


_tube_mask_triton.register_fake(_tube_mask_fake)
if HAS_C:
    torch.library.register_fake("internvideo_fast::tube_mask")(_tube_mask_fake)


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------
_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hi and lo 32 bits of a * b for a uint32 constant and int64 tensors of uint32 values, without
    int64 overflow: b is split into 16-bit halves."""
    low_product = a * (b & 0xFFFF)  # < 2**48
    high_product = a * (b >> 16)  # < 2**48
    carry = high_product + (low_product >> 16)  # a*b = carry * 2**16 + (low_product & 0xFFFF)
    return carry >> 16, ((carry & 0xFFFF) << 16) | (low_product & 0xFFFF)


def philox4x32_10_reference(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors that hold uint32 values (the rounds of csrc/philox.h)."""
    for round_index in range(10):
        if round_index > 0:
            k0 = (k0 + 0x9E3779B9) & _MASK32
            k1 = (k1 + 0xBB67AE85) & _MASK32
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def tube_mask_ref(
    seed: torch.Tensor, batch: int, frames: int, height: int, width: int, num_masked: int
) -> TubeMask:
    """Pure-PyTorch tube mask with the kernels' exact random draws (see the module docstring)."""
    positions = height * width
    device = seed.device
    seed = seed.reshape(()).to(torch.int64)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    position = torch.arange(positions, device=device, dtype=torch.int64).expand(batch, positions)
    sample = torch.arange(batch, device=device, dtype=torch.int64)[:, None].expand(batch, positions)
    zero = torch.zeros_like(position)
    x0, x1, _, _ = philox4x32_10_reference(position, sample, zero, zero, k0, k1)
    key = ((x0 >> 1) << 32) | x1
    # Stable sort: equal keys keep position order, the kernels' tie-break.
    by_key = torch.argsort(key, dim=1, stable=True)
    spatial_mask = torch.zeros(batch, positions, dtype=torch.bool, device=device)
    spatial_mask.scatter_(1, by_key[:, :num_masked], True)
    # Visible positions first, then masked ones, each in ascending order.
    by_kind = torch.argsort(spatial_mask.to(torch.uint8), dim=1, stable=True)
    num_visible = positions - num_masked
    frame_offset = torch.arange(frames, device=device, dtype=torch.int64)[None, :, None] * positions
    ids_keep = (frame_offset + by_kind[:, None, :num_visible]).reshape(batch, frames * num_visible)
    ids_masked = (frame_offset + by_kind[:, None, num_visible:]).reshape(batch, frames * num_masked)
    mask = spatial_mask[:, None, :].expand(batch, frames, positions).reshape(batch, frames * positions)
    return TubeMask(ids_keep, ids_masked, mask)


def tube_mask_official_numpy(batch: int, frames: int, height: int, width: int, mask_ratio: float, rng):
    """The official VideoMAE TubeMaskingGenerator (numpy shuffle per sample), for statistics tests and the
    benchmark's baseline: returns the bool mask [B, frames*height*width]."""
    import numpy as np

    positions = height * width
    num_masked = int(mask_ratio * positions)
    masks = []
    for _ in range(batch):
        spatial = np.hstack([np.zeros(positions - num_masked), np.ones(num_masked)])
        rng.shuffle(spatial)
        masks.append(np.tile(spatial, (frames, 1)).flatten())
    return torch.from_numpy(np.stack(masks).astype(bool))


# ----------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------
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
    """Tube masks for `batch` samples of `frames x height x width` tokens (see the module docstring).

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
