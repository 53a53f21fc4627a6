"""Token gather and scatter: keep the visible tokens of a masked video, and put tokens back in place.

    gather_tokens(x [B, N, D], ids [B, n])               -> out [B, n, D],  out[b, i] = x[b, ids[b, i]]
    scatter_tokens(x [B, n, D], ids [B, n], num_tokens)  -> out [B, N, D],  out[b, ids[b, i]] = x[b, i],
                                                            rows that no id names are zero

With `ids_keep` from :func:`tube_mask`, ``gather_tokens(tokens, ids_keep)`` is the official
``tokens[~mask].reshape(B, -1, D)`` without its host sync (the boolean index needs the count on the host).
Ids must not repeat within a sample (tube masks never do), so each op is the other's backward and both
backwards are deterministic copies, never atomic adds.

Range checks: an id outside ``[0, N)`` is a ``ValueError`` on CPU (always) and on CUDA when
``check_ids=True`` (a host sync, so off by default there). Unchecked on CUDA, the kernel skips such a row
rather than touching memory it does not own.
"""

from __future__ import annotations

import torch

from internvideo_fast._extension import HAS_C
from internvideo_fast.ops.backend import available_backends, select_backend

OP_NAME = "token_gather"


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------
def gather_tokens_ref(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))


def scatter_tokens_ref(x: torch.Tensor, ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    out = x.new_zeros(x.shape[0], num_tokens, x.shape[-1])
    return out.scatter(1, ids[..., None].expand(-1, -1, x.shape[-1]), x)


# ----------------------------------------------------------------------------------------------------
# torch.library registration of the C++/CUDA ops: fake implementations and autograd
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------
def _check_shapes(name: str, x: torch.Tensor, ids: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{name}: x must be a [B, N, D] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.int64:
        raise ValueError(f"{name}: ids must be a [B, n] int64 tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: ids has batch {ids.shape[0]} but x has {x.shape[0]}")
    if ids.device != x.device:
        raise ValueError(f"{name}: ids is on {ids.device} but x is on {x.device}")


def _check_id_range(name: str, ids: torch.Tensor, num_tokens: int, check_ids: bool | None) -> None:
    if check_ids is None:
        check_ids = ids.device.type == "cpu"
    if check_ids and ids.numel() and not torch.compiler.is_compiling():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_tokens:
            raise ValueError(f"{name}: ids must be in [0, {num_tokens}), found values in [{low}, {high}]")


def gather_tokens(x: torch.Tensor, ids: torch.Tensor, *, check_ids: bool | None = None) -> torch.Tensor:
    """``out[b, i] = x[b, ids[b, i]]`` for x ``[B, N, D]`` and int64 ids ``[B, n]`` (see the module
    docstring); differentiable in x."""
    _check_shapes("gather_tokens", x, ids)
    _check_id_range("gather_tokens", ids, x.shape[1], check_ids)
    backend = select_backend(OP_NAME, x.device, available_backends("gather_tokens", x.device, has_triton=False))
    if backend == "reference":
        return gather_tokens_ref(x, ids)
    return torch.ops.internvideo_fast.gather_tokens(x, ids)


def scatter_tokens(
    x: torch.Tensor, ids: torch.Tensor, num_tokens: int, *, check_ids: bool | None = None
) -> torch.Tensor:
    """``out[b, ids[b, i]] = x[b, i]`` into ``[B, num_tokens, D]`` zeros (see the module docstring);
    differentiable in x. Ids must not repeat within a sample."""
    _check_shapes("scatter_tokens", x, ids)
    if ids.shape[1] != x.shape[1]:
        raise ValueError(f"scatter_tokens: ids has {ids.shape[1]} tokens per sample but x has {x.shape[1]}")
    if num_tokens < ids.shape[1]:
        raise ValueError(f"scatter_tokens: num_tokens must be >= {ids.shape[1]}, got {num_tokens}")
    _check_id_range("scatter_tokens", ids, num_tokens, check_ids)
    backend = select_backend(OP_NAME, x.device, available_backends("scatter_tokens", x.device, has_triton=False))
    if backend == "reference":
        return scatter_tokens_ref(x, ids, num_tokens)
    return torch.ops.internvideo_fast.scatter_tokens(x, ids, num_tokens)
