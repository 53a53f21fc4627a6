"""Masked tubelet embedding the official way (Conv3d on every tube, then the gather), in plain PyTorch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

OP_NAME = "masked_patch_embed"
SUPPORTED_VIDEO_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.uint8)


def normalize_video(video: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """The loader's normalization: uint8 video to float32 in [0, 1], then ``(x - mean) / std`` per channel."""
    x = video.float() / 255.0 if video.dtype == torch.uint8 else video
    if mean is not None:
        shape = (1, -1, 1, 1, 1)
        x = (x - torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)) / torch.tensor(
            std, dtype=x.dtype, device=x.device
        ).view(shape)
    return x


def video_to_tubes(x: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """``[B, C, T, H, W] -> [B, N, C*t*p*p]``: every tube's pixels in Conv3d weight order, tokens (t, h, w)."""
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, -1, C * tubelet * patch * patch)


def masked_tubelet_patches_ref(video, ids, tubelet, patch, mean=None, std=None) -> torch.Tensor:
    tubes = video_to_tubes(normalize_video(video, mean, std), tubelet, patch)
    return tubes.gather(1, ids[..., None].expand(-1, -1, tubes.shape[-1]))


def masked_patch_embed_ref(video, ids_keep, weight, bias=None, pos_embed=None, mean=None, std=None) -> torch.Tensor:
    """The official path: Conv3d on every tube, + position table, then keep the visible tokens."""
    x = normalize_video(video, mean, std).to(weight.dtype)
    tokens = F.conv3d(x, weight, bias, stride=weight.shape[2:]).flatten(2).transpose(1, 2)
    if pos_embed is not None:
        tokens = tokens + pos_embed.reshape(-1, *tokens.shape[1:]).to(tokens.dtype)
    return tokens.gather(1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
