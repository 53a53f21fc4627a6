"""Mixup / CutMix for video batches and the soft-target cross-entropy (with label smoothing)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot_smoothed(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off, device=labels.device).scatter_(
        1, labels[:, None], 1.0 - smoothing + off
    )


class VideoMixup:
    """Per batch: with `mixup` > 0 and/or `cutmix` > 0, mix each clip with the batch flipped; CutMix cuts the
    same box from every frame. lambda ~ Beta(alpha, alpha); switch between the two with probability 0.5
    when both are on. Targets become soft (label smoothing applied first)."""

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, label_smoothing: float = 0.0):
        self.num_classes, self.mixup, self.cutmix, self.smoothing = num_classes, mixup, cutmix, label_smoothing

    def __call__(self, video: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        targets = one_hot_smoothed(labels, self.num_classes, self.smoothing)
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or torch.rand((), generator=generator) < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        if alpha <= 0:
            return video, targets
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        flipped = video.flip(0)
        if use_cutmix:
            H, W = video.shape[-2:]
            cut_h, cut_w = int(H * (1 - lam) ** 0.5), int(W * (1 - lam) ** 0.5)
            cy, cx = int(torch.randint(H, (), generator=generator)), int(torch.randint(W, (), generator=generator))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
            video = video.clone()
            video[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
        else:
            video = video * lam + flipped * (1 - lam)
        return video, targets * lam + targets.flip(0) * (1 - lam)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
