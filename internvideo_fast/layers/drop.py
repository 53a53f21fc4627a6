"""Stochastic depth (timm's ``DropPath``): a residual branch dropped per sample while training."""

from __future__ import annotations

import torch


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """``x * m / (1 - drop_prob)`` with ``m[b] ~ Bernoulli(1 - drop_prob)`` per index of x's first dim
    (``x`` itself when not training or ``drop_prob == 0``)."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def drop_path_scale(batch: int, drop_prob: float, training: bool, device, dtype) -> torch.Tensor | None:
    """The same stochastic depth as a per-sample scale for the fused ops (``drop_path_scale=``): ``[batch]``
    of 0 for dropped samples and ``1 / (1 - drop_prob)`` for kept ones; None when nothing is dropped."""
    if not training or drop_prob == 0.0:
        return None
    keep = 1.0 - drop_prob
    return torch.empty(batch, device=device, dtype=dtype).bernoulli_(keep) / keep
