"""Token gather and scatter in plain PyTorch."""

from __future__ import annotations

import torch

OP_NAME = "token_gather"


def gather_tokens_ref(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))


def scatter_tokens_ref(x: torch.Tensor, ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    out = x.new_zeros(x.shape[0], num_tokens, x.shape[-1])
    return out.scatter(1, ids[..., None].expand(-1, -1, x.shape[-1]), x)
