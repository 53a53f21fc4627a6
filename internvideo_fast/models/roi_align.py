"""RoIAlign (He et al., Mask R-CNN) in plain PyTorch, for the AVA head (torchvision is not a dependency).

For a box ``(x1, y1, x2, y2)`` in input coordinates, scaled by ``spatial_scale`` and shifted by -0.5 (the
"aligned" convention: pixel ``i`` covers ``[i, i + 1)``, its centre at ``i + 0.5``), the box is split into
``output_size`` bins; each bin averages ``sampling_ratio^2`` bilinear samples at

    x = x1' + (j + (s + 0.5) / sampling_ratio) * bin_width,   s = 0..sampling_ratio-1

Bilinear interpolation clamps to the border (torchvision's rule for samples in ``[-1, 0)`` and
``[size - 1, size]``); unlike torchvision, a sample further outside than one pixel also takes the border value
instead of 0 (boxes inside the image never sample there), and ``sampling_ratio`` is fixed rather than adaptive.
Implemented with ``grid_sample``, so it runs on any device and has a gradient for the features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["roi_align", "roi_align_reference"]


def _sample_points(rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float,
                   sampling_ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample coordinates ``ys [K, oh * sr]`` and ``xs [K, ow * sr]`` in pixel-centre units."""
    out_h, out_w = output_size
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - 0.5 for i in range(1, 5))
    bin_h, bin_w = (y2 - y1) / out_h, (x2 - x1) / out_w
    steps_h = (torch.arange(out_h * sampling_ratio, device=rois.device, dtype=rois.dtype) + 0.5) / sampling_ratio
    steps_w = (torch.arange(out_w * sampling_ratio, device=rois.device, dtype=rois.dtype) + 0.5) / sampling_ratio
    return y1[:, None] + steps_h[None] * bin_h[:, None], x1[:, None] + steps_w[None] * bin_w[:, None]


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = 2) -> torch.Tensor:
    """``features [B, C, H, W]``, ``rois [K, 5]`` = (batch index, x1, y1, x2, y2) -> ``[K, C, oh, ow]``."""
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"expected features [B, C, H, W] and rois [K, 5], got {tuple(features.shape)}, {tuple(rois.shape)}")
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    if rois.shape[0] == 0:
        return features.new_zeros(0, features.shape[1], out_h, out_w)
    height, width = features.shape[-2:]
    rois = rois.to(features.dtype)
    ys, xs = _sample_points(rois, (out_h, out_w), spatial_scale, sampling_ratio)
    # grid_sample (align_corners=False) puts pixel centre i at the normalized (2 i + 1) / size - 1
    grid_y = (2 * ys + 1) / height - 1
    grid_x = (2 * xs + 1) / width - 1
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
    samples = F.grid_sample(features[rois[:, 0].long()], grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
    return F.avg_pool2d(samples, kernel_size=sampling_ratio) if sampling_ratio > 1 else samples


def roi_align_reference(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                        spatial_scale: float = 1.0, sampling_ratio: int = 2) -> torch.Tensor:
    """torchvision's algorithm (aligned=True, fixed sampling_ratio) written out sample by sample (for tests)."""
    out_h, out_w = output_size
    channels, height, width = features.shape[1:]
    out = features.new_zeros(rois.shape[0], channels, out_h, out_w)

    def bilinear(image, y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return image.new_zeros(channels)
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_low = y_high = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_low = x_high = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        return ((1 - ly) * (1 - lx) * image[:, y_low, x_low] + (1 - ly) * lx * image[:, y_low, x_high]
                + ly * (1 - lx) * image[:, y_high, x_low] + ly * lx * image[:, y_high, x_high])

    for k, (index, x1, y1, x2, y2) in enumerate(rois.tolist()):
        image = features[int(index)]
        x1, y1, x2, y2 = (v * spatial_scale - 0.5 for v in (x1, y1, x2, y2))
        bin_h, bin_w = (y2 - y1) / out_h, (x2 - x1) / out_w
        for i in range(out_h):
            for j in range(out_w):
                total = image.new_zeros(channels)
                for sy in range(sampling_ratio):
                    for sx in range(sampling_ratio):
                        y = y1 + (i + (sy + 0.5) / sampling_ratio) * bin_h
                        x = x1 + (j + (sx + 0.5) / sampling_ratio) * bin_w
                        total = total + bilinear(image, y, x)
                out[k, :, i, j] = total / sampling_ratio**2
    return out
