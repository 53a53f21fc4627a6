"""ActionFormer (Zhang, Wu and Li, ECCV 2022): an anchor-free temporal action detector over a sequence of clip
features, the detector InternVideo's TAL results feed its features to.

    features [B, C, T] -> embedding (2 x masked Conv1d(3) + LayerNorm + ReLU)
                       -> stem: local-attention transformer blocks at full resolution
                       -> branch: one block per further level, each after a max-pool halving the sequence
                       -> pyramid levels l = 0..L-1 of T / 2^l points
    shared heads over every level: classification (K logits, sigmoid; prior 0.01) and regression
    (ReLU(scale_l * out) = distances to the action's start and end in units of the level's stride).

A local-attention block is pre-LayerNorm multi-head self-attention in which each position sees the positions
within ``window // 2`` of it (and no padding), then a GELU MLP. Training: sigmoid focal loss over all valid
points + distance-IoU loss on the positive ones (``temporal_detection.assign_targets``: center sampling and
per-level regression ranges), both divided by the number of positives. Inference: top-k points, Soft-NMS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from internvideo_fast.models.registry import register_model
from internvideo_fast.models.temporal_detection import (
    assign_targets, decode_segments, diou_loss_1d, point_grid, sigmoid_focal_loss,
)

__all__ = ["ActionFormerConfig", "ActionFormer", "local_attention_mask", "LocalAttentionBlock"]


@dataclass
class ActionFormerConfig:
    input_dim: int = 768
    num_classes: int = 20
    embed_dim: int = 512
    num_heads: int = 4
    window: int = 19  # local attention sees window // 2 positions each side (ActionFormer: 19 on THUMOS14)
    stem_blocks: int = 2
    num_levels: int = 6
    head_dim: int = 512
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    regression_ranges: list = field(default_factory=lambda: [(0, 4), (4, 8), (8, 16), (16, 32), (32, 64),
                                                             (64, 10_000)])
    center_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    regression_weight: float = 1.0


def local_attention_mask(valid: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, 1, T, T]`` True where query ``i`` may attend to key ``j``: ``|i - j| <= window // 2`` and ``j`` is
    valid; a padded query also sees itself (its output is discarded), so no row is empty."""
    length = valid.shape[1]
    index = torch.arange(length, device=valid.device)
    band = (index[:, None] - index[None, :]).abs() <= window // 2
    allowed = band[None] & valid[:, None, :]
    return (allowed | torch.eye(length, dtype=torch.bool, device=valid.device)[None])[:, None]


class LocalAttentionBlock(nn.Module):
    """Pre-LN transformer block with windowed self-attention over ``[B, T, D]``. The window is a band mask
    on dense attention (``O(T^2)`` memory per head: about 20 MB at THUMOS14's 2304 steps), which lets
    PyTorch's fused attention run it."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.window = num_heads, window
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=local_attention_mask(valid, self.window))
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(batch, length, dim)))
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x * valid[..., None]


class _ConvStack(nn.Module):
    """``depth`` x (masked Conv1d(3) -> LayerNorm over channels -> ReLU) on ``[B, C, T]``."""

    def __init__(self, in_dim: int, dim: int, depth: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(in_dim if i == 0 else dim, dim, 3, padding=1) for i in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mask = valid[:, None].to(x.dtype)
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x * mask).transpose(1, 2)).transpose(1, 2))
        return x * mask


class ActionFormer(nn.Module):
    def __init__(self, cfg: ActionFormerConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or ActionFormerConfig()
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise ValueError(f"unknown ActionFormer argument {key!r}")
            setattr(cfg, key, value)
        if len(cfg.regression_ranges) != cfg.num_levels:
            raise ValueError(f"{len(cfg.regression_ranges)} regression_ranges for num_levels={cfg.num_levels}")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.embed = _ConvStack(cfg.input_dim, cfg.embed_dim, 2)
        block = lambda: LocalAttentionBlock(cfg.embed_dim, cfg.num_heads, cfg.window, cfg.mlp_ratio, cfg.dropout)  # noqa: E731
        self.stem = nn.ModuleList(block() for _ in range(cfg.stem_blocks))
        self.branch = nn.ModuleList(block() for _ in range(cfg.num_levels - 1))
        self.cls_tower = _ConvStack(cfg.embed_dim, cfg.head_dim, 2)
        self.cls_out = nn.Conv1d(cfg.head_dim, cfg.num_classes, 3, padding=1)
        self.reg_tower = _ConvStack(cfg.embed_dim, cfg.head_dim, 2)
        self.reg_out = nn.Conv1d(cfg.head_dim, 2, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(cfg.num_levels))
        prior = 0.01
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior) / prior))

    @property
    def length_multiple(self) -> int:
        """Sequence lengths must be a multiple of this (every level halves the previous one exactly)."""
        return 2 ** (self.cfg.num_levels - 1)

    def forward_pyramid(self, features: torch.Tensor, valid: torch.Tensor) -> tuple[list, list]:
        """``features [B, C, T]``, ``valid [B, T]`` -> per level ``[B, D, T_l]`` and ``valid_l [B, T_l]``."""
        if features.shape[-1] % self.length_multiple:
            raise ValueError(f"sequence length {features.shape[-1]} is not a multiple of {self.length_multiple}")
        x = self.embed(features, valid).transpose(1, 2)
        for block in self.stem:
            x = block(x, valid)
        levels, masks = [x], [valid]
        for block in self.branch:
            # padding must never win the max: a padded sequence then gives its valid points what the
            # unpadded one gives
            x = x.masked_fill(~valid[..., None], float("-inf"))
            x = F.max_pool1d(x.transpose(1, 2), kernel_size=3, stride=2, padding=1).transpose(1, 2)
            valid = valid[:, ::2]
            x = x.masked_fill(~valid[..., None], 0.0)
            x = block(x, valid)
            levels.append(x)
            masks.append(valid)
        return [level.transpose(1, 2) for level in levels], masks

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [B, P, K], offsets [B, P, 2] in stride units, valid [B, P])`` over all points."""
        levels, masks = self.forward_pyramid(features, valid)
        logits, offsets = [], []
        for index, (level, mask) in enumerate(zip(levels, masks)):
            logits.append(self.cls_out(self.cls_tower(level, mask)).transpose(1, 2))
            offsets.append(F.relu(self.scales[index] * self.reg_out(self.reg_tower(level, mask))).transpose(1, 2))
        return torch.cat(logits, 1), torch.cat(offsets, 1), torch.cat(masks, 1)

    def grid(self, length: int, device) -> object:
        return point_grid(length, self.cfg.num_levels, self.cfg.regression_ranges, device)

    def loss(self, features: torch.Tensor, valid: torch.Tensor, segments: list[torch.Tensor],
             labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Focal + DIoU losses of a batch; ``segments[b] [N_b, 2]`` in feature-grid units, ``labels[b] [N_b]``."""
        logits, offsets, point_valid = self(features, valid)
        grid = self.grid(features.shape[-1], features.device)
        targets = [assign_targets(grid, s.to(features.device), l.to(features.device), self.num_classes,
                                  self.cfg.center_radius) for s, l in zip(segments, labels)]
        target_classes = torch.stack([t[0] for t in targets])
        target_offsets = torch.stack([t[1] for t in targets])
        positive = (target_classes.sum(-1) > 0) & point_valid
        num_positive = positive.sum().clamp(min=1).float()
        focal = sigmoid_focal_loss(logits.float()[point_valid], target_classes[point_valid],
                                   self.cfg.focal_alpha, self.cfg.focal_gamma).sum() / num_positive
        if positive.any():
            regression = diou_loss_1d(offsets.float()[positive], target_offsets[positive]).sum() / num_positive
        else:
            regression = offsets.sum() * 0.0
        loss = focal + self.cfg.regression_weight * regression
        return {"loss": loss, "classification": focal.detach(), "regression": regression.detach(),
                "positives": num_positive.detach()}

    @torch.no_grad()
    def detect(self, features: torch.Tensor, valid: torch.Tensor, **decode) -> list[tuple[torch.Tensor, ...]]:
        """Per video ``(segments [K, 2] in feature-grid units, scores [K], labels [K])`` after Soft-NMS."""
        logits, offsets, point_valid = self(features, valid)
        grid = self.grid(features.shape[-1], features.device)
        return [decode_segments(grid, logits[b], offsets[b], point_valid[b], **decode) for b in range(len(logits))]


def actionformer(**overrides) -> ActionFormer:
    return ActionFormer(**overrides)


register_model("actionformer", actionformer)
