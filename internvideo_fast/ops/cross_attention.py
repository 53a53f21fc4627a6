"""Flash cross-attention (non-causal, different query and key lengths), forward and backward, in Triton.

For ``q [B, Sq, H, D]``, ``k, v [B, Sk, H, D]``, a scale ``c`` (default ``D ** -0.5``), per-sample key
lengths ``L[b]`` (``Sk`` when ``kv_lengths`` is None), a dropout probability ``p`` and a keep mask ``Z``
(1 where kept, over ``[B, H, Sq, Sk]``):

    S[b,h,i,j] = c * q[b,i,h,:] . k[b,j,h,:]                       for j < L[b]  (keys j >= L[b]: -inf)
    lse[b,h,i] = log sum_j exp(S[b,h,i,j]),     P = exp(S - lse)
    out[b,i,h] = sum_j P[b,h,i,j] * Z[b,h,i,j] / (1 - p) * v[b,j,h,:]

Backward (FlashAttention-2, recomputing P from the stored lse; ``Pd = P * Z / (1 - p)``):

    delta[b,h,i] = sum_d dout[b,i,h,d] * out[b,i,h,d]
    dv = Pd^T dout,    dP = (dout v^T) * Z / (1 - p),    dS = P * (dP - delta),
    dq = c * dS k,     dk = c * dS^T q

Kernels (every value fp32 inside; q/k/v fp32, fp16 or bf16; fp32 matmuls run in IEEE fp32, no tf32):

- ``_cross_attention_fwd_kernel``: one program per (query block, b * h, key split); online softmax in the
  exp2 domain over the split's key blocks. With one split it writes ``out`` (q's dtype) and ``lse``
  ``[B, H, Sq]`` fp32 directly. For a few queries against many keys (``Sq <= 16``, the UniBlock query
  and decoding) the keys are split over several programs (flash-decoding), which write fp32 partial
  ``(out, lse)`` per split, and ``_cross_attention_combine_kernel`` merges them with their lse weights.
- ``_cross_attention_fwd_tma_kernel``: the same forward (grid, outputs, split keys, dropout keying) for
  16-bit inputs on sm_90+, with q / k / v blocks loaded by the TMA unit from 4-D descriptors over
  ``[B, S, H, D]`` (zero-filled past S and D, no load masks); the key loop runs the full key blocks
  unmasked, then at most one masked tail block (scores -inf and v rows zeroed past the split's end). The
  scale is folded into the exponent and ``P V`` accumulates in place, so it rounds differently from the
  pointer kernel in the last bits. A GPU tuning candidate only (after the pointer kernel's tiles), where
  ``_tma_layout_ok`` holds.
- ``_cross_attention_bwd_preprocess_kernel``: ``delta``.
- ``_cross_attention_bwd_dkdv_kernel``: one program per (key block, b * h), looping over all query blocks.
  With ``ATOMIC_DQ`` it also adds each tile's ``c * dS k`` into an fp32 dq with ``tl.atomic_add``.
- ``_cross_attention_bwd_dq_kernel``: one program per (query block, b * h), looping over the key blocks.
- ``_cross_attention_bwd_dkdv_tma_kernel`` and ``_cross_attention_bwd_dq_tma_kernel``: the two backward
  kernels (no atomic dq) for 16-bit inputs on sm_90+ with TMA loads, as the TMA forward: the operands a
  loop brings (q and dout for dK/dV, k and v for dQ) come to shared memory by TMA, where wgmma reads them;
  keys at or past the length are zeroed where they are loaded (once per dK/dV program; in dQ's masked tail
  block), so padded rows may hold anything, NaN included.

Backward plans: *split* runs the dK/dV kernel, then the dQ kernel (no atomics; 7 matmuls per tile pair,
since the dQ kernel recomputes ``q k^T`` and ``dout v^T``); *atomic* runs the dK/dV kernel with
``ATOMIC_DQ`` and converts the fp32 dq to q's dtype (5 matmuls, FlashAttention-2's Triton backward), whose
dq rounding depends on the order the atomics land in; *split_tma* is the split plan on the TMA kernels (a
GPU tuning candidate only, where ``_tma_layout_ok`` holds for q, k, v and dout). ``deterministic=True``
runs the split plan at the default tiles, never tuned, so forward and gradients are bitwise identical run
to run and across processes; ``deterministic=False`` (the default, as in flash-attn) lets the GPU tune
between the plans and tiles below. Keys at or past ``kv_lengths[b]`` get probability 0 and zero
gradients; every row has at least one key (``kv_lengths >= 1``), so no row divides by zero.

Dropout: the attention probability at flat index ``((b * H + h) * Sq + i) * Sk + j`` of ``[B, H, Sq, Sk]``
is kept by ``keep_element(seed, index, p)``, i.e. ``tl.rand(seed, index) >= p`` (Philox4x32-10, so
:func:`~internvideo_fast.ops.dropout_add_layer_norm.dropout_keep_mask` reproduces it bitwise with shape
``(B, H, Sq, Sk)``). The backward kernels regenerate the mask from the seed; nothing is stored.

Launch configurations: each (kernel, 16-bit or fp32 inputs, BLOCK_D, 16-aligned or not) has a default tile
(BLOCK_M, BLOCK_N, warps, stages); fp32 inputs use much smaller tiles because an IEEE fp32 ``tl.dot`` runs
on FMA units. With ``deterministic=False`` on a CUDA device, a ``LaunchTuner`` (``ops/autotuning.py``) times
the default and a few alternatives once per key (dtype, head dim, aligned, kv_lengths / dropout on, and
the power-of-two buckets of Sq, Sk and B * H) and keeps the fastest: forward tiles (16-bit; the pointer
kernel's, then the TMA kernel's, labelled ``tma:M..``), and whole backward plans (split, atomic or
split_tma, with their tiles). The interpreter, CPU tensors, ``IVF_AUTOTUNE=0``, CUDA-graph capture and
``deterministic=True`` launch the default. Every candidate is
registered with the ahead-of-time sm_90a check (no spills, fits shared memory, wgmma for 16-bit).

Layouts: any strides with a contiguous last dim (e.g. ``[B, H, S, D]`` tensors passed as
``.transpose(1, 2)`` views) go to the kernels as strides, without copies. ``out`` and the gradients are
contiguous ``[B, S, H, D]``. Head dims 32, 40, 64, 80, 96 and 128; the kernels pad D to the next power of
two (``BLOCK_D``) with masks.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from internvideo_fast.ops.autotuning import launch_tuner, length_bucket
from internvideo_fast.ops.backend import available_backends, select_backend, triton_interpreter_on
from internvideo_fast.ops.dispatch import PLAIN_TENSORS, eager_op
from internvideo_fast.ops.dropout_add_layer_norm import dropout_keep_mask, keep_element
from internvideo_fast.ops.kernel_registry import KernelConfig, TritonKernelSpec, register_triton_kernel
from internvideo_fast.ops.launch_math import cdiv, device_capability, next_power_of_2, sm_count
from internvideo_fast.ops.outputs import new_output
from internvideo_fast.ops.seeds import seed_tensor

OP_NAME = "cross_attention"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (32, 40, 64, 80, 96, 128)
# Queries at most this many take the split-key (flash-decoding) forward.
SPLIT_MAX_SQ = 16
# b * h runs along the second grid dim (query blocks along the first, so that neighbouring programs share
# k / v in L2), which CUDA caps at 65535.
MAX_BATCH_HEADS = 65535
_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _cross_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, lengths_ptr, seed_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_osplit, stride_ob, stride_os, stride_oh,
    stride_lsplit, stride_lb, stride_lh,
    H, Sq, Sk, D, keys_per_split, softmax_scale, dropout_p, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_LENGTHS: tl.constexpr, HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
):
    # One program per (query block, b * h, key split).
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols0 = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    in_rows = rows < Sq
    in_dims = dims < D
    length = Sk
    if HAS_LENGTHS:
        length = tl.minimum(tl.load(lengths_ptr + b), Sk)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, length)

    # Loads: the query block stays in registers.
    q = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + dims[None, :],
        mask=in_rows[:, None] & in_dims[None, :], other=0.0,
    )
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    qk_scale = softmax_scale * 1.4426950408889634  # exp2 domain
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
        drop_base = ((b * H + h) * Sq + rows.to(tl.int64)) * Sk

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + cols0
        in_cols = cols < end
        kT = tl.load(
            k_base + cols[None, :] * stride_ks + dims[:, None],
            mask=in_cols[None, :] & in_dims[:, None], other=0.0,
        )
        v = tl.load(
            v_base + cols[:, None] * stride_vs + dims[None, :],
            mask=in_cols[:, None] & in_dims[None, :], other=0.0,
        )
        # Math: online softmax (the block's first column is always a valid key, so m_new is finite).
        s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale
        s = tl.where(in_cols[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if HAS_DROPOUT:
            keep = keep_element(seed, drop_base[:, None] + cols[None, :], dropout_p)
            p = tl.where(keep, p * keep_scale, 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # Stores: an empty split (all its keys masked) writes out 0 and lse -inf, which the combine weighs 0.
    has_keys = l_i > 0.0
    safe_l = tl.where(has_keys, l_i, 1.0)
    out = acc / safe_l[:, None]
    lse = tl.where(has_keys, (m_i + tl.log2(safe_l)) / 1.4426950408889634, float("-inf"))
    tl.store(
        out_ptr + split * stride_osplit + b * stride_ob + h * stride_oh + rows[:, None] * stride_os
        + dims[None, :],
        out.to(out_ptr.dtype.element_ty), mask=in_rows[:, None] & in_dims[None, :],
    )
    tl.store(lse_ptr + split * stride_lsplit + b * stride_lb + h * stride_lh + rows, lse, mask=in_rows)


@triton.jit
def _attend_key_block(
    q, k, v, m_i, l_i, acc, cols, end, qk_scale, seed, drop_base, dropout_p, keep_scale,
    MASKED: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    # One key block of the TMA forward's online softmax (exp2 domain, 16-bit operands, fp32 state). The
    # scale is folded into the exponent (one FMA per score) and P V accumulates into the rescaled acc
    # (wgmma's in-place accumulator). MASKED (the tail block): keys at or past `end` get score -inf and
    # their v rows zero, so NaN / inf in padded rows cannot reach acc (0 * inf = NaN).
    s = tl.dot(q, tl.trans(k))
    if MASKED:
        in_cols = cols < end
        s = tl.where(in_cols[None, :], s, float("-inf"))
        v = tl.where(in_cols[:, None], v, 0.0)
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)  # finite: the block's first key is valid
    p = tl.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if HAS_DROPOUT:
        keep = keep_element(seed, drop_base[:, None] + cols[None, :], dropout_p)
        p = tl.where(keep, p * keep_scale, 0.0)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return m_new, l_i, acc


@triton.jit
def _cross_attention_fwd_tma_kernel(
    q_desc, k_desc, v_desc, lengths_ptr, seed_ptr, out_ptr, lse_ptr,
    stride_osplit, stride_ob, stride_os, stride_oh,
    stride_lsplit, stride_lb, stride_lh,
    H, Sq, Sk, D, keys_per_split, softmax_scale, dropout_p, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_LENGTHS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    # _cross_attention_fwd_kernel (same grid, outputs and dropout keying) for 16-bit inputs, with q / k / v
    # blocks loaded by the Hopper TMA unit from 4-D descriptors over [B, S, H, D] (blocks
    # [1, rows, 1, BLOCK_D]; the unit zero-fills past S and D, so no load masks), and the key loop split
    # into full blocks (no masking at all) and at most one masked tail block.
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    b = bh // H  # int32 descriptor coordinates; 64-bit offsets for the stores below
    h = bh % H
    row0 = pid_m * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    length = Sk
    if HAS_LENGTHS:
        length = tl.minimum(tl.load(lengths_ptr + b), Sk)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, length)
    full_end = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N
    qk_scale = softmax_scale * 1.4426950408889634  # exp2 domain
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
        drop_base = ((b.to(tl.int64) * H + h) * Sq + rows) * Sk
    else:
        seed = 0
        drop_base = rows

    # Loads and math.
    q = q_desc.load([b, row0, h, 0]).reshape(BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(start, full_end, BLOCK_N):
        k = k_desc.load([b, start_n, h, 0]).reshape(BLOCK_N, BLOCK_D)
        v = v_desc.load([b, start_n, h, 0]).reshape(BLOCK_N, BLOCK_D)
        m_i, l_i, acc = _attend_key_block(
            q, k, v, m_i, l_i, acc, start_n + tl.arange(0, BLOCK_N), end, qk_scale, seed, drop_base,
            dropout_p, keep_scale, False, HAS_DROPOUT,
        )
    if full_end < end:
        k = k_desc.load([b, full_end, h, 0]).reshape(BLOCK_N, BLOCK_D)
        v = v_desc.load([b, full_end, h, 0]).reshape(BLOCK_N, BLOCK_D)
        m_i, l_i, acc = _attend_key_block(
            q, k, v, m_i, l_i, acc, full_end + tl.arange(0, BLOCK_N), end, qk_scale, seed, drop_base,
            dropout_p, keep_scale, True, HAS_DROPOUT,
        )

    # Stores, as _cross_attention_fwd_kernel's (an empty split writes out 0 and lse -inf).
    has_keys = l_i > 0.0
    safe_l = tl.where(has_keys, l_i, 1.0)
    out = acc / safe_l[:, None]
    lse = tl.where(has_keys, (m_i + tl.log2(safe_l)) / 1.4426950408889634, float("-inf"))
    b = b.to(tl.int64)
    h = h.to(tl.int64)
    in_rows = rows < Sq
    tl.store(
        out_ptr + split * stride_osplit + b * stride_ob + h * stride_oh + rows[:, None] * stride_os
        + dims[None, :],
        out.to(out_ptr.dtype.element_ty), mask=in_rows[:, None] & (dims < D)[None, :],
    )
    tl.store(lse_ptr + split * stride_lsplit + b * stride_lb + h * stride_lh + rows, lse, mask=in_rows)


@triton.jit
def _cross_attention_combine_kernel(
    partial_out_ptr, partial_lse_ptr, out_ptr, lse_ptr,
    H, Sq, D, splits,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per (query block, b * h): merge the splits' (out, lse) with weights exp(lse_s - lse).
    # partial_out [splits, B, Sq, H, D] and partial_lse [splits, B, H, Sq] fp32; out [B, Sq, H, D];
    # lse [B, H, Sq].
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    B = tl.num_programs(1) // H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    in_rows = rows < Sq
    mask = in_rows[:, None] & (dims < D)[None, :]
    out_offset = ((b * Sq + rows[:, None]) * H + h) * D + dims[None, :]
    lse_offset = bh * Sq + rows
    split_out = B.to(tl.int64) * Sq * H * D
    split_lse = B.to(tl.int64) * H * Sq

    lse_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    denominator = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for split in range(0, splits):
        lse_s = tl.load(partial_lse_ptr + split * split_lse + lse_offset, mask=in_rows, other=float("-inf"))
        out_s = tl.load(partial_out_ptr + split * split_out + out_offset, mask=mask, other=0.0)
        new_max = tl.maximum(lse_max, lse_s)
        finite = new_max > float("-inf")
        safe_max = tl.where(finite, new_max, 0.0)
        old_weight = tl.where(finite, tl.exp(lse_max - safe_max), 0.0)
        weight = tl.where(finite, tl.exp(lse_s - safe_max), 0.0)
        acc = acc * old_weight[:, None] + out_s * weight[:, None]
        denominator = denominator * old_weight + weight
        lse_max = new_max

    safe_denominator = tl.where(denominator > 0.0, denominator, 1.0)
    tl.store(out_ptr + out_offset, (acc / safe_denominator[:, None]).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(lse_ptr + lse_offset, lse_max + tl.log(safe_denominator), mask=in_rows)


@triton.jit
def _cross_attention_bwd_preprocess_kernel(
    out_ptr, dout_ptr, delta_ptr,
    stride_dob, stride_dos, stride_doh,
    H, Sq, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # delta [B, H, Sq] = rowsum(dout * out); out is contiguous [B, Sq, H, D].
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    in_rows = rows < Sq
    mask = in_rows[:, None] & (dims < D)[None, :]
    out = tl.load(out_ptr + ((b * Sq + rows[:, None]) * H + h) * D + dims[None, :], mask=mask, other=0.0)
    dout = tl.load(
        dout_ptr + b * stride_dob + h * stride_doh + rows[:, None] * stride_dos + dims[None, :],
        mask=mask, other=0.0,
    )
    delta = tl.sum(out.to(tl.float32) * dout.to(tl.float32), axis=1)
    tl.store(delta_ptr + bh * Sq + rows, delta, mask=in_rows)


@triton.jit
def _dkdv_query_block(
    k, v, q, dout, lse, delta, dk, dv, rows, cols, in_rows, in_cols, row_base, Sk, qk_scale, seed, dropout_p,
    keep_scale, HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
):
    # One query block's share of a key block's dK / dV, from the transposed scores S^T [BLOCK_N, BLOCK_M]
    # (so no accumulator needs a transpose): returns (dk, dv, dS^T). The math of both dK/dV kernels.
    sT = tl.dot(k, tl.trans(q), input_precision=PRECISION)
    pT = tl.exp2(sT * qk_scale - (lse * 1.4426950408889634)[None, :])
    pT = tl.where(in_cols[:, None] & in_rows[None, :], pT, 0.0)
    dpT = tl.dot(v, tl.trans(dout), input_precision=PRECISION)
    if HAS_DROPOUT:
        keep = keep_element(seed, (row_base + rows.to(tl.int64))[None, :] * Sk + cols[:, None], dropout_p)
        pT_dropped = tl.where(keep, pT * keep_scale, 0.0)
        dpT = tl.where(keep, dpT * keep_scale, 0.0)
    else:
        pT_dropped = pT
    dv += tl.dot(pT_dropped.to(dout.dtype), dout, input_precision=PRECISION)
    dsT = pT * (dpT - delta[None, :])
    dk += tl.dot(dsT.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv, dsT


@triton.jit
def _cross_attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, lengths_ptr, seed_ptr, dk_ptr, dv_ptr, dq_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    H, Sq, Sk, D, softmax_scale, dropout_p, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_LENGTHS: tl.constexpr, HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr, ATOMIC_DQ: tl.constexpr,
):
    # One program per (key block, b * h), looping over every query block; computes the transposed
    # scores S^T [BLOCK_N, BLOCK_M] so that no accumulator needs a transpose. dk, dv: contiguous
    # [B, Sk, H, D]. With ATOMIC_DQ, also adds this key block's share of dq (c * dS k) into the fp32
    # dq [B, Sq, H, D] (zeroed by the launcher) with atomics: 5 matmuls per tile instead of 7, but the
    # order of the additions, so dq's rounding, changes run to run.
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows0 = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    in_dims = dims < D
    length = Sk
    if HAS_LENGTHS:
        length = tl.minimum(tl.load(lengths_ptr + b), Sk)
    in_cols = cols < length
    kv_mask = in_cols[:, None] & in_dims[None, :]

    k = tl.load(k_ptr + b * stride_kb + h * stride_kh + cols[:, None] * stride_ks + dims[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + b * stride_vb + h * stride_vh + cols[:, None] * stride_vs + dims[None, :],
                mask=kv_mask, other=0.0)
    q_base = q_ptr + b * stride_qb + h * stride_qh
    do_base = dout_ptr + b * stride_dob + h * stride_doh
    row_base = (b * H + h) * Sq
    qk_scale = softmax_scale * 1.4426950408889634
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if pid_n * BLOCK_N < length:  # key blocks wholly past the length only write zeros
        for start_m in range(0, Sq, BLOCK_M):
            rows = start_m + rows0
            in_rows = rows < Sq
            q_mask = in_rows[:, None] & in_dims[None, :]
            q = tl.load(q_base + rows[:, None] * stride_qs + dims[None, :], mask=q_mask, other=0.0)
            dout = tl.load(do_base + rows[:, None] * stride_dos + dims[None, :], mask=q_mask, other=0.0)
            lse = tl.load(lse_ptr + row_base + rows, mask=in_rows, other=0.0)
            delta = tl.load(delta_ptr + row_base + rows, mask=in_rows, other=0.0)
            # Math.
            dk, dv, dsT = _dkdv_query_block(
                k, v, q, dout, lse, delta, dk, dv, rows, cols, in_rows, in_cols, row_base, Sk, qk_scale, seed,
                dropout_p, keep_scale, HAS_DROPOUT, PRECISION,
            )
            if ATOMIC_DQ:
                dq = tl.dot(tl.trans(dsT.to(k.dtype)), k, input_precision=PRECISION) * softmax_scale
                tl.atomic_add(dq_ptr + ((b * Sq + rows[:, None]) * H + h) * D + dims[None, :], dq,
                              mask=q_mask, sem="relaxed")

    out_offset = ((b * Sk + cols[:, None]) * H + h) * D + dims[None, :]
    out_mask = (cols < Sk)[:, None] & in_dims[None, :]
    tl.store(dk_ptr + out_offset, (dk * softmax_scale).to(dk_ptr.dtype.element_ty), mask=out_mask)
    tl.store(dv_ptr + out_offset, dv.to(dv_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _cross_attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, lengths_ptr, seed_ptr, dq_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    H, Sq, Sk, D, softmax_scale, dropout_p, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_LENGTHS: tl.constexpr, HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
):
    # One program per (query block, b * h), looping over the key blocks below the length. dq: contiguous
    # [B, Sq, H, D].
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols0 = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    in_rows = rows < Sq
    in_dims = dims < D
    q_mask = in_rows[:, None] & in_dims[None, :]
    length = Sk
    if HAS_LENGTHS:
        length = tl.minimum(tl.load(lengths_ptr + b), Sk)
    row_base = (b * H + h) * Sq

    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + dims[None, :],
                mask=q_mask, other=0.0)
    dout = tl.load(dout_ptr + b * stride_dob + h * stride_doh + rows[:, None] * stride_dos + dims[None, :],
                   mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + row_base + rows, mask=in_rows, other=0.0)
    delta = tl.load(delta_ptr + row_base + rows, mask=in_rows, other=0.0)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    qk_scale = softmax_scale * 1.4426950408889634
    lse2 = lse * 1.4426950408889634
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
        drop_base = (row_base + rows.to(tl.int64)) * Sk

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, length, BLOCK_N):
        cols = start_n + cols0
        in_cols = cols < length
        kv_mask = in_cols[:, None] & in_dims[None, :]
        k = tl.load(k_base + cols[:, None] * stride_ks + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vs + dims[None, :], mask=kv_mask, other=0.0)
        # Math.
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        p = tl.exp2(s * qk_scale - lse2[:, None])
        p = tl.where(in_rows[:, None] & in_cols[None, :], p, 0.0)
        dp = tl.dot(dout, tl.trans(v), input_precision=PRECISION)
        if HAS_DROPOUT:
            keep = keep_element(seed, drop_base[:, None] + cols[None, :], dropout_p)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

    tl.store(dq_ptr + ((b * Sq + rows[:, None]) * H + h) * D + dims[None, :],
             (dq * softmax_scale).to(dq_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _cross_attention_bwd_dkdv_tma_kernel(
    q_desc, k_desc, v_desc, do_desc, lse_ptr, delta_ptr, lengths_ptr, seed_ptr, dk_ptr, dv_ptr,
    H, Sq, Sk, D, softmax_scale, dropout_p, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_LENGTHS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    # _cross_attention_bwd_dkdv_kernel (same grid, outputs and dropout keying; no atomic dq) for 16-bit
    # inputs, with q / k / v / dout blocks loaded by the TMA unit from 4-D descriptors over [B, S, H, D]
    # (rows past S and dims past D come zero-filled). q and dout, the operands every query block brings,
    # land in shared memory where wgmma reads them (the pointer kernel loads them to registers first); k and
    # v, loaded once, stay in registers as the A operands.
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H  # int32 descriptor coordinates; 64-bit offsets below
    h = bh % H
    col0 = pid_n * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    rows0 = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    length = Sk
    if HAS_LENGTHS:
        length = tl.minimum(tl.load(lengths_ptr + b), Sk)
    in_cols = cols < length
    # Keys at or past the length are real rows (NaN allowed): zeroed, so 0 * NaN cannot reach dk / dv.
    k = tl.where(in_cols[:, None], k_desc.load([b, col0, h, 0]).reshape(BLOCK_N, BLOCK_D), 0.0)
    v = tl.where(in_cols[:, None], v_desc.load([b, col0, h, 0]).reshape(BLOCK_N, BLOCK_D), 0.0)
    row_base = (b.to(tl.int64) * H + h) * Sq
    qk_scale = softmax_scale * 1.4426950408889634
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if col0 < length:  # key blocks wholly past the length only write zeros
        for start_m in range(0, Sq, BLOCK_M):
            rows = start_m + rows0
            in_rows = rows < Sq
            q = q_desc.load([b, start_m, h, 0]).reshape(BLOCK_M, BLOCK_D)
            dout = do_desc.load([b, start_m, h, 0]).reshape(BLOCK_M, BLOCK_D)
            lse = tl.load(lse_ptr + row_base + rows, mask=in_rows, other=0.0)
            delta = tl.load(delta_ptr + row_base + rows, mask=in_rows, other=0.0)
            # Math (16-bit operands: the precision setting is unused).
            dk, dv, _ = _dkdv_query_block(
                k, v, q, dout, lse, delta, dk, dv, rows, cols, in_rows, in_cols, row_base, Sk, qk_scale, seed,
                dropout_p, keep_scale, HAS_DROPOUT, "tf32",
            )

    b = b.to(tl.int64)
    h = h.to(tl.int64)
    out_offset = ((b * Sk + cols[:, None]) * H + h) * D + dims[None, :]
    out_mask = (cols < Sk)[:, None] & (dims < D)[None, :]
    tl.store(dk_ptr + out_offset, (dk * softmax_scale).to(dk_ptr.dtype.element_ty), mask=out_mask)
    tl.store(dv_ptr + out_offset, dv.to(dv_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dq_key_block(
    q, dout, k, v, lse2, delta, dq, cols, end, qk_scale, seed, drop_base, dropout_p, keep_scale,
    MASKED: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    # One key block of the TMA dQ kernel. MASKED (the tail block): keys at or past `end` get p = 0 and
    # k, v rows zero (their rows may hold NaN). Query rows past Sq need no mask: their dq is never stored.
    if MASKED:
        in_cols = cols < end
        k = tl.where(in_cols[:, None], k, 0.0)
        v = tl.where(in_cols[:, None], v, 0.0)
    s = tl.dot(q, tl.trans(k))
    p = tl.exp2(s * qk_scale - lse2[:, None])
    if MASKED:
        p = tl.where(in_cols[None, :], p, 0.0)
    dp = tl.dot(dout, tl.trans(v))
    if HAS_DROPOUT:
        keep = keep_element(seed, drop_base[:, None] + cols[None, :], dropout_p)
        dp = tl.where(keep, dp * keep_scale, 0.0)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq)


@triton.jit
def _cross_attention_bwd_dq_tma_kernel(
    q_desc, k_desc, v_desc, do_desc, lse_ptr, delta_ptr, lengths_ptr, seed_ptr, dq_ptr,
    H, Sq, Sk, D, softmax_scale, dropout_p, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_LENGTHS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    # _cross_attention_bwd_dq_kernel (same grid, output and dropout keying) for 16-bit inputs: q and dout
    # loaded once, k / v blocks by the TMA unit (wgmma's B operands, straight from shared memory), the key
    # loop split into full blocks (no masks) and at most one masked tail block, as the TMA forward.
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    row0 = pid_m * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    in_rows = rows < Sq
    length = Sk
    if HAS_LENGTHS:
        length = tl.minimum(tl.load(lengths_ptr + b), Sk)
    full_end = length // BLOCK_N * BLOCK_N
    row_base = (b.to(tl.int64) * H + h) * Sq
    q = q_desc.load([b, row0, h, 0]).reshape(BLOCK_M, BLOCK_D)
    dout = do_desc.load([b, row0, h, 0]).reshape(BLOCK_M, BLOCK_D)
    lse2 = tl.load(lse_ptr + row_base + rows, mask=in_rows, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + row_base + rows, mask=in_rows, other=0.0)
    qk_scale = softmax_scale * 1.4426950408889634
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
    drop_base = (row_base + rows.to(tl.int64)) * Sk

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, full_end, BLOCK_N):
        k = k_desc.load([b, start_n, h, 0]).reshape(BLOCK_N, BLOCK_D)
        v = v_desc.load([b, start_n, h, 0]).reshape(BLOCK_N, BLOCK_D)
        dq = _dq_key_block(q, dout, k, v, lse2, delta, dq, start_n + tl.arange(0, BLOCK_N), length, qk_scale,
                           seed, drop_base, dropout_p, keep_scale, False, HAS_DROPOUT)
    if full_end < length:
        k = k_desc.load([b, full_end, h, 0]).reshape(BLOCK_N, BLOCK_D)
        v = v_desc.load([b, full_end, h, 0]).reshape(BLOCK_N, BLOCK_D)
        dq = _dq_key_block(q, dout, k, v, lse2, delta, dq, full_end + tl.arange(0, BLOCK_N), length, qk_scale,
                           seed, drop_base, dropout_p, keep_scale, True, HAS_DROPOUT)

    b = b.to(tl.int64)
    h = h.to(tl.int64)
    tl.store(dq_ptr + ((b * Sq + rows[:, None]) * H + h) * D + dims[None, :],
             (dq * softmax_scale).to(dq_ptr.dtype.element_ty), mask=in_rows[:, None] & (dims < D)[None, :])


# ----------------------------------------------------------------------------------------------------
# Launch configurations (by BLOCK_D = next power of two of the head dim), registered for the AOT check
# ----------------------------------------------------------------------------------------------------
# A tile is (BLOCK_M, BLOCK_N, num_warps, num_stages). Defaults per kernel and BLOCK_D, for 16-bit inputs
# (tl.dot on wgmma, fp32 accumulation) and for fp32 inputs (tl.dot in IEEE fp32: FMA, which has no wgmma
# form, so far smaller tiles). Each compiles for sm_90a without register spills (and with wgmma for 16-bit)
# with every feature (kv_lengths, Philox dropout) switched on. The defaults are what the interpreter, CPU,
# IVF_AUTOTUNE=0, CUDA-graph capture and deterministic=True launch; on a GPU they are the first candidate.
_CONFIGS = {
    "16bit": {
        "fwd": {32: (128, 64, 8, 3), 64: (128, 64, 8, 3), 128: (128, 32, 8, 3)},
        "fwd_split": {32: (64, 64, 4, 3), 64: (64, 64, 4, 3), 128: (64, 32, 4, 3)},
        "bwd_dkdv": {32: (64, 128, 8, 2), 64: (32, 128, 8, 1), 128: (16, 64, 8, 2)},
        "bwd_dq": {32: (128, 64, 8, 2), 64: (128, 64, 8, 2), 128: (64, 32, 4, 2)},
    },
    "fp32": {
        "fwd": {32: (64, 32, 4, 1), 64: (32, 32, 4, 1), 128: (16, 32, 8, 1)},
        "fwd_split": {32: (64, 32, 4, 1), 64: (32, 32, 4, 1), 128: (16, 32, 8, 1)},
        "bwd_dkdv": {32: (16, 64, 4, 1), 64: (16, 64, 4, 1), 128: (16, 32, 4, 1)},
        "bwd_dq": {32: (32, 64, 4, 1), 64: (16, 64, 4, 1), 128: (16, 32, 4, 1)},
    },
}
# Default 16-bit tiles for launches whose q / k / v / dout pointers and strides are all multiples of 16
# elements (every power-of-two head dim and D = 80 or 96 with an even head count). Chosen from the tile sweep
# in bench_cross_attention.extra_rows on an H100 (2026-11-26, Triton 3.6): on the CMA shapes the dK/dV kernel
# at 32x64 tiles, 4 warps took 1.0 ms against 1.37 ms at 32x128 / 8 warps, and at D = 128 16x128 tiles took
# 3.1 ms against 5.8 ms at 16x64. They spill in the unaligned specialization (D = 40), which keeps the
# tiles above.
_ALIGNED_CONFIGS = {
    "bwd_dkdv": {32: (32, 64, 4, 2), 64: (32, 64, 4, 2), 128: (16, 128, 8, 2)},
    "bwd_dq": {32: (128, 64, 8, 3), 64: (128, 64, 8, 3)},
}
# Forward alternatives that the GPU tunes after the default (16-bit only: fp32 runs on FMA, where the tile
# matters less than the missing tensor cores). _FWD_TUNE compiles spill-free in both specializations;
# _FWD_TUNE_ALIGNED only in the 16-aligned one, so it is tried only on aligned launches. At D = 64 the
# 128x32 and 2-stage 128x64 tiles were the slowest on every shape of gpu-check run 4 (H100, 2026-11-27:
# CMA both ways, UniBlock query, caption decoder) and were dropped.
_FWD_TUNE = {
    "fwd": {32: [(64, 64, 4, 3), (128, 32, 8, 3), (64, 32, 4, 3)],
            64: [(64, 64, 4, 3), (128, 64, 8, 4)],
            128: [(64, 32, 4, 3), (128, 32, 8, 2)]},
    "fwd_split": {32: [(64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 4)],
                  64: [(64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 4)],
                  128: [(64, 32, 4, 2), (64, 32, 4, 4)]},
}
_FWD_TUNE_ALIGNED = {
    "fwd": {128: [(128, 64, 8, 3), (64, 64, 4, 3)]},
    "fwd_split": {128: [(64, 64, 4, 3)]},
}
# Tiles of _cross_attention_fwd_tma_kernel, tuned after the pointer kernel's tiles on launches that TMA can
# load (see _tma_layout_ok); the first is what _FORCE_FORWARD_KERNEL runs. Each compiles for sm_90a (Triton
# 3.8 and 3.6, 16-aligned specialization, kv_lengths and dropout on) without spills and with wgmma; 128x128
# tiles (D 32, 64), 128x64 with 4 warps and 64x128 with 4 warps (D 64) spill with both, 64x64 (D 128) with
# 3.8: not offered. In gpu-check run 4 (H100, 2026-11-27) the 64x64 4-warp tile won the CMA shapes at D = 64
# (0.249 ms against 0.280 for 128x64 and 0.294 for the pointer kernel's default), so its 2- and 4-stage
# forms are offered too, and 128x64 at 2 stages, the slowest TMA tile everywhere, was dropped.
_FWD_TMA_TUNE = {
    "fwd": {32: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3)],
            64: [(128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3), (64, 64, 4, 4), (64, 64, 4, 2)],
            128: [(128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 2), (64, 32, 4, 3)]},
    "fwd_split": {32: [(64, 64, 4, 3)], 64: [(64, 64, 4, 3)], 128: [(64, 64, 4, 3)]},
}
# Backward plans that the GPU tunes after the default one when deterministic=False: ("split", dK/dV tile,
# dQ tile) runs the dK/dV kernel, then the dQ kernel (7 matmuls per tile pair); ("atomic", dK/dV tile) runs
# the dK/dV kernel with ATOMIC_DQ (5 matmuls, FlashAttention-2's Triton backward), then converts dq.
_BWD_TUNE = {
    "16bit": {
        32: [("atomic", (32, 64, 4, 2)), ("atomic", (32, 128, 8, 2))],
        64: [("atomic", (16, 64, 4, 2)), ("atomic", (32, 64, 8, 2)), ("atomic", (16, 128, 8, 1))],
        # Nothing else fits D = 128 unaligned without spills (the unaligned specialization needs more
        # registers: atomic 16x64 and 32x64 tiles spill with Triton 3.8, split alternatives with 3.6);
        # D = 80 / 96 launches are aligned unless their strides are odd.
        128: [],
    },
    # fp32 (FMA) gets only the atomic plan: 16x64 at D = 64 and 4 warps at D = 128 spill with atomics.
    "fp32": {32: [("atomic", (16, 64, 4, 1))], 64: [("atomic", (16, 32, 4, 1))],
             128: [("atomic", (16, 32, 8, 1))]},
}
# On 16-aligned 16-bit launches these replace _BWD_TUNE: tiles that spill only unaligned, and the aligned
# default's 32x64 dK/dV tile with atomics. At D = 64 a split plan with 32x128 dK/dV tiles took 1.36-1.39 ms on
# the CMA shapes against the default's 0.89-0.94 ms and lost on the UniBlock query too (gpu-check run 4), so
# it was dropped; the atomic 16x128 plan won the UniBlock query (Sq = 1: 0.26 ms against 0.35).
_BWD_TUNE_ALIGNED = {
    32: [("atomic", (32, 64, 4, 2)), ("atomic", (64, 128, 8, 2)), ("atomic", (32, 128, 8, 2)),
         ("split", (32, 128, 8, 2), (128, 64, 8, 2))],
    64: [("atomic", (32, 64, 4, 2)), ("atomic", (32, 128, 8, 2)), ("atomic", (16, 128, 8, 1))],
    128: [("atomic", (16, 64, 8, 2)), ("atomic", (16, 128, 8, 2)), ("atomic", (32, 64, 8, 2)),
          ("split", (16, 128, 8, 2), (128, 32, 8, 2))],
}
# Backward plans through the TMA kernels (_cross_attention_bwd_dkdv_tma_kernel, then
# _cross_attention_bwd_dq_tma_kernel), offered after the others on launches that TMA can load (16-bit,
# sm_90+, 16-byte aligned rows: see _tma_layout_ok). The TMA forward took 0.247 ms against the pointer
# kernel's 0.294-0.321 on the CMA shapes (gpu-check run 4): these carry the same loads into the backward,
# where q and dout (dK/dV) and k and v (dQ) are wgmma's shared-memory operands. Not yet timed on a GPU. Each
# tile compiles for sm_90a (Triton 3.8 and 3.6, 16-aligned, kv_lengths and dropout on) without spills, with
# wgmma; first a plan with the pointer default's dK/dV tile, then smaller and larger tiles.
_BWD_TMA_TUNE = {
    32: [("split_tma", (32, 64, 4, 2), (128, 32, 8, 2)), ("split_tma", (16, 128, 8, 2), (64, 64, 4, 2)),
         ("split_tma", (64, 64, 8, 2), (128, 64, 8, 2))],
    64: [("split_tma", (32, 64, 4, 2), (128, 32, 8, 2)), ("split_tma", (16, 64, 4, 3), (64, 32, 4, 3)),
         ("split_tma", (32, 128, 8, 2), (64, 64, 8, 2))],
    128: [("split_tma", (16, 64, 8, 2), (64, 32, 8, 2)), ("split_tma", (16, 128, 8, 2), (128, 32, 8, 2))],
}
_PRECISION = {"16bit": "tf32", "fp32": "ieee"}  # PRECISION is read by tl.dot on fp32 operands only
_POINTER = {"16bit": "*bf16", "fp32": "*fp32"}
_COMBINE = {32: (16, 4), 64: (16, 4), 128: (16, 4)}  # (BLOCK_M, num_warps)
_PREPROCESS = {32: (64, 4), 64: (64, 4), 128: (64, 4)}
_FEATURES = dict(HAS_LENGTHS=True, HAS_DROPOUT=True)
_BLOCK_DS = (32, 64, 128)
# Tests set this to "split", "atomic" or "split_tma" to run that backward plan (its first candidate) where
# the tuner would run the default ("split_tma" skips the device check, as _FORCE_FORWARD_KERNEL does);
# deterministic=True ignores it.
_FORCE_BACKWARD_PLAN: str | None = None
# Tests set this to "tma" to run the TMA forward (its first tile) wherever q / k / v have a TMA layout,
# skipping the device check (the interpreter runs host descriptors over CPU tensors); deterministic=True
# ignores it.
_FORCE_FORWARD_KERNEL: str | None = None


def _precision_class(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def _default_tile(kind: str, kernel: str, block_d: int, aligned: bool = False) -> tuple[int, int, int, int]:
    """The default tile of `kernel` ("fwd", "fwd_split", "bwd_dkdv", "bwd_dq"); `aligned` (see _aligned16)
    allows the tiles of _ALIGNED_CONFIGS."""
    tuned = _ALIGNED_CONFIGS.get(kernel, {}).get(block_d) if aligned and kind == "16bit" else None
    return tuned if tuned is not None else _CONFIGS[kind][kernel][block_d]


def _forward_tiles(kind: str, kernel: str, block_d: int, aligned: bool, tune: bool = True) -> list[tuple]:
    """The forward's candidate tiles, default first."""
    tiles = [_default_tile(kind, kernel, block_d, aligned)]
    if tune and kind == "16bit":
        tiles += _FWD_TUNE[kernel].get(block_d, [])
        tiles += _FWD_TUNE_ALIGNED[kernel].get(block_d, []) if aligned else []
    return list(dict.fromkeys(tiles))


def _backward_plans(kind: str, block_d: int, aligned: bool, deterministic: bool) -> list[tuple]:
    """The backward's candidate plans, default (dK/dV then dQ kernel, today's tiles) first; only the default
    when `deterministic`."""
    plans = [("split", *(_default_tile(kind, kernel, block_d, aligned) for kernel in ("bwd_dkdv", "bwd_dq")))]
    if not deterministic:
        plans += _BWD_TUNE_ALIGNED[block_d] if aligned and kind == "16bit" else _BWD_TUNE[kind][block_d]
    return list(dict.fromkeys(plans))


def _tile_label(tile: tuple) -> str:
    return "M{}_N{}_w{}_s{}".format(*tile)


def _tma_label(tile: tuple) -> str:
    return "tma:" + _tile_label(tile)


def _plan_label(plan: tuple) -> str:
    if plan[0] in ("split", "split_tma"):
        return f"{plan[0]}:dkdv={_tile_label(plan[1])},dq={_tile_label(plan[2])}"
    return f"atomic:dkdv={_tile_label(plan[1])}"


@functools.lru_cache(maxsize=None)
def _tile_config(kind: str, kernel: str, block_d: int, tile: tuple, **features) -> KernelConfig:
    """`kernel` ("fwd", "fwd_split", "bwd_dkdv", "bwd_dkdv_atomic", "bwd_dq") at `tile` (built once per
    launch shape: host time)."""
    block_m, block_n, warps, stages = tile
    constexprs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "PRECISION": _PRECISION[kind]}
    constexprs.update(features)
    if kernel.startswith("bwd_dkdv"):
        constexprs["ATOMIC_DQ"] = kernel == "bwd_dkdv_atomic"
    return KernelConfig(constexprs, num_warps=warps, num_stages=stages)


@functools.lru_cache(maxsize=None)
def _tma_config(block_d: int, tile: tuple, **features) -> KernelConfig:
    """_cross_attention_fwd_tma_kernel at `tile` (16-bit only, so no PRECISION)."""
    block_m, block_n, warps, stages = tile
    constexprs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, **features}
    return KernelConfig(constexprs, num_warps=warps, num_stages=stages)


@functools.lru_cache(maxsize=None)
def _tma_bwd_config(block_d: int, tile: tuple, **features) -> KernelConfig:
    """A TMA backward kernel at `tile` (16-bit only, so no PRECISION; no atomic dq)."""
    block_m, block_n, warps, stages = tile
    constexprs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, **features}
    return KernelConfig(constexprs, num_warps=warps, num_stages=stages)


def _launch_options(config: KernelConfig) -> tuple[dict, dict]:
    return dict(config.constexprs), {"num_warps": config.num_warps, "num_stages": config.num_stages}


def _simple_config(table, block_d: int) -> KernelConfig:
    block_m, warps = table[block_d]
    return KernelConfig({"BLOCK_M": block_m, "BLOCK_D": block_d}, num_warps=warps, num_stages=1)


def _strides3(prefix: str) -> dict[str, str]:
    return {f"stride_{prefix}{s}": "i32" for s in ("b", "s", "h")}


def _attention_signature(kernel: str, pointer: str) -> dict[str, str]:
    """The AOT signature of an attention kernel with q / k / v (and their grads, and out) as `pointer`."""
    strides = {**_strides3("q"), **_strides3("k"), **_strides3("v")}
    scalars = {"softmax_scale": "fp32", "dropout_p": "fp32", "keep_scale": "fp32"}
    qkv = {"q_ptr": pointer, "k_ptr": pointer, "v_ptr": pointer}
    if kernel in ("fwd", "fwd_split"):
        return {
            **qkv, "lengths_ptr": "*i32", "seed_ptr": "*i64",
            "out_ptr": "*fp32" if kernel == "fwd_split" else pointer, "lse_ptr": "*fp32", **strides,
            "stride_osplit": "i32", "stride_ob": "i32", "stride_os": "i32", "stride_oh": "i32",
            "stride_lsplit": "i32", "stride_lb": "i32", "stride_lh": "i32",
            "H": "i32", "Sq": "i32", "Sk": "i32", "D": "i32", "keys_per_split": "i32", **scalars,
        }
    if kernel.startswith("bwd_dkdv"):
        outputs = {"dk_ptr": pointer, "dv_ptr": pointer, "dq_ptr": "*fp32"}
    else:
        outputs = {"dq_ptr": pointer}
    return {
        **qkv, "dout_ptr": pointer, "lse_ptr": "*fp32", "delta_ptr": "*fp32", "lengths_ptr": "*i32",
        "seed_ptr": "*i64", **outputs, **strides, **_strides3("do"),
        "H": "i32", "Sq": "i32", "Sk": "i32", "D": "i32", **scalars,
    }


def _tma_signature(kernel: str) -> dict[str, str]:
    """The AOT signature of the TMA forward: q / k / v as 4-D bf16 descriptors instead of pointers."""
    pointer = _attention_signature(kernel, "*bf16")
    descriptors = {
        "q_desc": "tensordesc<bf16[1,{BLOCK_M},1,{BLOCK_D}]>",
        "k_desc": "tensordesc<bf16[1,{BLOCK_N},1,{BLOCK_D}]>",
        "v_desc": "tensordesc<bf16[1,{BLOCK_N},1,{BLOCK_D}]>",
    }
    return descriptors | {
        name: kind for name, kind in pointer.items()
        if not name.startswith(("q_", "k_", "v_", "stride_q", "stride_k", "stride_v"))
    }


def _tma_bwd_signature(kernel: str) -> dict[str, str]:
    """The AOT signature of a TMA backward kernel ("bwd_dkdv" or "bwd_dq"): q / k / v / dout as 4-D bf16
    descriptors."""
    rows = {"q": "BLOCK_M", "k": "BLOCK_N", "v": "BLOCK_N", "do": "BLOCK_M"}  # the kernels' argument order
    descriptors = {
        f"{name}_desc": f"tensordesc<bf16[1,{{{block}}},1,{{BLOCK_D}}]>" for name, block in rows.items()
    }
    outputs = {"dk_ptr": "*bf16", "dv_ptr": "*bf16"} if kernel == "bwd_dkdv" else {"dq_ptr": "*bf16"}
    return {
        **descriptors, "lse_ptr": "*fp32", "delta_ptr": "*fp32", "lengths_ptr": "*i32", "seed_ptr": "*i64",
        **outputs, "H": "i32", "Sq": "i32", "Sk": "i32", "D": "i32",
        "softmax_scale": "fp32", "dropout_p": "fp32", "keep_scale": "fp32",
    }


_ATTENTION_KERNELS = {
    "fwd": _cross_attention_fwd_kernel,
    "fwd_split": _cross_attention_fwd_kernel,
    "bwd_dkdv": _cross_attention_bwd_dkdv_kernel,
    "bwd_dkdv_atomic": _cross_attention_bwd_dkdv_kernel,
    "bwd_dq": _cross_attention_bwd_dq_kernel,
}


def _candidate_tiles(kind: str, block_d: int, aligned: bool) -> dict[str, list[tuple]]:
    """Every tile that any launch of (kind, block_d, aligned) may use, per kernel (tuning included)."""
    tiles: dict[str, list[tuple]] = {kernel: [] for kernel in _ATTENTION_KERNELS}
    for kernel in ("fwd", "fwd_split"):
        tiles[kernel] += _forward_tiles(kind, kernel, block_d, aligned)
    for plan in _backward_plans(kind, block_d, aligned, deterministic=False):
        if plan[0] == "split":
            tiles["bwd_dkdv"].append(plan[1])
            tiles["bwd_dq"].append(plan[2])
        else:
            tiles["bwd_dkdv_atomic"].append(plan[1])
    return {kernel: list(dict.fromkeys(found)) for kernel, found in tiles.items()}


def _register_attention_kernels() -> None:
    """Registers every candidate tile: tiles used on unaligned launches as `cross_attention_<kernel>` (checked
    in both specializations), tiles only aligned launches use as `..._aligned` (aligned_only). 16-bit
    kernels are checked with bf16 pointers (fp16 compiles to the same wgmma code) and must use wgmma; the
    fp32 (IEEE) variants run on FMA and are checked for spills and shared memory only. The TMA forward's
    tiles register as `cross_attention_fwd_tma` and `cross_attention_fwd_split_tma` (aligned_only)."""
    for kind in ("16bit", "fp32"):
        for kernel, fn in _ATTENTION_KERNELS.items():
            unaligned = [(d, t) for d in _BLOCK_DS for t in _candidate_tiles(kind, d, False)[kernel]]
            aligned = [
                (d, t) for d in _BLOCK_DS for t in _candidate_tiles(kind, d, True)[kernel]
                if (d, t) not in unaligned
            ]
            for tiles, aligned_only in ((unaligned, False), (aligned, True)):
                if not tiles:
                    continue
                register_triton_kernel(TritonKernelSpec(
                    name=f"cross_attention_{kernel}" + ("_fp32" if kind == "fp32" else "")
                    + ("_aligned" if aligned_only else ""),
                    kernel=fn,
                    signature=_attention_signature(kernel, _POINTER[kind]),
                    configs=tuple(_tile_config(kind, kernel, d, t, **_FEATURES) for d, t in tiles),
                    multiplies_matrices=kind == "16bit",
                    aligned_only=aligned_only,
                ))

    # The TMA forward launches only with 16-byte aligned bases and strides (TMA's own requirement).
    for kernel in ("fwd", "fwd_split"):
        register_triton_kernel(TritonKernelSpec(
            name=f"cross_attention_{kernel}_tma",
            kernel=_cross_attention_fwd_tma_kernel,
            signature=_tma_signature(kernel),
            configs=tuple(
                _tma_config(d, t, **_FEATURES) for d in _BLOCK_DS for t in _FWD_TMA_TUNE[kernel][d]
            ),
            multiplies_matrices=True,
            aligned_only=True,
        ))
    for kernel, fn, position in (("bwd_dkdv", _cross_attention_bwd_dkdv_tma_kernel, 1),
                                 ("bwd_dq", _cross_attention_bwd_dq_tma_kernel, 2)):
        tiles = {(d, plan[position]) for d, plans in _BWD_TMA_TUNE.items() for plan in plans}
        register_triton_kernel(TritonKernelSpec(
            name=f"cross_attention_{kernel}_tma",
            kernel=fn,
            signature=_tma_bwd_signature(kernel),
            configs=tuple(_tma_bwd_config(d, tile, **_FEATURES) for d, tile in sorted(tiles)),
            multiplies_matrices=True,
            aligned_only=True,
        ))


_register_attention_kernels()


def _block_d(D: int) -> int:
    return max(32, next_power_of_2(D))


def _aligned16(*tensors: torch.Tensor) -> bool:
    """Whether Triton specializes a launch on these tensors as 16-divisible (pointers and strides)."""
    for t in tensors:  # plain loops: nested generators cost more host time than the checks themselves
        if t.data_ptr() % 16:
            return False
        for stride in t.stride()[:-1]:
            if stride % 16:
                return False
    return True


def _tma_layout_ok(capability: tuple[int, int] | None, *tensors: torch.Tensor) -> bool:
    """Whether TMA descriptors can load these [B, S, H, D] tensors on a device of `capability` (None: not a
    CUDA device): sm_90+, 16-bit, 16-byte aligned base, every stride but the last a positive multiple of 16
    bytes."""
    if capability is None or capability[0] < 9:
        return False
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16) or t.data_ptr() % 16 or t.stride(-1) != 1:
            return False
        if any(stride <= 0 or stride * t.element_size() % 16 for stride in t.stride()[:-1]):
            return False
    return True


def _tma_eligible(*tensors: torch.Tensor) -> bool:
    """_tma_layout_ok on the tensors' device: CUDA outside the interpreter, else not eligible."""
    device = tensors[0].device
    on_gpu = device.type == "cuda" and not triton_interpreter_on()
    return _tma_layout_ok(device_capability(device) if on_gpu else None, *tensors)


def _split_block_n(D: int, dtype: torch.dtype) -> int:
    return _CONFIGS[_precision_class(dtype)]["fwd_split"][_block_d(D)][1]


@functools.lru_cache(maxsize=None)
def _target_programs(device: torch.device) -> int:
    """Programs that keep the device busy: two per SM on CUDA; on the interpreter 16, so that the tests'
    tiny shapes take the split path."""
    if device.type == "cuda":
        return 2 * sm_count(device)
    return 16


def _num_splits(batch_heads: int, Sq: int, Sk: int, block_n: int, device: torch.device) -> int:
    """Key splits of the forward: 1 unless Sq is small and (b, h, query block) programs alone leave the
    device idle; then enough splits to reach the target, at least one key block per split."""
    if Sq > SPLIT_MAX_SQ:
        return 1
    key_blocks = cdiv(Sk, block_n)
    wanted = cdiv(_target_programs(device), batch_heads)
    return max(1, min(wanted, key_blocks, 64))


def _bsh_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, sequence, head) strides of a [B, S, H, D] tensor."""
    return t.stride()[:3]


def _tma_descriptors(blocks: dict, *tensors_and_rows: tuple[torch.Tensor, str]) -> tuple:
    """4-D TMA descriptors over [B, S, H, D] tensors with their strides, each paired with the name of its
    block's row count: blocks of [1, BLOCK_M or BLOCK_N, 1, BLOCK_D] (the unit zero-fills rows past S and
    dims past D)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return tuple(
        TensorDescriptor(t, list(t.shape), list(t.stride()), [1, blocks[rows], 1, blocks["BLOCK_D"]])
        for t, rows in tensors_and_rows
    )


def _tuning_key(q: torch.Tensor, Sk: int, aligned: bool, has_lengths: bool, has_dropout: bool) -> tuple:
    B, Sq, H, D = q.shape
    return (
        str(q.dtype), D, aligned, has_lengths, has_dropout,
        length_bucket(Sq), length_bucket(Sk), length_bucket(B * H),
    )


def _run_candidates(tuner: str, key: tuple, candidates: list, device: torch.device, outputs: tuple):
    """One candidate runs directly (deterministic=True, or nothing to tune); more go to the tuner, which
    checks each one's `outputs` against the default's before choosing."""
    if len(candidates) == 1:
        return candidates[0][1]()
    return launch_tuner(tuner).run(key, candidates, device, outputs=lambda _: outputs)[1]


# ----------------------------------------------------------------------------------------------------
# Host launchers as torch.library ops
# ----------------------------------------------------------------------------------------------------
def _cross_attention_fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    seed: torch.Tensor | None,
    softmax_scale: float,
    dropout_p: float,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out [B, Sq, H, D] contiguous in q's dtype, lse [B, H, Sq] fp32). `deterministic` launches
    the default tiles only (no tuning), so results are bitwise the same in every process."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    out = new_output(q, (B, Sq, H, D))
    lse = new_output(q, (B, H, Sq), torch.float32)
    has_dropout = seed is not None and dropout_p > 0.0
    kind, block_d = _precision_class(q.dtype), _block_d(D)
    splits = _num_splits(B * H, Sq, Sk, _split_block_n(D, q.dtype), q.device)
    kernel = "fwd" if splits == 1 else "fwd_split"
    features = dict(HAS_LENGTHS=kv_lengths is not None, HAS_DROPOUT=has_dropout)

    def launch(tile, tma=False):
        config = _tma_config(block_d, tile, **features) if tma else _tile_config(
            kind, kernel, block_d, tile, **features
        )
        constexprs, options = _launch_options(config)
        block_n = constexprs["BLOCK_N"]
        keys_per_split = cdiv(cdiv(Sk, splits), block_n) * block_n
        tile_splits = cdiv(Sk, keys_per_split)
        if tile_splits == 1:
            target_out, target_lse = out, lse
            out_strides = (0, *out.stride()[:3])
            lse_strides = (0, lse.stride(0), lse.stride(1))
        else:
            target_out = new_output(q, (tile_splits, B, Sq, H, D), torch.float32)
            target_lse = new_output(q, (tile_splits, B, H, Sq), torch.float32)
            out_strides = target_out.stride()[:4]
            lse_strides = target_lse.stride()[:3]
        grid = (cdiv(Sq, constexprs["BLOCK_M"]), B * H, tile_splits)
        if tma:
            inputs = _tma_descriptors(constexprs, (q, "BLOCK_M"), (k, "BLOCK_N"), (v, "BLOCK_N"))
            fn = _cross_attention_fwd_tma_kernel
        else:
            fn, inputs = _cross_attention_fwd_kernel, (q, k, v)
        fn[grid](
            *inputs, kv_lengths, seed if has_dropout else None, target_out, target_lse,
            *(() if tma else (*_bsh_strides(q), *_bsh_strides(k), *_bsh_strides(v))), *out_strides,
            *lse_strides, H, Sq, Sk, D, keys_per_split, softmax_scale,
            dropout_p if has_dropout else 0.0, 1.0 / (1.0 - dropout_p) if has_dropout else 1.0,
            **constexprs, **options,
        )
        if tile_splits > 1:
            block_m, warps = _COMBINE[block_d]
            _cross_attention_combine_kernel[(cdiv(Sq, block_m), B * H)](
                target_out, target_lse, out, lse, H, Sq, D, tile_splits,
                BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps, num_stages=1,
            )

    aligned = _aligned16(q, k, v, out)
    tiles = _forward_tiles(kind, kernel, block_d, aligned, tune=not deterministic)
    candidates = [(_tile_label(tile), functools.partial(launch, tile)) for tile in tiles]
    forced = _FORCE_FORWARD_KERNEL == "tma"
    with_tma = not deterministic and kind == "16bit" and (
        _tma_layout_ok((9, 0), q, k, v) if forced else _tma_eligible(q, k, v)
    )
    if with_tma:
        tma_tiles = _FWD_TMA_TUNE[kernel][block_d]
        tma = [(_tma_label(tile), functools.partial(launch, tile, True)) for tile in tma_tiles]
        candidates = tma[:1] if forced else candidates + tma
    # TMA eligibility is part of the key: launches of one key always offer the same candidates.
    key = (*_tuning_key(q, Sk, aligned, kv_lengths is not None, has_dropout), with_tma)
    _run_candidates(f"cross_attention_{kernel}", key, candidates, q.device, (out, lse))
    return out, lse


_cross_attention_fwd_op = torch.library.custom_op(
    "internvideo_fast::cross_attention_fwd", _cross_attention_fwd_impl, mutates_args=()
)


@_cross_attention_fwd_op.register_fake
def _cross_attention_fwd_fake(q, k, v, kv_lengths, seed, softmax_scale, dropout_p, deterministic=False):
    B, Sq, H, D = q.shape
    return q.new_empty((B, Sq, H, D)), q.new_empty((B, H, Sq), dtype=torch.float32)


def _cross_attention_bwd_impl(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    seed: torch.Tensor | None,
    softmax_scale: float,
    dropout_p: float,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv), contiguous [B, S, H, D] in the inputs' dtype. `deterministic`: the default plan
    (dK/dV kernel, then dQ kernel, no atomics) at the default tiles, bitwise reproducible; otherwise the
    GPU tunes between plans, atomic dQ included."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    out = out.contiguous()
    dq = new_output(q, (B, Sq, H, D))
    dk = new_output(q, (B, Sk, H, D))
    dv = new_output(q, (B, Sk, H, D))
    delta = new_output(q, (B, H, Sq), torch.float32)
    has_dropout = seed is not None and dropout_p > 0.0
    kind, block_d = _precision_class(q.dtype), _block_d(D)
    block_m, warps = _PREPROCESS[block_d]
    _cross_attention_bwd_preprocess_kernel[(cdiv(Sq, block_m), B * H)](
        out, dout, delta, *_bsh_strides(dout), H, Sq, D,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps, num_stages=1,
    )
    scalars = (
        H, Sq, Sk, D, softmax_scale,
        dropout_p if has_dropout else 0.0, 1.0 / (1.0 - dropout_p) if has_dropout else 1.0,
    )
    common = (*_bsh_strides(q), *_bsh_strides(k), *_bsh_strides(v), *_bsh_strides(dout), *scalars)
    features = dict(HAS_LENGTHS=kv_lengths is not None, HAS_DROPOUT=has_dropout)
    seed_arg = seed if has_dropout else None

    def launch_tma(plan):
        constexprs, options = _launch_options(_tma_bwd_config(block_d, plan[1], **features))
        descriptors = _tma_descriptors(constexprs, (q, "BLOCK_M"), (k, "BLOCK_N"), (v, "BLOCK_N"),
                                       (dout, "BLOCK_M"))
        _cross_attention_bwd_dkdv_tma_kernel[(cdiv(Sk, constexprs["BLOCK_N"]), B * H)](
            *descriptors, lse, delta, kv_lengths, seed_arg, dk, dv, *scalars, **constexprs, **options,
        )
        constexprs, options = _launch_options(_tma_bwd_config(block_d, plan[2], **features))
        descriptors = _tma_descriptors(constexprs, (q, "BLOCK_M"), (k, "BLOCK_N"), (v, "BLOCK_N"),
                                       (dout, "BLOCK_M"))
        _cross_attention_bwd_dq_tma_kernel[(cdiv(Sq, constexprs["BLOCK_M"]), B * H)](
            *descriptors, lse, delta, kv_lengths, seed_arg, dq, *scalars, **constexprs, **options,
        )

    def launch(plan):
        if plan[0] == "split_tma":
            return launch_tma(plan)
        atomic = plan[0] == "atomic"
        constexprs, options = _launch_options(
            _tile_config(kind, "bwd_dkdv_atomic" if atomic else "bwd_dkdv", block_d, plan[1], **features)
        )
        # fp32 dq takes the atomics directly; 16-bit dq is converted from an fp32 buffer. Zeroed here,
        # inside the candidate, so that every (timed) run starts from zero.
        dq_acc = (dq if q.dtype == torch.float32 else torch.empty_like(dq, dtype=torch.float32)).zero_() \
            if atomic else None
        _cross_attention_bwd_dkdv_kernel[(cdiv(Sk, constexprs["BLOCK_N"]), B * H)](
            q, k, v, dout, lse, delta, kv_lengths, seed_arg, dk, dv, dq_acc, *common, **constexprs, **options,
        )
        if atomic:
            if dq_acc is not dq:
                dq.copy_(dq_acc)
            return
        constexprs, options = _launch_options(_tile_config(kind, "bwd_dq", block_d, plan[2], **features))
        _cross_attention_bwd_dq_kernel[(cdiv(Sq, constexprs["BLOCK_M"]), B * H)](
            q, k, v, dout, lse, delta, kv_lengths, seed_arg, dq, *common, **constexprs, **options,
        )

    aligned = _aligned16(q, k, v, dout, dq, dk, dv)
    plans = _backward_plans(kind, block_d, aligned, deterministic)
    forced_tma = _FORCE_BACKWARD_PLAN == "split_tma"
    with_tma = not deterministic and kind == "16bit" and (
        _tma_layout_ok((9, 0), q, k, v, dout) if forced_tma else _tma_eligible(q, k, v, dout)
    )
    if with_tma:
        plans += _BWD_TMA_TUNE[block_d]
    if _FORCE_BACKWARD_PLAN is not None and not deterministic:
        # Where that plan has no candidate (atomic at D = 128 unaligned), the default runs.
        plans = [plan for plan in plans if plan[0] == _FORCE_BACKWARD_PLAN][:1] or plans[:1]
    candidates = [(_plan_label(plan), functools.partial(launch, plan)) for plan in plans]
    # TMA eligibility is part of the key: launches of one key always offer the same candidates.
    key = (*_tuning_key(q, Sk, aligned, kv_lengths is not None, has_dropout), with_tma)
    _run_candidates("cross_attention_bwd", key, candidates, q.device, (dq, dk, dv))
    return dq, dk, dv


_cross_attention_bwd_op = torch.library.custom_op(
    "internvideo_fast::cross_attention_bwd", _cross_attention_bwd_impl, mutates_args=()
)


@_cross_attention_bwd_op.register_fake
def _cross_attention_bwd_fake(
    dout, q, k, v, out, lse, kv_lengths, seed, softmax_scale, dropout_p, deterministic=False
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, kv_lengths, seed, softmax_scale, dropout_p, *rest = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_lengths, seed)
    ctx.softmax_scale = softmax_scale
    ctx.dropout_p = dropout_p
    ctx.deterministic = bool(rest[0]) if rest else False
    ctx.mark_non_differentiable(lse)
    # Unused outputs' gradients arrive as None, not as a zero fill per backward; the backward takes None.
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, kv_lengths, seed = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = _cross_attention_bwd(
        dout, q, k, v, out, lse, kv_lengths, seed, ctx.softmax_scale, ctx.dropout_p, ctx.deterministic
    )
    return dq, dk, dv, None, None, None, None, None


torch.library.register_autograd(
    "internvideo_fast::cross_attention_fwd", _backward, setup_context=_setup_context
)
# Eager calls skip torch.library's dispatch (internvideo_fast/ops/dispatch.py); compiled graphs keep the ops.
_cross_attention_bwd = eager_op(_cross_attention_bwd_op, _cross_attention_bwd_impl)
_cross_attention_fwd = eager_op(
    _cross_attention_fwd_op, _cross_attention_fwd_impl, setup_context=_setup_context, backward=_backward
)


# ----------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------
def cross_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float | None = None,
    kv_lengths: torch.Tensor | None = None,
    keep_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    upcast: bool = True,
    return_lse: bool = False,
):
    """Plain PyTorch attention, in float64 (`upcast`) or q's dtype. `keep_mask` (bool ``[B, H, Sq, Sk]``)
    is the dropout mask, scaled by ``1 / (1 - dropout_p)``. Returns ``out [B, Sq, H, D]`` (float64 when
    `upcast`), or ``(out, lse [B, H, Sq])`` with `return_lse`."""
    dtype = torch.float64 if upcast else q.dtype
    D, Sk = q.shape[-1], k.shape[1]
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    qh, kh, vh = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    if kv_lengths is not None:
        masked = torch.arange(Sk, device=q.device)[None, :] >= kv_lengths.to(q.device)[:, None].long()
        scores = scores.masked_fill(masked[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores.float() if dtype != torch.float64 else scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    if keep_mask is not None:
        probs = probs * keep_mask.to(dtype) * (1.0 / (1.0 - dropout_p))
    out = torch.matmul(probs, vh).transpose(1, 2)
    return (out, lse) if return_lse else out
