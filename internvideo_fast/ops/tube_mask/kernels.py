"""Tube masking's Triton kernel (one program per sample ranks its positions' Philox keys), its launch
configs and AOT registration, and the ``internvideo_fast::tube_mask_triton`` custom op with its fake."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from internvideo_fast._extension import HAS_C
from internvideo_fast.ops.framework.kernel_registry import (
    KernelConfig,
    TritonKernelSpec,
    register_triton_kernel,
)
from internvideo_fast.ops.framework.outputs import new_output
from internvideo_fast.ops.tube_mask.reference import MAX_KERNEL_POSITIONS, TubeMask


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
