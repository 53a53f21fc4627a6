"""The public ``mae_targets``: argument checks, the backend choice and the C++ op's fake."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from internvideo_fast._extension import HAS_C
from internvideo_fast.ops.framework.backend import available_backends, select_backend
from internvideo_fast.ops.mae_targets.reference import OP_NAME, mae_targets_ref
from internvideo_fast.ops.masked_patch_embed.interface import _as_list, _check_video

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
    """Reconstruction targets of the masked tubes (see the package docstring). `mean`/`std` are the
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
