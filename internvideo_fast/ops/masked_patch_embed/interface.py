"""The public ``masked_tubelet_patches`` / ``masked_patch_embed``: argument checks and the backend choice
(see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

import internvideo_fast.ops.masked_patch_embed.registration  # noqa: F401  (the C++ op's fake, autograd)
from internvideo_fast.ops.framework.backend import available_backends, select_backend
from internvideo_fast.ops.masked_patch_embed.reference import (
    OP_NAME,
    SUPPORTED_VIDEO_DTYPES,
    masked_tubelet_patches_ref,
)
from internvideo_fast.ops.token_gather import gather_tokens


def _check_video(video, ids, tubelet: int, patch: int, mean, std, ids_name: str) -> None:
    if not isinstance(video, torch.Tensor) or video.dim() != 5:
        raise ValueError(f"video must be a [B, C, T, H, W] tensor, got {getattr(video, 'shape', type(video).__name__)}")
    if video.dtype not in SUPPORTED_VIDEO_DTYPES:
        raise ValueError(f"video must be float64/32/16, bfloat16 or uint8, got {video.dtype}")
    for name, value in (("tubelet", tubelet), ("patch", patch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    B, C, T, H, W = video.shape
    if T % tubelet:
        raise ValueError(f"video frames ({T}) must be divisible by tubelet ({tubelet})")
    if H % patch or W % patch:
        raise ValueError(f"video height and width ({H}x{W}) must be divisible by patch ({patch})")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.int64 or ids.shape[0] != B:
        raise ValueError(f"{ids_name} must be a [B, n] int64 tensor with B = {B}")
    if ids.device != video.device:
        raise ValueError(f"{ids_name} is on {ids.device} but video is on {video.device}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if mean is not None:
        if len(mean) != C or len(std) != C:
            raise ValueError(f"mean and std need one value per channel ({C}), got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be > 0, got {list(std)}")
    if video.device.type == "cpu" and ids.numel() and not torch.compiler.is_compiling():
        num_tokens = (T // tubelet) * (H // patch) * (W // patch)
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_tokens:
            raise ValueError(f"{ids_name} must be in [0, {num_tokens}), found values in [{low}, {high}]")


def _as_list(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def masked_tubelet_patches(
    video: torch.Tensor,
    ids: torch.Tensor,
    tubelet: int,
    patch: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """The normalized pixels of the tubes that `ids` names: ``[B, n, C*tubelet*patch*patch]`` in Conv3d
    weight order (see the package docstring). float32 for uint8 video, else video's dtype."""
    return _patches(video, ids, tubelet, patch, mean, std, "ids")


def _patches(video, ids, tubelet, patch, mean, std, ids_name: str) -> torch.Tensor:
    mean, std = _as_list(mean), _as_list(std)
    _check_video(video, ids, tubelet, patch, mean, std, ids_name)
    backend = select_backend(OP_NAME, video.device, available_backends("masked_tubelet_patches", video.device, False))
    if backend == "reference":
        return masked_tubelet_patches_ref(video, ids, tubelet, patch, mean, std)
    return torch.ops.internvideo_fast.masked_tubelet_patches(video, ids, tubelet, patch, mean, std)


def masked_patch_embed(
    video: torch.Tensor,
    ids_keep: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pos_embed: torch.Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Embeddings of the visible tubes: ``[B, n, D]``, equal to Conv3d + position table + gather.

    Args:
        video: ``[B, C, T, H, W]``, float (already normalized, or normalized here by mean/std) or uint8.
        ids_keep: ``[B, n]`` int64 visible token ids (from :func:`tube_mask`).
        weight: the Conv3d weight ``[D, C, tubelet, patch, patch]`` (official checkpoints load unchanged);
            its dtype is the computation's dtype.
        bias: ``[D]`` or None.
        pos_embed: the position table ``[N, D]`` / ``[1, N, D]`` (shared) or ``[B, N, D]`` (per sample).
        mean, std: per-channel normalization fused into the pixel gather (see the package docstring).
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
        raise ValueError(f"weight must be a Conv3d weight [D, C, tubelet, patch, patch], got {getattr(weight, 'shape', None)}")
    D, C, tubelet, patch, patch_w = weight.shape
    if patch != patch_w:
        raise ValueError(f"weight must have square patches, got {patch}x{patch_w}")
    if isinstance(video, torch.Tensor) and video.dim() == 5 and video.shape[1] != C:
        raise ValueError(f"video has {video.shape[1]} channels but weight expects {C}")
    if weight.device != video.device:
        raise ValueError(f"weight is on {weight.device} but video is on {video.device}")
    if bias is not None and (bias.shape != (D,) or bias.device != video.device):
        raise ValueError(f"bias must be a [{D}] tensor on {video.device}, got {tuple(bias.shape)} on {bias.device}")
    patches = _patches(video, ids_keep, tubelet, patch, mean, std, "ids_keep").to(weight.dtype)
    B, n, K = patches.shape
    start = None  # bias + pos_embed[ids], the GEMM's accumulator
    if pos_embed is not None:
        num_tokens = (video.shape[2] // tubelet) * (video.shape[3] // patch) * (video.shape[4] // patch)
        if pos_embed.shape[-2:] != (num_tokens, D) or pos_embed.dim() not in (2, 3):
            raise ValueError(f"pos_embed must be [N, D], [1, N, D] or [B, N, D] with N={num_tokens}, D={D}, got {tuple(pos_embed.shape)}")
        if pos_embed.device != video.device:
            raise ValueError(f"pos_embed is on {pos_embed.device} but video is on {video.device}")
        pos_embed = pos_embed.to(weight.dtype)
        if pos_embed.dim() == 3 and pos_embed.shape[0] == B and B > 1:
            start = gather_tokens(pos_embed, ids_keep, check_ids=False)
        else:
            start = F.embedding(ids_keep, pos_embed.reshape(num_tokens, D))
        if bias is not None:
            start = start + bias
    elif bias is not None:
        start = bias.expand(B * n, D)
    flat = patches.reshape(B * n, K)
    weight_2d = weight.reshape(D, K)
    if start is None:
        return (flat @ weight_2d.t()).view(B, n, D)
    return torch.addmm(start.reshape(B * n, D), flat, weight_2d.t()).view(B, n, D)
