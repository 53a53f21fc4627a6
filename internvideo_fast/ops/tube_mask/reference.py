"""Tube masking in plain PyTorch with the kernels' exact random draws, and the official VideoMAE generator."""

from __future__ import annotations

from typing import NamedTuple

import torch

from internvideo_fast.ops.triton_common.philox import _MASK32, philox4x32_10_reference

OP_NAME = "tube_mask"
# The Triton and CUDA kernels keep one sample's keys on chip.
MAX_KERNEL_POSITIONS = 4096


class TubeMask(NamedTuple):
    ids_keep: torch.Tensor
    ids_masked: torch.Tensor
    mask: torch.Tensor


def tube_mask_ref(
    seed: torch.Tensor, batch: int, frames: int, height: int, width: int, num_masked: int
) -> TubeMask:
    """Pure-PyTorch tube mask with the kernels' exact random draws (see the package docstring)."""
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
