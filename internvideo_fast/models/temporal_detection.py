"""The pieces of an anchor-free temporal action detector (ActionFormer, Zhang et al. 2022) around its network:
the point grid of a feature pyramid, the assignment of ground truth to points (center sampling and regression
ranges), the sigmoid focal loss, the 1-D distance-IoU loss, and Gaussian Soft-NMS.

Units: segments are in feature-grid units (feature index ``i`` is time ``i``); a point of pyramid level ``l``
sits at ``t * stride_l`` and regresses its distances ``(d_start, d_end) / stride_l`` to the action's start
and end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "PointGrid", "point_grid", "assign_targets", "sigmoid_focal_loss", "diou_loss_1d", "soft_nms",
    "decode_segments",
]


@dataclass
class PointGrid:
    """All points of a pyramid, level after level: position ``[P]``, stride ``[P]`` and the regression range
    ``[P, 2]`` (an action whose longer distance from the point falls in it is that level's to detect)."""

    position: torch.Tensor
    stride: torch.Tensor
    regression_range: torch.Tensor
    level_sizes: list[int]


def point_grid(length: int, num_levels: int, regression_ranges: Sequence[tuple[float, float]],
               device: torch.device | str = "cpu") -> PointGrid:
    """Points of a pyramid over a sequence of ``length`` features, halving per level."""
    if len(regression_ranges) != num_levels:
        raise ValueError(f"{len(regression_ranges)} regression ranges for {num_levels} levels")
    positions, strides, ranges, sizes = [], [], [], []
    for level in range(num_levels):
        stride = 2 ** level
        size = length // stride
        positions.append(torch.arange(size, device=device, dtype=torch.float32) * stride)
        strides.append(torch.full((size,), float(stride), device=device))
        ranges.append(torch.tensor(regression_ranges[level], device=device, dtype=torch.float32).expand(size, 2))
        sizes.append(size)
    return PointGrid(torch.cat(positions), torch.cat(strides), torch.cat(ranges), sizes)


def assign_targets(grid: PointGrid, segments: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   center_radius: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of one video: ``(classes [P, num_classes] one-hot (zeros = background), offsets [P, 2])``.

    A point ``x`` of stride ``s`` is positive for a segment ``[a, b]`` when it lies strictly inside the
    segment's central region ``(max(a, c - r s), min(b, c + r s))`` (``c`` its centre, ``r = center_radius``)
    and the longer of ``x - a``, ``b - x`` lies in the level's regression range ``[lo, hi]`` (ActionFormer's
    rules). A point positive for several segments takes the shortest. Offsets are ``(x - a, b - x) / s``."""
    points = grid.position.shape[0]
    classes = torch.zeros(points, num_classes, device=grid.position.device)
    offsets = torch.zeros(points, 2, device=grid.position.device)
    if segments.numel() == 0:
        return classes, offsets
    x = grid.position[:, None]
    stride = grid.stride[:, None]
    start, end = segments[None, :, 0], segments[None, :, 1]
    left, right = x - start, end - x
    centre = 0.5 * (start + end)
    inside_centre = (x > torch.maximum(start, centre - center_radius * stride)) & \
                    (x < torch.minimum(end, centre + center_radius * stride))
    longest = torch.maximum(left, right)
    in_range = (longest >= grid.regression_range[:, :1]) & (longest <= grid.regression_range[:, 1:])
    length = (end - start).expand(points, -1).clone()
    length[~(inside_centre & in_range)] = float("inf")
    shortest, chosen = length.min(dim=1)
    positive = torch.isfinite(shortest)
    classes[positive, labels[chosen[positive]]] = 1.0
    offsets[positive, 0] = left[positive, chosen[positive]]
    offsets[positive, 1] = right[positive, chosen[positive]]
    offsets = offsets / grid.stride[:, None]
    return classes, offsets


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Element-wise focal loss (Lin et al.): ``alpha_t (1 - p_t)^gamma BCE(logits, targets)`` with
    ``p_t = p t + (1 - p)(1 - t)``, ``alpha_t = alpha t + (1 - alpha)(1 - t)``; summed by the caller."""
    probability = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probability * targets + (1 - probability) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def diou_loss_1d(predicted: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Distance-IoU loss of segments given as distances ``(left, right)`` from one point, ``[..., 2]``:
    ``1 - IoU + (centre distance / enclosing length)^2``."""
    pl, pr = predicted[..., 0], predicted[..., 1]
    tl, tr = target[..., 0], target[..., 1]
    intersection = torch.minimum(pl, tl) + torch.minimum(pr, tr)
    union = (pl + pr) + (tl + tr) - intersection
    iou = intersection / union.clamp(min=eps)
    enclosing = torch.maximum(pl, tl) + torch.maximum(pr, tr)
    centre_distance = 0.5 * ((pr - pl) - (tr - tl))
    return 1 - iou + (centre_distance / enclosing.clamp(min=eps)) ** 2


def _segment_iou(segment: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    intersection = (torch.minimum(segment[1], others[:, 1]) - torch.maximum(segment[0], others[:, 0])).clamp(min=0)
    union = (segment[1] - segment[0]) + (others[:, 1] - others[:, 0]) - intersection
    return intersection / union.clamp(min=1e-8)


def soft_nms(segments: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, sigma: float = 0.5,
             min_score: float = 1e-3, max_keep: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian Soft-NMS per class (Bodla et al.): repeatedly keep the best remaining segment and decay the
    scores of the others of its class by ``exp(-IoU^2 / sigma)``; stop below ``min_score`` or after
    ``max_keep``. Returns the kept ``(segments [K, 2], scores [K], labels [K])``, best first."""
    kept_segments, kept_scores, kept_labels = [], [], []
    scores = scores.clone()
    alive = torch.ones_like(scores, dtype=torch.bool)
    while len(kept_scores) < max_keep and alive.any():
        best = torch.where(alive, scores, torch.full_like(scores, -1.0)).argmax()
        if scores[best] < min_score:
            break
        kept_segments.append(segments[best])
        kept_scores.append(scores[best].clone())
        kept_labels.append(labels[best])
        alive[best] = False
        same = alive & (labels == labels[best])
        if same.any():
            iou = _segment_iou(segments[best], segments[same])
            scores[same] = scores[same] * torch.exp(-(iou ** 2) / sigma)
    if not kept_scores:
        empty = segments.new_zeros(0)
        return segments.new_zeros(0, 2), empty, labels.new_zeros(0)
    return torch.stack(kept_segments), torch.stack(kept_scores), torch.stack(kept_labels)


def decode_segments(grid: PointGrid, logits: torch.Tensor, offsets: torch.Tensor, valid: torch.Tensor,
                    score_threshold: float = 1e-3, top_k: int = 2000, **nms) -> tuple[torch.Tensor, ...]:
    """Detections of one video from its per-point ``logits [P, K]`` and ``offsets [P, 2]`` (stride units):
    the ``top_k`` (point, class) pairs above ``score_threshold`` among ``valid`` points, turned into segments
    ``[x - d_start s, x + d_end s]`` and passed through :func:`soft_nms`."""
    probability = torch.sigmoid(logits.float()) * valid[:, None]
    flat = probability.flatten()
    keep = min(top_k, flat.numel())
    top_scores, top_index = flat.topk(keep)
    chosen = top_scores > score_threshold
    top_scores, top_index = top_scores[chosen], top_index[chosen]
    point, label = top_index // logits.shape[1], top_index % logits.shape[1]
    position, stride = grid.position[point], grid.stride[point]
    segments = torch.stack([position - offsets[point, 0].float() * stride,
                            position + offsets[point, 1].float() * stride], dim=1)
    return soft_nms(segments, top_scores, label, **nms)
