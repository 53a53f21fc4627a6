"""Spatio-temporal action localization (AVA): a region head over an encoder's last feature map.

    clip [B, 3, T, H, W] -> encoder tokens -> feature map [B, D, T', H', W'] -> mean over T' (temporal pooling)
    -> RoIAlign over each given person box (normalized x1, y1, x2, y2 on the keyframe) at r x r
    -> max over the r x r bins -> dropout -> Linear -> one logit per action (sigmoid: multi-label)

as the AVA heads of SlowFast and VideoMAE. Person boxes are given (ground truth for training, a person
detector's proposals at inference). Trained with binary cross-entropy per action; scored by frame-mAP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from internvideo_fast.models.roi_align import roi_align

__all__ = ["AVAHead", "ActionDetector", "token_feature_map"]


def token_feature_map(encoder: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """VideoMAE tokens ``[B, T' H' W', D]`` (t, h, w order) -> ``[B, D, T', H', W']``."""
    tokens = encoder.forward_features(video)
    frames, height, width = encoder.grid
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], frames, height, width)


class AVAHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, resolution: int = 7, sampling_ratio: int = 2,
                 dropout: float = 0.5):
        super().__init__()
        self.num_classes, self.resolution, self.sampling_ratio = num_classes, resolution, sampling_ratio
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_dim, num_classes)

    def forward(self, feature_map: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``feature_map [B, D, T, h, w]``, ``boxes [K, 5]`` = (clip index, x1, y1, x2, y2) normalized to
        [0, 1] -> logits ``[K, num_classes]``."""
        pooled = feature_map.mean(2)
        height, width = pooled.shape[-2:]
        scale = boxes.new_tensor([1.0, width, height, width, height])
        regions = roi_align(pooled, boxes * scale, self.resolution, 1.0, self.sampling_ratio)
        return self.classifier(self.dropout(F.adaptive_max_pool2d(regions, 1).flatten(1)))


class ActionDetector(nn.Module):
    """An encoder with a ``forward_features`` token interface and ``grid`` (VideoMAE) plus :class:`AVAHead`."""

    def __init__(self, encoder: nn.Module, num_classes: int, **head_args):
        super().__init__()
        self.encoder = encoder
        self.head = AVAHead(encoder.embed_dim, num_classes, **head_args)

    def forward(self, video: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.head(token_feature_map(self.encoder, video), boxes)
