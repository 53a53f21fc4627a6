"""dropout_add_layer_norm's Triton kernels: the math as pure functions of fp32 values, apart from the loads
and stores; one row per program (forward) or a block of rows per program (the forward's loop plans and the
backward). See the package docstring for the formulas."""

from __future__ import annotations

import triton
import triton.language as tl

from internvideo_fast.ops.triton_common.philox import keep_block8, keep_element8


@triton.jit
def _normalize(h, in_row, D, eps, IS_RMS_NORM: tl.constexpr):
    """LayerNorm (RMSNorm: mean 0) statistics of one row (padding lanes of h are 0 and stay out of the
    variance)."""
    if IS_RMS_NORM:
        mean = 0.0
        centered = h
    else:
        mean = tl.sum(h, axis=0) / D
        centered = tl.where(in_row, h - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / D + eps)
    return centered * rstd, mean, rstd


@triton.jit
def _normalize_backward(g, xhat, rstd, D, IS_RMS_NORM: tl.constexpr, PAIRED_SUMS: tl.constexpr):
    """d h of xhat = (h - mean) * rstd (RMSNorm: h * rstd) of one row, given g = d xhat. Padding lanes of g
    and xhat are 0. PAIRED_SUMS: LayerNorm's two row sums are one reduction of the pairs (g * xhat, g). A
    reduction across warps goes through shared memory between barriers, and two separate sums paid that
    twice per row (sm_90a PTX of the backward kernel's loop: 2 bar.sync per row instead of 4). The kernels
    pair them when D is a multiple of 8 (the ViT widths); on the per-element mask path the pair spills 8 B
    with Triton 3.6 (unaligned, 2 load stages)."""
    if IS_RMS_NORM:
        dh = g - xhat * (tl.sum(g * xhat, axis=0) / D)
    else:
        if PAIRED_SUMS:
            sum_gx, sum_g = tl.split(tl.sum(tl.join(g * xhat, g), axis=0))
        else:
            sum_gx, sum_g = tl.sum(g * xhat, axis=0), tl.sum(g, axis=0)
        dh = g - xhat * (sum_gx / D) - sum_g / D  # the last term: the mean's share
    return rstd * dh


@triton.jit
def _row_keep(seed_ptr, row, D, offset, drop_threshold, BLOCK_D: tl.constexpr,
              D_MULTIPLE_OF_8: tl.constexpr):
    """The keep mask of one row (offsets row * D + arange(BLOCK_D))."""
    if D_MULTIPLE_OF_8:
        return keep_block8(tl.load(seed_ptr), row * D, drop_threshold, BLOCK_D)
    return keep_element8(tl.load(seed_ptr), offset, drop_threshold)


@triton.jit
def _load_dropout_add(
    x_ptr, residual_ptr, drop_path_ptr, seed_ptr, row, offset, in_row, D, rows_per_sample, drop_threshold,
    keep_scale, BLOCK_D: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_DROP_PATH: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, D_MULTIPLE_OF_8: tl.constexpr,
):
    """The forward's loads: h = residual + x * keep / (1 - p) * s[sample] of one row, in fp32 (padding
    lanes 0)."""
    x = tl.load(x_ptr + offset, mask=in_row, other=0.0).to(tl.float32)
    factor = keep_scale
    if HAS_DROP_PATH:
        factor = factor * tl.load(drop_path_ptr + row // rows_per_sample).to(tl.float32)
    if HAS_DROPOUT:
        x = tl.where(_row_keep(seed_ptr, row, D, offset, drop_threshold, BLOCK_D, D_MULTIPLE_OF_8), x, 0.0)
    h = x * factor
    if HAS_RESIDUAL:
        h += tl.load(residual_ptr + offset, mask=in_row, other=0.0).to(tl.float32)
    return h


@triton.jit
def _store_normed_row(
    normed_ptr, new_residual_ptr, mean_ptr, rstd_ptr, row, offset, in_row, y, h, mean, rstd,
):
    """The forward's stores of one row: normed, new_residual (their dtype) and the fp32 statistics."""
    tl.store(normed_ptr + offset, y.to(normed_ptr.dtype.element_ty), mask=in_row)
    tl.store(new_residual_ptr + offset, h.to(new_residual_ptr.dtype.element_ty), mask=in_row)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _dropout_add_layer_norm_fwd_kernel(
    x_ptr, residual_ptr, weight_ptr, bias_ptr, drop_path_ptr, seed_ptr,
    normed_ptr, new_residual_ptr, mean_ptr, rstd_ptr,
    D, rows_per_sample, drop_threshold, keep_scale, eps,
    BLOCK_D: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_DROP_PATH: tl.constexpr, HAS_DROPOUT: tl.constexpr, D_MULTIPLE_OF_8: tl.constexpr,
    IS_RMS_NORM: tl.constexpr,
):
    # One row per program.
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, BLOCK_D)
    in_row = col < D
    offset = row * D + col

    # Loads.
    h = _load_dropout_add(
        x_ptr, residual_ptr, drop_path_ptr, seed_ptr, row, offset, in_row, D, rows_per_sample, drop_threshold,
        keep_scale, BLOCK_D, HAS_RESIDUAL, HAS_DROP_PATH, HAS_DROPOUT, D_MULTIPLE_OF_8,
    )

    # Math.
    xhat, mean, rstd = _normalize(h, in_row, D, eps, IS_RMS_NORM)
    y = xhat
    if HAS_WEIGHT:
        y = y * tl.load(weight_ptr + col, mask=in_row, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + col, mask=in_row, other=0.0).to(tl.float32)

    # Stores.
    _store_normed_row(normed_ptr, new_residual_ptr, mean_ptr, rstd_ptr, row, offset, in_row, y, h, mean, rstd)


@triton.jit
def _dropout_add_layer_norm_fwd_loop_kernel(
    x_ptr, residual_ptr, weight_ptr, bias_ptr, drop_path_ptr, seed_ptr,
    normed_ptr, new_residual_ptr, mean_ptr, rstd_ptr,
    rows, D, rows_per_program, rows_per_sample, drop_threshold, keep_scale, eps,
    BLOCK_D: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_DROP_PATH: tl.constexpr, HAS_DROPOUT: tl.constexpr, D_MULTIPLE_OF_8: tl.constexpr,
    IS_RMS_NORM: tl.constexpr, LOAD_STAGES: tl.constexpr,
):
    # _dropout_add_layer_norm_fwd_kernel (same results) over a contiguous block of rows per program, a few
    # programs per SM, as the backward's plans: weight and bias are loaded once per program, not per row,
    # and LOAD_STAGES > 1 pipelines the row loop (the next rows' x and residual come into shared memory by
    # cp.async while this row's math runs).
    program = tl.program_id(0)
    col = tl.arange(0, BLOCK_D)
    in_row = col < D
    weight = tl.full([BLOCK_D], 1.0, tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + col, mask=in_row, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + col, mask=in_row, other=0.0).to(tl.float32)
    row_start = program.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, rows)
    for row in tl.range(row_start, row_end, num_stages=LOAD_STAGES):  # int64 rows
        offset = row * D + col

        # Loads.
        h = _load_dropout_add(
            x_ptr, residual_ptr, drop_path_ptr, seed_ptr, row, offset, in_row, D, rows_per_sample,
            drop_threshold, keep_scale, BLOCK_D, HAS_RESIDUAL, HAS_DROP_PATH, HAS_DROPOUT, D_MULTIPLE_OF_8,
        )

        # Math.
        xhat, mean, rstd = _normalize(h, in_row, D, eps, IS_RMS_NORM)
        y = xhat * weight + bias

        # Stores.
        _store_normed_row(
            normed_ptr, new_residual_ptr, mean_ptr, rstd_ptr, row, offset, in_row, y, h, mean, rstd
        )


@triton.jit
def _dropout_add_layer_norm_bwd_kernel(
    dy_ptr, dnew_residual_ptr, new_residual_ptr, weight_ptr, mean_ptr, rstd_ptr, drop_path_ptr, seed_ptr,
    dx_ptr, dresidual_ptr, dweight_partial_ptr, dbias_partial_ptr,
    rows, D, rows_per_program, rows_per_sample, drop_threshold, keep_scale,
    BLOCK_D: tl.constexpr, HAS_DNEW_RESIDUAL: tl.constexpr, STORE_DRESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROP_PATH: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    D_MULTIPLE_OF_8: tl.constexpr, IS_RMS_NORM: tl.constexpr, LOAD_STAGES: tl.constexpr,
):
    # A contiguous block of rows per program; dweight / dbias accumulate in registers, one partial row per
    # program. LOAD_STAGES > 1 has Triton pipeline the row loop: the next rows' loads go to shared memory
    # by cp.async while this row's math runs, so rows are in flight without holding registers.
    program = tl.program_id(0)
    col = tl.arange(0, BLOCK_D)
    in_row = col < D
    weight = tl.full([BLOCK_D], 1.0, tl.float32)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + col, mask=in_row, other=0.0).to(tl.float32)
    dweight = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    row_start = program.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, rows)
    for row in tl.range(row_start, row_end, num_stages=LOAD_STAGES):  # int64 rows
        offset = row * D + col

        # Loads.
        h = tl.load(new_residual_ptr + offset, mask=in_row, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offset, mask=in_row, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + row)
        rstd = tl.load(rstd_ptr + row)
        factor = keep_scale
        if HAS_DROP_PATH:
            factor = factor * tl.load(drop_path_ptr + row // rows_per_sample).to(tl.float32)

        # Math.
        xhat = tl.where(in_row, (h - mean) * rstd, 0.0)
        dh = _normalize_backward(dy * weight, xhat, rstd, D, IS_RMS_NORM, D_MULTIPLE_OF_8)
        if HAS_DNEW_RESIDUAL:
            dh += tl.load(dnew_residual_ptr + offset, mask=in_row, other=0.0).to(tl.float32)
        dx = dh * factor
        if HAS_DROPOUT:
            keep = _row_keep(seed_ptr, row, D, offset, drop_threshold, BLOCK_D, D_MULTIPLE_OF_8)
            dx = tl.where(keep, dx, 0.0)
        if HAS_WEIGHT:
            dweight += dy * xhat
        if HAS_BIAS:
            dbias += dy

        # Stores.
        tl.store(dx_ptr + offset, dx.to(dx_ptr.dtype.element_ty), mask=in_row)
        if STORE_DRESIDUAL:
            tl.store(dresidual_ptr + offset, dh.to(dresidual_ptr.dtype.element_ty), mask=in_row)
    if HAS_WEIGHT:
        tl.store(dweight_partial_ptr + program * D + col, dweight, mask=in_row)
    if HAS_BIAS:
        tl.store(dbias_partial_ptr + program * D + col, dbias, mask=in_row)
