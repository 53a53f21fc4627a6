"""VideoMAE reconstruction targets, for the masked tubes only.

The official target (``engine_for_pretraining.py``): undo the loader's normalization (``x * std + mean``;
for uint8 video, ``v / 255``), cut the video into tubes
``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c``, normalize each tube per channel with its own mean
and unbiased standard deviation ``(x - mean) / (std + eps)``, flatten ``(p0 p1 p2 c)`` and keep the masked
tokens. We compute it only for the ``n_mask`` masked tubes, in one pass (C++ CPU and CUDA kernels):
``mae_targets(video, ids_masked, tubelet, patch) -> [B, n_mask, tubelet*patch*patch*C]`` (float32, float64
for float64 video). No gradient: targets are constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from internvideo_fast._extension import HAS_C
from internvideo_fast.ops.backend import available_backends, select_backend
from internvideo_fast.ops.masked_patch_embed import _as_list, _check_video

OP_NAME = "mae_targets"


def mae_targets_ref(video, ids_masked, tubelet, patch, normalize=True, eps=1e-6, mean=None, std=None) -> torch.Tensor:
    """The official computation on every tube (rearrange + normalize), then the gather."""
    out_dtype = torch.float64 if video.dtype == torch.float64 else torch.float32
    if video.dtype == torch.uint8:
        x = video.to(out_dtype) / 255.0
    else:
        x = video.to(out_dtype)
        if mean is not None:
            shape = (1, -1, 1, 1, 1)
            x = x * torch.tensor(std, dtype=out_dtype, device=x.device).view(shape) + torch.tensor(
                mean, dtype=out_dtype, device=x.device
            ).view(shape)
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    tubes = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, -1, tubelet * patch * patch, C)
    if normalize:
        tubes = (tubes - tubes.mean(dim=-2, keepdim=True)) / (tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps)
    tubes = tubes.flatten(2)
    return tubes.gather(1, ids_masked[..., None].expand(-1, -1, tubes.shape[-1]))


if HAS_C:

    @torch.library.register_fake("internvideo_fast::mae_targets")
    def _mae_targets_fake(video, ids, tubelet, patch, normalize=True, eps=1e-6, mean=None, std=None):
        dtype = torch.float64 if video.dtype == torch.float64 else torch.float32
        return video.new_empty(video.shape[0], ids.shape[1], tubelet * patch * patch * video.shape[1], dtype=dtype)


def mae_targets(
    video: torch.Tensor,
    ids_masked: torch.Tensor,
    tubelet: int,
    patch: int,
    normalize: bool = True,
    eps: float = 1e-6,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Reconstruction targets of the masked tubes (see the module docstring). `mean`/`std` are the
    loader's normalization of a float `video`, undone here; a uint8 video is scaled by 1/255."""
    mean, std = _as_list(mean), _as_list(std)
    _check_video(video, ids_masked, tubelet, patch, mean, std, "ids_masked")
    if video.dtype == torch.uint8 and mean is not None:
        raise ValueError("mean/std undo a float video's normalization; a uint8 video has none")
    if normalize and tubelet * patch * patch < 2:
        raise ValueError("normalize needs at least 2 pixels per tube (tubelet * patch * patch >= 2)")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    backend = select_backend(OP_NAME, video.device, available_backends("mae_targets", video.device, False))
    if backend == "reference":
        return mae_targets_ref(video, ids_masked, tubelet, patch, normalize, eps, mean, std)
    return torch.ops.internvideo_fast.mae_targets(video, ids_masked, tubelet, patch, normalize, float(eps), mean, std)
