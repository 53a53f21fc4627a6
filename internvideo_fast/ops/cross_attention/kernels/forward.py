"""cross_attention's forward kernels: the pointer kernel (online softmax over key blocks, optionally split
over programs), its TMA form for 16-bit inputs on sm_90+, and the combine kernel that merges split keys."""

from __future__ import annotations

import triton
import triton.language as tl

from internvideo_fast.ops.triton_common.philox import keep_element

_LOG2E = 1.4426950408889634


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
