"""VideoMAE reconstruction targets, for the masked tubes only.

The official target (``engine_for_pretraining.py``): undo the loader's normalization (``x * std + mean``;
for uint8 video, ``v / 255``), cut the video into tubes
``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c``, normalize each tube per channel with its own mean
and unbiased standard deviation ``(x - mean) / (std + eps)``, flatten ``(p0 p1 p2 c)`` and keep the masked
tokens. We compute it only for the ``n_mask`` masked tubes, in one pass (C++ CPU and CUDA kernels):
``mae_targets(video, ids_masked, tubelet, patch) -> [B, n_mask, tubelet*patch*patch*C]`` (float32, float64
for float64 video). No gradient: targets are constants.
"""

from internvideo_fast.ops.mae_targets.interface import mae_targets
from internvideo_fast.ops.mae_targets.reference import OP_NAME, mae_targets_ref

__all__ = ["OP_NAME", "mae_targets", "mae_targets_ref"]
