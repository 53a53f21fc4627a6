"""`MaskedTubeEmbedding`: the masked video encoder's input layer as one module.

It holds the tubelet Conv3d (``proj``, so official ``patch_embed.proj.{weight,bias}`` load unchanged) and
the position table (VideoMAE's fixed sinusoid table, a non-persistent buffer as in the official code, or a
learnable parameter), and turns a video into its visible token embeddings plus the mask that chose them:

    tokens, masks = embed(video, mask_ratio=0.9, seed=step_seed)   # tokens [B, n_vis, D]

with mask generation, pixel gather, normalization, GEMM and position add fused (``tube_mask``,
``masked_patch_embed``), no host sync. Without a mask ratio it embeds every tube (Conv3d + table).
``mean``/``std`` normalize raw uint8 video (so loaders can ship 4x fewer bytes); float video is taken as
already normalized.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from internvideo_fast.ops.masked_patch_embed import masked_patch_embed, normalize_video
from internvideo_fast.ops.tube_mask import TubeMask, tube_mask


def sinusoid_position_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's ``get_sinusoid_encoding_table``: ``[1, num_positions, dim]`` float32, sin on even and
    cos on odd channels, angle ``position / 10000 ** (2 * (channel // 2) / dim)``."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angle = position / torch.pow(10000.0, exponent)
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)[None]


class MaskedTubeEmbedding(nn.Module):
    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        num_frames: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        learnable_pos_embed: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
        if height % patch_size or width % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"img_size {height}x{width} and num_frames {num_frames} must be divisible by patch_size "
                f"{patch_size} and tubelet_size {tubelet_size}"
            )
        self.grid = (num_frames // tubelet_size, height // patch_size, width // patch_size)
        self.num_tokens = math.prod(self.grid)
        self.tubelet_size, self.patch_size = tubelet_size, patch_size
        self.mean, self.std = mean, std
        self.proj = nn.Conv3d(in_chans, embed_dim, (tubelet_size, patch_size, patch_size), (tubelet_size, patch_size, patch_size))
        table = sinusoid_position_table(self.num_tokens, embed_dim)
        if learnable_pos_embed:
            self.pos_embed = nn.Parameter(table)
        else:
            self.register_buffer("pos_embed", table, persistent=False)

    def forward(
        self,
        video: torch.Tensor,
        mask_ratio: float | None = None,
        seed: int | torch.Tensor | None = None,
        masks: TubeMask | None = None,
    ) -> tuple[torch.Tensor, TubeMask | None]:
        """Embeds the visible tubes of `video` ``[B, C, T, H, W]``.

        Either draw tube masks here (`mask_ratio` and optional `seed`, see :func:`tube_mask`) or pass
        `masks` made elsewhere; with neither, every tube is embedded and the second output is None."""
        if tuple(video.shape[2:]) != (
            self.grid[0] * self.tubelet_size, self.grid[1] * self.patch_size, self.grid[2] * self.patch_size
        ):
            raise ValueError(f"video must be [B, C, {self.grid[0] * self.tubelet_size}, "
                             f"{self.grid[1] * self.patch_size}, {self.grid[2] * self.patch_size}], got {tuple(video.shape)}")
        if masks is None and mask_ratio:
            masks = tube_mask(video.shape[0], *self.grid, mask_ratio, seed=seed, device=video.device)
        pos_embed = self.pos_embed.to(self.proj.weight.dtype)
        # mean/std normalize raw uint8 video; float video arrives normalized by the loader.
        mean, std = (self.mean, self.std) if video.dtype == torch.uint8 else (None, None)
        if masks is None:
            x = normalize_video(video, mean, std).to(self.proj.weight.dtype)
            tokens = F.conv3d(x, self.proj.weight, self.proj.bias, stride=self.proj.stride)
            return tokens.flatten(2).transpose(1, 2) + pos_embed, None
        tokens = masked_patch_embed(
            video, masks.ids_keep, self.proj.weight, self.proj.bias, pos_embed, mean, std
        )
        return tokens, masks
