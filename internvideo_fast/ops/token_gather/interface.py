"""The public ``gather_tokens`` / ``scatter_tokens``: argument checks and the backend choice."""

from __future__ import annotations

import torch

import internvideo_fast.ops.token_gather.registration  # noqa: F401  (the C++ ops' fakes, autograd)
from internvideo_fast.ops.framework.backend import available_backends, select_backend
from internvideo_fast.ops.token_gather.reference import OP_NAME, gather_tokens_ref, scatter_tokens_ref


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
    """``out[b, i] = x[b, ids[b, i]]`` for x ``[B, N, D]`` and int64 ids ``[B, n]`` (see the package
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
    """``out[b, ids[b, i]] = x[b, i]`` into ``[B, num_tokens, D]`` zeros (see the package docstring);
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
