"""The public ``cross_attention``: argument checks and the backend choice."""

from __future__ import annotations

import math

import torch

from internvideo_fast.ops.cross_attention.launch import _cross_attention_fwd
from internvideo_fast.ops.cross_attention.reference import (
    MAX_BATCH_HEADS,
    OP_NAME,
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    cross_attention_ref,
)
from internvideo_fast.ops.framework.backend import available_backends, select_backend
from internvideo_fast.ops.framework.dispatch import PLAIN_TENSORS
from internvideo_fast.ops.framework.seeds import seed_tensor
from internvideo_fast.ops.triton_common.philox import dropout_keep_mask


def _qkv_valid(q, k, v) -> bool:
    """A sufficient condition for _check_qkv to pass, in one pass over each tensor's attributes: the common
    case's host time (the per-argument checks below read each attribute again, ~25 µs on the CI machine)."""
    if not (type(q) in PLAIN_TENSORS and type(k) in PLAIN_TENSORS and type(v) in PLAIN_TENSORS):
        return False
    q_shape, k_shape, v_shape = q.shape, k.shape, v.shape
    if not (len(q_shape) == len(k_shape) == len(v_shape) == 4):
        return False
    B, Sq, H, D = q_shape
    dtype, device = q.dtype, q.device
    return (
        dtype in SUPPORTED_DTYPES and k.dtype == dtype and v.dtype == dtype
        and k.device == device and v.device == device
        and Sq >= 1 and k_shape[1] >= 1 and 1 <= B and 1 <= H and B * H <= MAX_BATCH_HEADS
        and D in SUPPORTED_HEAD_DIMS
        and k_shape[0] == B and k_shape[2] == H and k_shape[3] == D and v_shape == k_shape
        and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
    )


def _check_qkv(q, k, v) -> None:
    if _qkv_valid(q, k, v):
        return
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, S, H, D], got shape {tuple(tensor.shape)}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
        if tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}")
        if tensor.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {tensor.dtype}")
        if tensor.shape[1] < 1:
            raise ValueError(f"{name} must have at least one token (dim 1), got shape {tuple(tensor.shape)}")
        if tensor.stride(-1) != 1:
            raise ValueError(
                f"{name} must have a contiguous last dim (stride 1), got strides {tensor.stride()}"
            )
    B, _, H, D = q.shape
    if B < 1 or H < 1:
        raise ValueError(f"q must have at least one sample and one head, got shape {tuple(q.shape)}")
    if B * H > MAX_BATCH_HEADS:
        raise ValueError(f"q batch * heads must be at most {MAX_BATCH_HEADS} (a grid dim), got {B} * {H}")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q head dim (dim 3) must be one of {SUPPORTED_HEAD_DIMS}, got {D}")
    for name, tensor in (("k", k), ("v", v)):
        for dim, what in ((0, "batch"), (2, "heads"), (3, "head dim")):
            if tensor.shape[dim] != q.shape[dim]:
                raise ValueError(
                    f"{name} {what} (dim {dim}) must equal q's {q.shape[dim]}, "
                    f"got shape {tuple(tensor.shape)}"
                )
    if v.shape[1] != k.shape[1]:
        raise ValueError(f"v must have k's length {k.shape[1]}, got shape {tuple(v.shape)}")


def _check_lengths(kv_lengths, q: torch.Tensor, Sk: int) -> None:
    if kv_lengths is None:
        return
    if not isinstance(kv_lengths, torch.Tensor):
        raise ValueError(f"kv_lengths must be an int32 tensor or None, got {type(kv_lengths).__name__}")
    if kv_lengths.dtype != torch.int32:
        raise ValueError(f"kv_lengths must be int32, got {kv_lengths.dtype}")
    if tuple(kv_lengths.shape) != (q.shape[0],):
        raise ValueError(f"kv_lengths must have shape ({q.shape[0]},), got {tuple(kv_lengths.shape)}")
    if kv_lengths.device != q.device:
        raise ValueError(f"kv_lengths is on {kv_lengths.device} but q is on {q.device}")
    # A host sync, so compiled graphs and CUDA graph captures skip it (the kernels clamp lengths to Sk).
    capturing = kv_lengths.is_cuda and torch.cuda.is_current_stream_capturing()
    if not torch.compiler.is_compiling() and not capturing:
        low, high = torch.stack(torch.aminmax(kv_lengths)).tolist()  # one host sync for both
        if low < 1 or high > Sk:
            raise ValueError(
                f"kv_lengths must be in [1, {Sk}] (a row needs a key), got values in [{low}, {high}]"
            )


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float | None = None,
    kv_lengths: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    deterministic: bool = False,
    return_lse: bool = False,
    seed: int | torch.Tensor | None = None,
):
    """Non-causal attention of ``q`` over ``k``/``v`` (see the module docstring), flash-attn's layout.

    Args:
        q: ``[B, Sq, H, D]`` float32 / float16 / bfloat16, any strides with a contiguous last dim.
        k, v: ``[B, Sk, H, D]``, q's dtype and device; ``Sk`` may differ from ``Sq``.
        softmax_scale: the score scale; None is ``D ** -0.5``.
        kv_lengths: ``[B]`` int32 in ``[1, Sk]``: keys at or past ``kv_lengths[b]`` are masked for sample b.
        dropout_p: dropout on the attention probabilities, in [0, 1).
        deterministic: True runs the default tiles and the backward without atomics, never tuned: bitwise
            identical outputs and gradients in every run and process. False (flash-attn's default) lets a
            GPU tune tiles and pick the atomic-dQ backward, whose dq may differ in the last bits run to run.
        return_lse: also return the log-sum-exp ``[B, H, Sq]`` fp32 (not differentiable).
        seed: the dropout seed (int or one-element int64 tensor on q's device); None draws one.

    Returns:
        ``out [B, Sq, H, D]`` (contiguous, q's dtype), or ``(out, lse)`` when `return_lse`.
    """
    _check_qkv(q, k, v)
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    if softmax_scale is None:
        softmax_scale = D ** -0.5
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) or not (
        0.0 < softmax_scale < math.inf
    ):
        raise ValueError(f"softmax_scale must be a positive finite float or None, got {softmax_scale!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if not isinstance(deterministic, bool):
        raise ValueError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    _check_lengths(kv_lengths, q, Sk)
    if kv_lengths is not None:
        kv_lengths = kv_lengths.contiguous()
    dropout_p = float(dropout_p)
    seed = seed_tensor(seed, q.device) if dropout_p > 0.0 else None

    backend = select_backend(OP_NAME, q.device, available_backends(OP_NAME, q.device))
    if backend == "reference":
        keep = None if seed is None else dropout_keep_mask(seed, (B, H, Sq, Sk), dropout_p)
        out, lse = cross_attention_ref(
            q.float(), k.float(), v.float(), float(softmax_scale), kv_lengths, keep, dropout_p,
            upcast=False, return_lse=True,
        )
        out = out.to(q.dtype)
    else:
        out, lse = _cross_attention_fwd(
            q, k, v, kv_lengths, seed, float(softmax_scale), dropout_p, deterministic
        )
    return (out, lse) if return_lse else out
