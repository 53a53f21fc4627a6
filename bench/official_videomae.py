"""The official VideoMAE pretraining compute, as released, for the end-to-end benchmark's baseline.

Written from the paper's and the official code's math (MCG-NJU/VideoMAE ``modeling_pretrain.py``,
``engine_for_pretraining.py``, ``masking_generator.py``), with the parameter names of
internvideo_fast's `VideoMAEPretrain`, so one state_dict loads into both:

- patch embedding: ``Conv3d(kernel = stride = (tubelet, p, p))`` on **every** tube, flattened (t, h, w),
  plus the fixed sinusoid table, then the visible tokens ``x[~mask].reshape(B, -1, C)``;
- blocks: pre-LayerNorm (eps 1e-6); attention with a fused ``qkv`` (bias ``cat(q_bias, 0, v_bias)``) as
  ``softmax(q * d^-1/2 @ k^T) @ v``, each product materialized; timm's MLP ``fc2(GELU(fc1(x)))``;
- decoder input ``[x_vis + pos[~mask], mask_token + pos[mask]]``, prediction of the last ``N_mask`` tokens;
- targets on the host side of autograd (no grad, fp32): undo the ImageNet normalization, tubes as
  ``b (t h w) (tubelet p p) c``, normalized per tube and channel with the unbiased variance, flattened
  ``(p c)``, the masked ones kept; MSE;
- the step: the tube mask drawn with NumPy on the host (one shuffle per clip) and copied over, fp16
  autocast, ``GradScaler`` (scale, unscale, clip, step, update), and ``loss.item()`` every step (the
  official loop checks the loss is finite on the host).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from internvideo_fast.ops.tube_mask import tube_mask_official_numpy


def get_sinusoid_encoding_table(n_position: int, d_hid: int) -> torch.Tensor:
    """``[1, n_position, d_hid]``: sin on even, cos on odd channels of ``pos / 10000^(2 (j // 2) / d_hid)``,
    computed in float64 with NumPy and stored as float32, as the official code does."""
    channel = np.arange(d_hid)
    angles = np.arange(n_position)[:, None] / np.power(10000, 2 * (channel // 2) / d_hid)[None, :]
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32).unsqueeze(0)


class OfficialAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


class OfficialMlp(nn.Module):
    """timm's Mlp: fc1, GELU (erf), fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class OfficialBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = OfficialAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = OfficialMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class OfficialPatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, tubelet: int, patch: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, (tubelet, patch, patch), (tubelet, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class OfficialEncoder(nn.Module):
    def __init__(self, num_tokens, in_chans, dim, depth, heads, mlp_ratio, tubelet, patch):
        super().__init__()
        self.patch_embed = OfficialPatchEmbed(in_chans, dim, tubelet, patch)
        self.register_buffer("pos_embed", get_sinusoid_encoding_table(num_tokens, dim), persistent=False)
        self.blocks = nn.ModuleList(OfficialBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + self.pos_embed.type_as(x).to(x.device).clone().detach()
        B, _, C = x.shape
        x = x[~mask].reshape(B, -1, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class OfficialDecoder(nn.Module):
    def __init__(self, dim, depth, heads, mlp_ratio, out_dim):
        super().__init__()
        self.blocks = nn.ModuleList(OfficialBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, return_token_num: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -return_token_num:]))


class OfficialVideoMAEPretrain(nn.Module):
    """``forward(videos, bool_masked_pos) -> predictions [B, N_mask, tubelet*p*p*3]``."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_frames=16, tubelet_size=2,
                 encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, decoder_embed_dim=384,
                 decoder_depth=4, decoder_num_heads=6, mlp_ratio=4.0,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        num_tokens = (num_frames // tubelet_size) * (img_size // patch_size) ** 2
        self.tubelet_size, self.patch_size, self.mean, self.std = tubelet_size, patch_size, mean, std
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.encoder = OfficialEncoder(num_tokens, in_chans, encoder_embed_dim, encoder_depth, encoder_num_heads,
                                       mlp_ratio, tubelet_size, patch_size)
        self.encoder_to_decoder = nn.Linear(encoder_embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("pos_embed", get_sinusoid_encoding_table(num_tokens, decoder_embed_dim), persistent=False)
        self.decoder = OfficialDecoder(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
                                       in_chans * tubelet_size * patch_size ** 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x_vis = self.encoder_to_decoder(self.encoder(x, mask))
        B, _, C = x_vis.shape
        expand_pos_embed = self.pos_embed.expand(B, -1, -1).type_as(x).to(x.device).clone().detach()
        pos_emd_vis = expand_pos_embed[~mask].reshape(B, -1, C)
        pos_emd_mask = expand_pos_embed[mask].reshape(B, -1, C)
        x_full = torch.cat([x_vis + pos_emd_vis, self.mask_token + pos_emd_mask], dim=1)
        return self.decoder(x_full, pos_emd_mask.shape[1])


def official_from(model: nn.Module) -> OfficialVideoMAEPretrain:
    """The official module with the sizes and weights of an internvideo_fast `VideoMAEPretrain`."""
    encoder, decoder = model.encoder, model.decoder
    T, H, W = encoder.grid
    official = OfficialVideoMAEPretrain(
        img_size=H * model.patch_size, patch_size=model.patch_size, in_chans=encoder.patch_embed.proj.in_channels,
        num_frames=T * model.tubelet_size, tubelet_size=model.tubelet_size, encoder_embed_dim=encoder.embed_dim,
        encoder_depth=len(encoder.blocks), encoder_num_heads=encoder.blocks[0].attn.num_heads,
        decoder_embed_dim=decoder.head.in_features, decoder_depth=len(decoder.blocks),
        decoder_num_heads=decoder.blocks[0].attn.num_heads,
        mlp_ratio=encoder.blocks[0].mlp.fc1.out_features / encoder.embed_dim, mean=model.mean, std=model.std,
    )
    official.load_state_dict(model.state_dict())
    return official.to(next(model.parameters()).device)


@torch.no_grad()
def official_targets(videos, bool_masked_pos, tubelet: int, patch: int, mean, std) -> torch.Tensor:
    """engine_for_pretraining: unnormalize, tubes ``b (t h w) (p0 p1 p2) c``, per-tube normalization with the
    unbiased variance, ``(p c)`` flattening, the masked tubes."""
    mean = torch.as_tensor(mean, device=videos.device, dtype=videos.dtype)[None, :, None, None, None]
    std = torch.as_tensor(std, device=videos.device, dtype=videos.dtype)[None, :, None, None, None]
    unnorm_videos = videos * std + mean
    B, C, T, H, W = unnorm_videos.shape
    squeeze = unnorm_videos.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    squeeze = squeeze.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, -1, tubelet * patch * patch, C)
    videos_norm = (squeeze - squeeze.mean(dim=-2, keepdim=True)) / (
        squeeze.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    videos_patch = videos_norm.reshape(B, videos_norm.shape[1], -1)
    return videos_patch[bool_masked_pos].reshape(B, -1, videos_patch.shape[-1])


def official_loss(model: OfficialVideoMAEPretrain, videos: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
    labels = official_targets(videos, bool_masked_pos, model.tubelet_size, model.patch_size, model.mean, model.std)
    return F.mse_loss(model(videos, bool_masked_pos), labels)


class OfficialPretrainStep:
    """One step of the official loop: host NumPy tube mask, copied to the device; fp16 autocast (on CUDA);
    GradScaler; gradient clipping; AdamW step; the loss read back to check it is finite."""

    def __init__(self, model: OfficialVideoMAEPretrain, optimizer: torch.optim.Optimizer, mask_ratio: float = 0.9,
                 clip_grad: float | None = None, seed: int = 0):
        self.model, self.optimizer, self.mask_ratio, self.clip_grad = model, optimizer, mask_ratio, clip_grad
        self.device = next(model.parameters()).device
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda")
        self.rng = np.random.default_rng(seed)

    def __call__(self, videos: torch.Tensor) -> float:
        B = videos.shape[0]
        model = self.model
        mask = tube_mask_official_numpy(B, *model.grid, self.mask_ratio, self.rng)
        bool_masked_pos = mask.to(self.device, non_blocking=True).flatten(1).to(torch.bool)
        labels = official_targets(videos, bool_masked_pos, model.tubelet_size, model.patch_size, model.mean, model.std)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            loss = F.mse_loss(model(videos, bool_masked_pos), labels)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value}, stopping training")
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_value
