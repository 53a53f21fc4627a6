"""VideoMAE's reconstruction targets the official way (every tube, then the gather), in plain PyTorch."""

from __future__ import annotations

import torch

OP_NAME = "mae_targets"


def mae_targets_ref(video, ids_masked, tubelet, patch, normalize=True, eps=1e-6, mean=None, std=None) -> torch.Tensor:
    """The official computation on every tube (rearrange + normalize), then the gather."""
    out_dtype = torch.float64 if video.dtype == torch.float64 else torch.float32
    if video.dtype == torch.uint8:
        x = video.to(out_dtype) / 255.0
    else:
        x = video.to(out_dtype)
        if mean is not None:
            shape = (1, -1, 1, 1, 1)
            x = x * torch.tensor(std, dtype=out_dtype, device=x.device).view(shape) + torch.tensor(
                mean, dtype=out_dtype, device=x.device
            ).view(shape)
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    tubes = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, -1, tubelet * patch * patch, C)
    if normalize:
        tubes = (tubes - tubes.mean(dim=-2, keepdim=True)) / (tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps)
    tubes = tubes.flatten(2)
    return tubes.gather(1, ids_masked[..., None].expand(-1, -1, tubes.shape[-1]))
