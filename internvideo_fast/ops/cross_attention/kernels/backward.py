"""cross_attention's backward kernels (FlashAttention-2): delta, dK/dV (optionally adding dq with atomics),
dQ, and the TMA forms of dK/dV and dQ for 16-bit inputs on sm_90+."""

from __future__ import annotations

import triton
import triton.language as tl

from internvideo_fast.ops.triton_common.philox import keep_element


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
