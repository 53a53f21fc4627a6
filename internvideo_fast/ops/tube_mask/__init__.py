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

from internvideo_fast.ops.tube_mask.interface import tube_mask
from internvideo_fast.ops.tube_mask.reference import (
    MAX_KERNEL_POSITIONS,
    OP_NAME,
    TubeMask,
    tube_mask_official_numpy,
    tube_mask_ref,
)
from internvideo_fast.ops.triton_common.philox import philox4x32_10_reference

__all__ = [
    "MAX_KERNEL_POSITIONS",
    "OP_NAME",
    "TubeMask",
    "philox4x32_10_reference",
    "tube_mask",
    "tube_mask_official_numpy",
    "tube_mask_ref",
]
