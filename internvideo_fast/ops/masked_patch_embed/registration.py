"""Fake implementations and autograd of the C++/CUDA ``masked_tubelet_patches`` op."""

from __future__ import annotations

import torch

from internvideo_fast._extension import HAS_C


def _patches_dtype(video: torch.Tensor) -> torch.dtype:
    return torch.float32 if video.dtype == torch.uint8 else video.dtype


if HAS_C:

    @torch.library.register_fake("internvideo_fast::masked_tubelet_patches")
    def _patches_fake(video, ids, tubelet, patch, mean=None, std=None):
        B, C = video.shape[:2]
        return video.new_empty(B, ids.shape[1], C * tubelet * patch * patch, dtype=_patches_dtype(video))

    @torch.library.register_fake("internvideo_fast::masked_tubelet_patches_backward")
    def _patches_backward_fake(grad, ids, video_shape, tubelet, patch, mean=None, std=None):
        return grad.new_empty(video_shape)

    def _setup_patches(ctx, inputs, output):
        video, ids, tubelet, patch, mean, std = inputs
        ctx.save_for_backward(ids)
        ctx.arguments = (list(video.shape), tubelet, patch, mean, std)

    def _backward_patches(ctx, grad):
        (ids,) = ctx.saved_tensors
        video_shape, tubelet, patch, mean, std = ctx.arguments
        grad_video = torch.ops.internvideo_fast.masked_tubelet_patches_backward(
            grad.contiguous(), ids, video_shape, tubelet, patch, mean, std
        )
        return grad_video, None, None, None, None, None

    torch.library.register_autograd(
        "internvideo_fast::masked_tubelet_patches", _backward_patches, setup_context=_setup_patches
    )
