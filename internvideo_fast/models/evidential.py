"""Evidential (Dirichlet) classification for open-set recognition (DEAR, Bao et al., ICCV 2021; evidential
deep learning, Sensoy et al. 2018).

The head outputs non-negative evidence ``e [B, K]`` for the K known classes; ``alpha = e + 1`` are the
parameters of a Dirichlet over class probabilities, ``S = sum_k alpha_k``:

    expected probability  p_k = alpha_k / S
    uncertainty           u   = K / S        (1 with no evidence at all; a video far from every known class)

Loss of a one-hot label y (``kind``):

    log      sum_k y_k (log S - log alpha_k)              (DEAR's default: the Dirichlet's marginal likelihood)
    digamma  sum_k y_k (digamma S - digamma alpha_k)      (the expected cross-entropy)
    mse      sum_k (y_k - p_k)^2 + p_k (1 - p_k) / (S + 1)
    + lambda_t KL(Dir(alpha~) || Dir(1)),  alpha~ = y + (1 - y) alpha   (removes evidence of wrong classes;
      lambda_t = min(1, step / annealing_steps))

Open-set inference rejects a video as unknown when ``u`` exceeds a threshold; AUROC needs no threshold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EvidentialHead", "evidence_activation", "dirichlet_uncertainty", "kl_to_uniform_dirichlet",
           "evidential_loss"]


def evidence_activation(logits: torch.Tensor, kind: str = "exp", clamp: float = 10.0) -> torch.Tensor:
    """Non-negative evidence: ``exp(clamp(x, -clamp, clamp))`` (DEAR), ``softplus`` or ``relu``."""
    if kind == "exp":
        return torch.exp(logits.clamp(-clamp, clamp))
    if kind == "softplus":
        return F.softplus(logits)
    if kind == "relu":
        return F.relu(logits)
    raise ValueError(f"unknown evidence activation {kind!r}; expected exp, softplus or relu")


def dirichlet_uncertainty(evidence: torch.Tensor) -> torch.Tensor:
    """``u = K / sum_k (e_k + 1)`` per row of ``evidence [B, K]``."""
    return evidence.shape[-1] / (evidence + 1).sum(-1)


def kl_to_uniform_dirichlet(alpha: torch.Tensor) -> torch.Tensor:
    """``KL(Dir(alpha) || Dir(1, ..., 1))`` per row of ``alpha [B, K]``."""
    total = alpha.sum(-1)
    k = alpha.shape[-1]
    return (torch.lgamma(total) - math.lgamma(k) - torch.lgamma(alpha).sum(-1)
            + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(total)[..., None])).sum(-1))


def evidential_loss(evidence: torch.Tensor, labels: torch.Tensor, kl_weight: float = 0.0,
                    kind: str = "log") -> torch.Tensor:
    """Mean over the batch of the loss in the module docstring; ``labels [B]`` class indices."""
    alpha = evidence + 1
    total = alpha.sum(-1, keepdim=True)
    y = F.one_hot(labels, evidence.shape[-1]).to(alpha.dtype)
    if kind == "log":
        data = (y * (torch.log(total) - torch.log(alpha))).sum(-1)
    elif kind == "digamma":
        data = (y * (torch.digamma(total) - torch.digamma(alpha))).sum(-1)
    elif kind == "mse":
        p = alpha / total
        data = ((y - p) ** 2 + p * (1 - p) / (total + 1)).sum(-1)
    else:
        raise ValueError(f"unknown evidential loss {kind!r}; expected log, digamma or mse")
    if kl_weight:
        data = data + kl_weight * kl_to_uniform_dirichlet(y + (1 - y) * alpha)
    return data.mean()


class EvidentialHead(nn.Module):
    """``features [B, D]`` -> evidence ``[B, K]``: LayerNorm, an optional hidden layer (GELU, dropout), Linear,
    then the evidence activation."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 0, dropout: float = 0.0,
                 activation: str = "exp"):
        super().__init__()
        evidence_activation(torch.zeros(1), activation)  # an unknown activation fails here, not mid-training
        self.num_classes, self.activation = num_classes, activation
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        if hidden:
            layers += [nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout)]
        layers += [nn.Dropout(dropout), nn.Linear(hidden or in_dim, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return evidence_activation(self.net(features), self.activation)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predicted known class [B], uncertainty u [B])``."""
        evidence = self(features)
        return evidence.argmax(-1), dirichlet_uncertainty(evidence)
