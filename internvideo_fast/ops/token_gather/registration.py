"""Fake implementations and autograd of the C++/CUDA ``gather_tokens`` / ``scatter_tokens`` ops: each
is the other's backward."""

from __future__ import annotations

import torch

from internvideo_fast._extension import HAS_C

if HAS_C:

    @torch.library.register_fake("internvideo_fast::gather_tokens")
    def _gather_tokens_fake(x, ids):
        return x.new_empty(x.shape[0], ids.shape[1], x.shape[2])

    @torch.library.register_fake("internvideo_fast::scatter_tokens")
    def _scatter_tokens_fake(x, ids, num_tokens):
        return x.new_empty(x.shape[0], num_tokens, x.shape[2])

    def _setup_gather(ctx, inputs, output):
        x, ids = inputs
        ctx.save_for_backward(ids)
        ctx.num_tokens = x.shape[1]

    def _backward_gather(ctx, grad):
        (ids,) = ctx.saved_tensors
        return torch.ops.internvideo_fast.scatter_tokens(grad.contiguous(), ids, ctx.num_tokens), None

    def _setup_scatter(ctx, inputs, output):
        _, ids, _ = inputs
        ctx.save_for_backward(ids)

    def _backward_scatter(ctx, grad):
        (ids,) = ctx.saved_tensors
        return torch.ops.internvideo_fast.gather_tokens(grad.contiguous(), ids), None, None

    torch.library.register_autograd("internvideo_fast::gather_tokens", _backward_gather, setup_context=_setup_gather)
    torch.library.register_autograd(
        "internvideo_fast::scatter_tokens", _backward_scatter, setup_context=_setup_scatter
    )
