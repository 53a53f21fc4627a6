"""Video augmentation in plain torch (no torchvision): crops, resizes, flip and normalization of clips.

Input: a clip ``[T, C, H, W]``, uint8 (as decoded) or float in [0, 255]. Output of a
:class:`VideoTransform`: float32 ``[C, T, H, W]`` normalized with ``mean``/``std`` given in [0, 1] units
(ImageNet for VideoMAE, CLIP's for CLIP-initialised models), one tensor per view, stacked to
``[V, C, T, H, W]``. With ``normalize=False`` (uint8 clips only) the views stay uint8 as resized (a quarter
of the bytes to move to the GPU), and :func:`normalize_video` normalizes them there, to the same values.

Every random choice is drawn from a ``torch.Generator`` passed in (the dataset seeds one per sample), and
one choice is shared by all frames of a clip (temporal consistency, as in the official Group* transforms).

Geometry is computed first and applied with a single ``interpolate(..., antialias=True)`` per view: with
``short_side`` set, crop boxes are chosen on the short-side-resized frame (the official pipeline) and then
mapped back to the decoded frame, so the decoded frame is resized once instead of twice.

Training crops (``crop=``):

- ``"multiscale"``: ``GroupMultiScaleCrop(img_size, scales=(1, .875, .75, .66))`` of VideoMAE/TSN: crop
  side lengths ``int(min(H, W) * s)`` (snapped to ``img_size`` when within 3 px), width and height scales
  at most one step apart, the offset one of 13 fixed positions (``more_fix_crop``), then resize to
  ``img_size``;
- ``"random_resized"``: torchvision's RandomResizedCrop (``scale=(0.08, 1)``, ``ratio=(3/4, 4/3)``,
  10 attempts then a centre crop);
- ``"center"``: short-side resize + centre crop (no randomness).

Testing: short-side resize to ``short_side`` (default ``img_size``) then a centre crop (``test_crops=1``) or
three crops along the long side (``test_crops=3``: start, centre, end), as in VideoMAE's multi-view test.

``num_sample`` (training): repeated augmentation, ``num_sample`` independently augmented views of one
decoded clip (VideoMAE's ``--num_sample``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from internvideo_fast.layers.constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "MULTISCALE_SCALES", "Box",
    "resize", "resize_short_side", "crop", "hflip", "center_crop", "three_crop", "normalize", "normalize_video",
    "normalization_tensors",
    "multi_scale_crop_box", "random_resized_crop_box", "center_crop_box", "three_crop_boxes",
    "VideoTransform", "build_transform", "mean_std",
]

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)


def mean_std(name_or_values) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``"imagenet"`` | ``"clip"`` -> (mean, std)."""
    if name_or_values == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if name_or_values == "clip":
        return CLIP_MEAN, CLIP_STD
    raise ValueError(f"unknown normalization preset {name_or_values!r}; expected 'imagenet' or 'clip'")


@dataclass(frozen=True)
class Box:
    top: int
    left: int
    height: int
    width: int


# ----------------------------------------------------------------------------------------------------
# Tensor ops on [T, C, H, W]
# ----------------------------------------------------------------------------------------------------
def _check_clip(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a clip [T, C, H, W] with C in (1, 3), got {tuple(x.shape)}")


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with antialiasing of ``[T, C, H, W]`` (uint8 stays uint8) to ``size = (h, w)``."""
    _check_clip(x)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the shorter side equal to ``short_side`` and the aspect ratio kept."""
    if height <= width:
        return short_side, max(1, int(round(width * short_side / height)))
    return max(1, int(round(height * short_side / width))), short_side


def resize_short_side(x: torch.Tensor, short_side: int) -> torch.Tensor:
    return resize(x, short_side_size(x.shape[-2], x.shape[-1], short_side))


def crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    return x[..., box.top:box.top + box.height, box.left:box.left + box.width]


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def center_crop_box(height: int, width: int, size: tuple[int, int]) -> Box:
    ch, cw = min(size[0], height), min(size[1], width)
    return Box((height - ch) // 2, (width - cw) // 2, ch, cw)


def three_crop_boxes(height: int, width: int, size: int) -> list[Box]:
    """Three ``size`` x ``size`` crops along the longer side: start, centre, end (VideoMAE's test crops)."""
    ch, cw = min(size, height), min(size, width)
    if width >= height:
        lefts = [0, (width - cw) // 2, width - cw]
        return [Box((height - ch) // 2, left, ch, cw) for left in lefts]
    tops = [0, (height - ch) // 2, height - ch]
    return [Box(top, (width - cw) // 2, ch, cw) for top in tops]


def center_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    return crop(x, center_crop_box(x.shape[-2], x.shape[-1], size))


def three_crop(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [crop(x, box) for box in three_crop_boxes(x.shape[-2], x.shape[-1], size)]


def normalization_tensors(mean: Sequence[float], std: Sequence[float], channels: int, device=None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean * 255`` and ``1 / (std * 255)`` as float32 ``[channels]`` on `device` (one formula for every
    normalization, so the host's and the device's results agree bit for bit)."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:channels] * 255.0
    inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32)[:channels] * 255.0)
    return mean_t.to(device), inv_std.to(device)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[T, C, H, W]`` in [0, 255] -> float32 ``[C, T, H, W]``, ``(x / 255 - mean) / std``."""
    _check_clip(x)
    mean_t, inv_std = normalization_tensors(mean, std, x.shape[1])
    out = (x.to(torch.float32) - mean_t.view(1, -1, 1, 1)) * inv_std.view(1, -1, 1, 1)
    return out.permute(1, 0, 2, 3).contiguous()


def normalize_video(video: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    tensors: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Views left unnormalized (``[..., C, T, H, W]`` in [0, 255], any device) -> float32, the values
    :func:`normalize` gives on the host. `tensors`: :func:`normalization_tensors` already on the video's
    device (building them copies from the host, which waits for the copying stream's work)."""
    if video.dim() < 4:
        raise ValueError(f"video must be [..., C, T, H, W], got {tuple(video.shape)}")
    if tensors is None:
        tensors = normalization_tensors(mean, std, video.shape[-4], video.device)
    mean_t, inv_std = tensors
    return (video.to(torch.float32) - mean_t.view(-1, 1, 1, 1)) * inv_std.view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------------------------------
# Random geometry
# ----------------------------------------------------------------------------------------------------
def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64).item())


def multi_scale_crop_box(height: int, width: int, size: int | tuple[int, int],
                         scales: Sequence[float] = MULTISCALE_SCALES, max_distort: int = 1,
                         fix_crop: bool = True, more_fix_crop: bool = True,
                         generator: torch.Generator | None = None) -> Box:
    """The crop of TSN/VideoMAE ``GroupMultiScaleCrop`` (before its resize to ``size``)."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    base = min(height, width)
    crop_sizes = [int(base * s) for s in scales]
    crop_h = [out_h if abs(c - out_h) < 3 else c for c in crop_sizes]
    crop_w = [out_w if abs(c - out_w) < 3 else c for c in crop_sizes]
    pairs = [(w, h) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w) if abs(i - j) <= max_distort]
    cw, ch = pairs[_randint(0, len(pairs) - 1, generator)]
    cw, ch = max(1, min(cw, width)), max(1, min(ch, height))
    if not fix_crop:
        return Box(_randint(0, height - ch, generator), _randint(0, width - cw, generator), ch, cw)
    w_step, h_step = (width - cw) // 4, (height - ch) // 4
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]
    if more_fix_crop:
        offsets += [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step), (2 * w_step, 0),
                    (w_step, h_step), (3 * w_step, h_step), (w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
    left, top = offsets[_randint(0, len(offsets) - 1, generator)]
    return Box(top, left, ch, cw)


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3),
                            generator: torch.Generator | None = None) -> Box:
    """torchvision ``RandomResizedCrop.get_params``: area fraction in ``scale``, log-uniform aspect ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return Box(_randint(0, height - h, generator), _randint(0, width - w, generator), h, w)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return Box((height - h) // 2, (width - w) // 2, h, w)


def _map_box(box: Box, scale_h: float, scale_w: float, height: int, width: int) -> Box:
    """A box on a resized frame -> the same region of the original frame (``scale`` = original / resized)."""
    top = min(int(round(box.top * scale_h)), height - 1)
    left = min(int(round(box.left * scale_w)), width - 1)
    h = max(1, min(int(round(box.height * scale_h)), height - top))
    w = max(1, min(int(round(box.width * scale_w)), width - left))
    return Box(top, left, h, w)


# ----------------------------------------------------------------------------------------------------
# The composed transform
# ----------------------------------------------------------------------------------------------------
@dataclass
class VideoTransform:
    """``transform(clip [T, C, H, W], generator) -> float32 [V, C, T, H, W]`` (see the module docstring).

    ``V`` is ``num_sample`` when training and ``test_crops`` when testing."""

    train: bool = True
    img_size: int = 224
    short_side: int | None = None
    crop: str = "multiscale"
    scales: tuple[float, ...] = MULTISCALE_SCALES
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_sample: int = 1
    test_crops: int = 1
    normalize: bool = True  # False: uint8 views as resized ([C, T, H, W]); takes uint8 clips only

    def __post_init__(self):
        if self.crop not in ("multiscale", "random_resized", "center"):
            raise ValueError(f"crop must be 'multiscale', 'random_resized' or 'center', got {self.crop!r}")
        if self.test_crops not in (1, 3):
            raise ValueError(f"test_crops must be 1 or 3, got {self.test_crops}")
        if self.num_sample < 1:
            raise ValueError(f"num_sample must be >= 1, got {self.num_sample}")

    @property
    def num_views(self) -> int:
        return self.num_sample if self.train else self.test_crops

    def boxes(self, height: int, width: int, generator: torch.Generator | None = None) -> list[tuple[Box, bool]]:
        """(crop box on the decoded frame, flip) per view."""
        short = self.short_side or (None if self.train else self.img_size)
        if short is not None:
            rh, rw = short_side_size(height, width, short)
        else:
            rh, rw = height, width
        size = (self.img_size, self.img_size)
        views = []
        if self.train:
            for _ in range(self.num_sample):
                if self.crop == "multiscale":
                    box = multi_scale_crop_box(rh, rw, size, self.scales, generator=generator)
                elif self.crop == "random_resized":
                    box = random_resized_crop_box(rh, rw, self.rrc_scale, self.rrc_ratio, generator=generator)
                else:
                    box = center_crop_box(rh, rw, size)
                flip = self.flip and bool(torch.rand(1, generator=generator).item() < 0.5)
                views.append((box, flip))
        elif self.test_crops == 3:
            views = [(box, False) for box in three_crop_boxes(rh, rw, self.img_size)]
        else:
            views = [(center_crop_box(rh, rw, size), False)]
        return [(_map_box(box, height / rh, width / rw, height, width), flip) for box, flip in views]

    def apply(self, clip: torch.Tensor, box: Box, flip: bool) -> torch.Tensor:
        out = resize(crop(clip, box), (self.img_size, self.img_size))
        if flip:
            out = hflip(out)
        if not self.normalize:
            return out.permute(1, 0, 2, 3).contiguous()
        return normalize(out, self.mean, self.std)

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_clip(clip)
        if not self.normalize and clip.dtype != torch.uint8:
            # a float view left unnormalized could not be told from a normalized one downstream
            raise ValueError(f"normalize=False takes uint8 clips (as decoded), got {clip.dtype}")
        views = self.boxes(clip.shape[-2], clip.shape[-1], generator)
        return torch.stack([self.apply(clip, box, flip) for box, flip in views])


def build_transform(train: bool = True, img_size: int = 224, short_side: int | None = None,
                    crop: str = "multiscale", flip: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    num_sample: int = 1, test_crops: int = 1, scales: Sequence[float] = MULTISCALE_SCALES,
                    normalization: str | None = None, normalize: bool = True) -> VideoTransform:
    """A :class:`VideoTransform`; ``normalization="imagenet"|"clip"`` overrides ``mean``/``std``."""
    if normalization is not None:
        mean, std = mean_std(normalization)
    return VideoTransform(train=train, img_size=img_size, short_side=short_side, crop=crop, flip=flip,
                          mean=tuple(mean), std=tuple(std), num_sample=num_sample, test_crops=test_crops,
                          scales=tuple(scales), normalize=normalize)
