"""VideoMAE (Tong et al., 2022), the masked video encoder of InternVideo, on internvideo-fast's fused ops.

- Input layer: :class:`MaskedTubeEmbedding` — tube masks drawn on the device, only the visible tubes
  embedded (one GEMM, position table added in the same pass), no host sync.
- Blocks: pre-LayerNorm (eps 1e-6) ViT blocks; attention with ``q_bias``/``v_bias`` (K has no bias) through
  ``scaled_dot_product_attention``; the residual add + second LayerNorm fused (``dropout_add_layer_norm``,
  drop path included); the MLP through :class:`FusedMLP` (erf GELU in fc1's epilogue); optional layer
  scale (``gamma_1``/``gamma_2``) and gradient checkpointing.
- :class:`VideoMAEPretrain`: encoder on the visible tokens, ``encoder_to_decoder``, ``mask_token`` + the
  decoder's position table, a narrow decoder, and the MSE on :func:`mae_targets` of the masked tubes.
- :class:`VideoMAEClassifier`: mean pool -> ``fc_norm`` -> dropout -> ``head``.

Parameter names are the official ones, so official checkpoints load unchanged
(``internvideo_fast.models.checkpoint``). Sizes come from registered factories (bottom of the file).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from internvideo_fast.errors import ConfigError
from internvideo_fast.layers.constants import IMAGENET_MEAN, IMAGENET_STD
from internvideo_fast.layers.drop import drop_path_scale
from internvideo_fast.layers.embedding import MaskedTubeEmbedding, sinusoid_position_table
from internvideo_fast.layers.mlp import FusedMLP
from internvideo_fast.models.registry import register_model
from internvideo_fast.ops import dropout_add_layer_norm, gather_tokens, mae_targets
from internvideo_fast.ops.tube_mask import TubeMask



class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's bias layout: ``qkv`` has no bias of its own; the bias is
    ``cat(q_bias, 0, v_bias)``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
        attn_drop: float = 0.0, drop_path: float = 0.0, init_values: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FusedMLP(dim, int(dim * mlp_ratio), activation="gelu", drop=drop)
        self.drop_path = drop_path
        if init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn(F.layer_norm(x, x.shape[-1:], self.norm1.weight, self.norm1.bias, self.norm1.eps))
        if self.gamma_1 is not None:
            attn = attn * self.gamma_1
        scale = drop_path_scale(x.shape[0], self.drop_path, self.training, x.device, x.dtype)
        # x + drop_path(attn) and norm2 of it in one pass.
        normed, x = dropout_add_layer_norm(
            attn, x, self.norm2.weight, self.norm2.bias, eps=self.norm2.eps, drop_path_scale=scale
        )
        mlp = self.mlp(normed)
        if self.gamma_2 is not None:
            mlp = mlp * self.gamma_2
        scale = drop_path_scale(x.shape[0], self.drop_path, self.training, x.device, x.dtype)
        return x + (mlp if scale is None else mlp * scale.view(-1, *([1] * (mlp.dim() - 1))))


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    for block in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


class VideoMAEEncoder(nn.Module):
    """The ViT encoder: ``forward_features(video, masks)`` embeds (only the visible tubes when `masks` is
    given) and runs the blocks and ``norm``."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_frames: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float = 0.0,
        use_learnable_pos_emb: bool = False,
        final_norm: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = MaskedTubeEmbedding(
            img_size, patch_size, num_frames, tubelet_size, in_chans, embed_dim, use_learnable_pos_emb, mean, std
        )
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace, meta-device safe
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate, init_values) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if final_norm else nn.Identity()
        self.grad_checkpointing = grad_checkpointing
        self.apply(_init_weights)

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.patch_embed.grid

    def forward_features(self, video: torch.Tensor, masks: TubeMask | None = None) -> torch.Tensor:
        tokens, _ = self.patch_embed(video, masks=masks)
        return self.norm(_run_blocks(self.blocks, tokens, self.grad_checkpointing))

    def forward_tokens(self, video: torch.Tensor, layers: Sequence[int] | int | None = None) -> torch.Tensor:
        """All tokens of an unmasked video, the interface the CMA fusion reads: ``[B, N, D]`` after the final
        norm, or with `layers`, the outputs of those blocks (negative counts from the end) concatenated
        along the tokens ``[B, len(layers) * N, D]``."""
        if layers is None:
            return self.forward_features(video)
        wanted = {(i % len(self.blocks)) for i in ([layers] if isinstance(layers, int) else layers)}
        x, _ = self.patch_embed(video)
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in wanted:
                outputs.append(x)
            if len(outputs) == len(wanted):
                break
        return torch.cat(outputs, dim=1)


class VideoMAEClassifier(VideoMAEEncoder):
    """Fine-tuning model: encoder (``norm`` is Identity with mean pooling), ``fc_norm`` over the mean of the
    tokens, dropout, ``head``. Keys as the official fine-tuning checkpoints (no ``encoder.`` prefix)."""

    def __init__(
        self, num_classes: int = 400, use_mean_pooling: bool = True, fc_drop_rate: float = 0.0,
        init_scale: float = 0.001, **encoder_kwargs,
    ):
        super().__init__(final_norm=not use_mean_pooling, **encoder_kwargs)
        self.num_classes = num_classes
        self.fc_norm = nn.LayerNorm(self.embed_dim, eps=1e-6) if use_mean_pooling else None
        self.head_dropout = nn.Dropout(fc_drop_rate)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.fc_norm(tokens.mean(1)) if self.fc_norm is not None else tokens[:, 0]
        return self.head(self.head_dropout(pooled))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))


class VideoMAEDecoder(nn.Module):
    def __init__(self, embed_dim: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0, init_values: float = 0.0):
        super().__init__()
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace, meta-device safe
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, 0.0, 0.0, rate, init_values) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, out_dim)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, num_predicted: int) -> torch.Tensor:
        x = _run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.head(self.norm(x[:, -num_predicted:]))


class VideoMAEPretrain(nn.Module):
    """Masked autoencoder pretraining: ``forward(video, mask_ratio, seed)`` -> dict(loss, pred, target, masks).

    `video` is what the loader gives: float, normalized with `mean`/`std` (undone for the targets, as the
    official code does), or uint8 with the normalization fused into the embedding."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_frames: int = 16,
        tubelet_size: int = 2,
        encoder_embed_dim: int = 768,
        encoder_depth: int = 12,
        encoder_num_heads: int = 12,
        decoder_embed_dim: int = 384,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        init_values: float = 0.0,
        use_learnable_pos_emb: bool = False,
        mask_ratio: float = 0.9,
        normalize_targets: bool = True,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.encoder = VideoMAEEncoder(
            img_size, patch_size, in_chans, num_frames, tubelet_size, encoder_embed_dim, encoder_depth,
            encoder_num_heads, mlp_ratio, qkv_bias, 0.0, 0.0, drop_path_rate, init_values,
            use_learnable_pos_emb, True, mean, std, grad_checkpointing,
        )
        self.mean, self.std = mean, std
        self.mask_ratio, self.normalize_targets = mask_ratio, normalize_targets
        self.tubelet_size, self.patch_size = tubelet_size, patch_size
        out_dim = in_chans * tubelet_size * patch_size * patch_size
        self.encoder_to_decoder = nn.Linear(encoder_embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder = VideoMAEDecoder(decoder_embed_dim, decoder_depth, decoder_num_heads, out_dim, mlp_ratio,
                                       qkv_bias, drop_path_rate, init_values)
        self.register_buffer(
            "decoder_pos_embed", sinusoid_position_table(self.encoder.patch_embed.num_tokens, decoder_embed_dim),
            persistent=False,
        )
        self.decoder.apply(_init_weights)
        nn.init.xavier_uniform_(self.encoder_to_decoder.weight)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.check_mask_ratio(mask_ratio)

    def check_mask_ratio(self, ratio) -> None:
        """The reconstruction loss needs masked and visible tubes: ``m = int(ratio * h * w)`` of the ``h x w``
        positions are masked, so ``0 < m < h * w`` (0.9 of a 14 x 14 grid: 176). Anything else (ratio 0, which
        masks nothing and leaves the loss without targets) is a ConfigError naming ``train.mask_ratio``."""
        _, height, width = self.encoder.grid
        positions = height * width
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < int(ratio * positions) < positions:
            raise ConfigError(
                f"train.mask_ratio={ratio!r} masks {int(ratio * positions) if isinstance(ratio, (int, float)) else '?'}"
                f" of the {height}x{width} tube positions: MAE pretraining needs at least one masked and one "
                "visible tube",
                hint=f"use a ratio in [{1 / positions:.3g}, 1), e.g. 0.9",
            )

    def forward(
        self, video: torch.Tensor, mask_ratio: float | None = None, seed: int | torch.Tensor | None = None,
        masks: TubeMask | None = None,
    ) -> dict[str, torch.Tensor | TubeMask]:
        if masks is None:
            from internvideo_fast.ops import tube_mask

            ratio = self.mask_ratio if mask_ratio is None else mask_ratio
            self.check_mask_ratio(ratio)
            masks = tube_mask(video.shape[0], *self.encoder.grid, ratio, seed=seed, device=video.device)
        visible = self.encoder.forward_features(video, masks)
        x_vis = self.encoder_to_decoder(visible)
        B = x_vis.shape[0]
        pos = self.decoder_pos_embed.to(x_vis.dtype).expand(B, -1, -1)
        pos_vis = gather_tokens(pos, masks.ids_keep, check_ids=False)
        pos_mask = gather_tokens(pos, masks.ids_masked, check_ids=False)
        n_mask = masks.ids_masked.shape[1]
        x = torch.cat([x_vis + pos_vis, self.mask_token.to(x_vis.dtype) + pos_mask], dim=1)
        pred = self.decoder(x, n_mask)
        undo = (None, None) if video.dtype == torch.uint8 else (self.mean, self.std)
        target = mae_targets(video, masks.ids_masked, self.tubelet_size, self.patch_size,
                             normalize=self.normalize_targets, mean=undo[0], std=undo[1])
        loss = F.mse_loss(pred.float(), target.float())
        return {"loss": loss, "pred": pred, "target": target, "masks": masks}


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------------
# Registered sizes (REFERENCE §1): (embed_dim, depth, heads, mlp_ratio, patch) and the decoder per size
# ----------------------------------------------------------------------------------------------------
_SIZES = {
    "micro": dict(embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0, patch_size=16),  # demos and tests
    "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, patch_size=16),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, patch_size=16),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, patch_size=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0, patch_size=16),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, patch_size=14),
}
_DECODERS = {  # (decoder_embed_dim, decoder_depth, decoder_num_heads)
    "micro": (64, 2, 2), "small": (192, 4, 3), "base": (384, 4, 6), "large": (512, 4, 8),
    "huge": (512, 4, 8), "giant": (512, 4, 8),
}


def _classifier_factory(size: str):
    def factory(**overrides) -> VideoMAEClassifier:
        return VideoMAEClassifier(**(_SIZES[size] | overrides))

    factory.__doc__ = f"VideoMAE ViT-{size} classifier."
    return factory


def _pretrain_factory(size: str):
    def factory(**overrides) -> VideoMAEPretrain:
        sizes = _SIZES[size]
        decoder_dim, decoder_depth, decoder_heads = _DECODERS[size]
        kwargs = dict(
            encoder_embed_dim=sizes["embed_dim"], encoder_depth=sizes["depth"], encoder_num_heads=sizes["num_heads"],
            mlp_ratio=sizes["mlp_ratio"], patch_size=sizes["patch_size"], decoder_embed_dim=decoder_dim,
            decoder_depth=decoder_depth, decoder_num_heads=decoder_heads,
        )
        return VideoMAEPretrain(**(kwargs | overrides))

    factory.__doc__ = f"VideoMAE ViT-{size} masked-autoencoder pretraining model."
    return factory


for _size, _patch in [(s, d["patch_size"]) for s, d in _SIZES.items()]:
    register_model(f"videomae_vit_{_size}_patch{_patch}", _classifier_factory(_size))
    register_model(f"videomae_pretrain_vit_{_size}_patch{_patch}", _pretrain_factory(_size))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "Attention", "Block", "VideoMAEClassifier", "VideoMAEDecoder", "VideoMAEEncoder", "VideoMAEPretrain",
    "drop_path_scale", "num_parameters",
]
