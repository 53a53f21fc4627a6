"""linear_act's backward kernels: the elementwise pass (dpre, dbias, the recomputed activation) and
fused_mlp's dh GEMM with that pass in its epilogue (one program per tile, or persistent)."""

from __future__ import annotations

import triton
import triton.language as tl

from internvideo_fast.ops.triton_common.activations import _activation, _activation_grad
from internvideo_fast.ops.triton_common.philox import keep_element8, keep_tile8

from internvideo_fast.ops.linear_act.kernels.forward import _column_halves, _grouped_tile


@triton.jit
def _dh_epilogue(
    dh, row0, col0, cols_local, pre_ptr, seed_ptr, dpre_ptr, h_ptr, dbias_partial_ptr, tile_m, M, N,
    drop_threshold, keep_scale,
    BLOCK_M: tl.constexpr, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """fc1's backward pass over one [BLOCK_M, len(cols_local)] part of dh = dz @ weight2 (fp32, from the
    accumulator): dpre = dropout'(dh) * act'(pre), h = dropout(act(pre)), and the part's column sums of
    dpre into dbias partial row `tile_m` -- what _linear_act_bwd_kernel does from a stored dh."""
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = col0 + cols_local
    in_n = cols < N
    mask = (rows < M)[:, None] & in_n[None, :]
    base = row0.to(tl.int64) * N + col0
    offsets = tl.arange(0, BLOCK_M)[:, None] * N + cols_local[None, :]

    # Loads.
    pre = tl.load(pre_ptr + base + offsets, mask=mask, other=0.0).to(tl.float32)

    # Math (rows / cols past the end: pre = 0 and dh = 0 from the zero-filled tiles, so dpre = 0).
    dpre = dh
    if HAS_DROPOUT:
        keep = keep_element8(tl.load(seed_ptr), base + offsets, drop_threshold)
        dpre = tl.where(keep, dpre * keep_scale, 0.0)
    dpre = dpre * _activation_grad(pre, ACTIVATION)
    dpre = tl.where(mask, dpre, 0.0)
    h = _activation(pre, ACTIVATION)
    if HAS_DROPOUT:
        h = tl.where(keep, h * keep_scale, 0.0)

    # Stores.
    tl.store(dpre_ptr + base + offsets, dpre.to(dpre_ptr.dtype.element_ty), mask=mask)
    tl.store(h_ptr + base + offsets, h.to(h_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        tl.store(dbias_partial_ptr + tile_m.to(tl.int64) * N + cols, tl.sum(dpre, axis=0), mask=in_n)


@triton.jit
def _dh_epilogue_in_parts(
    dh, row0, col0, pre_ptr, seed_ptr, dpre_ptr, h_ptr, dbias_partial_ptr, tile_m, M, N, drop_threshold,
    keep_scale, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr, MAX_PART: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """_dh_epilogue over column halves of the accumulator, recursively, down to MAX_PART elements."""
    if BLOCK_M * WIDTH <= MAX_PART:
        _dh_epilogue(
            dh, row0, col0, tl.arange(0, WIDTH), pre_ptr, seed_ptr, dpre_ptr, h_ptr, dbias_partial_ptr,
            tile_m, M, N, drop_threshold, keep_scale, BLOCK_M, ACTIVATION, HAS_BIAS, HAS_DROPOUT,
        )
    else:
        left, right = _column_halves(dh, BLOCK_M, WIDTH)
        _dh_epilogue_in_parts(
            left, row0, col0, pre_ptr, seed_ptr, dpre_ptr, h_ptr, dbias_partial_ptr, tile_m, M, N,
            drop_threshold, keep_scale, BLOCK_M, WIDTH // 2, MAX_PART, ACTIVATION, HAS_BIAS, HAS_DROPOUT,
        )
        _dh_epilogue_in_parts(
            right, row0, col0 + WIDTH // 2, pre_ptr, seed_ptr, dpre_ptr, h_ptr, dbias_partial_ptr, tile_m,
            M, N, drop_threshold, keep_scale, BLOCK_M, WIDTH // 2, MAX_PART, ACTIVATION, HAS_BIAS,
            HAS_DROPOUT,
        )


@triton.jit
def _fused_mlp_dh_kernel(
    dz_desc, weight2_desc, pre_ptr, seed_ptr, dpre_ptr, h_ptr, dbias_partial_ptr,
    M, N, K, drop_threshold, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, MAX_PART: tl.constexpr,
):
    # fused_mlp's backward through fc1 in one pass: dh = dz [M, K] @ weight2 [K, N] (K = fc2's outputs,
    # N = hidden) tile by tile through TMA descriptors, then the elementwise pass in the epilogue, so dh is
    # never stored and read back. dbias partials: one row per tile row (programs write disjoint parts).
    row0, col0 = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = dz_desc.load([row0, k * BLOCK_K])
        b = weight2_desc.load([k * BLOCK_K, col0])
        acc = tl.dot(a, b, acc)
    # Philox's temporaries (dropout) need parts half as large.
    PART: tl.constexpr = MAX_PART // 2 if HAS_DROPOUT else MAX_PART
    _dh_epilogue_in_parts(
        acc, row0, col0, pre_ptr, seed_ptr, dpre_ptr, h_ptr, dbias_partial_ptr, row0 // BLOCK_M, M, N,
        drop_threshold, keep_scale, BLOCK_M, BLOCK_N, PART, ACTIVATION, HAS_BIAS, HAS_DROPOUT,
    )


@triton.jit
def _fused_mlp_dh_persistent_kernel(
    dz_desc, weight2_desc, pre_ptr, seed_ptr, dpre_ptr, h_ptr, dbias_partial_ptr,
    M, N, K, drop_threshold, keep_scale, programs,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, MAX_PART: tl.constexpr,
):
    # _fused_mlp_dh_kernel made persistent, as _linear_act_fwd_persistent_kernel: `programs` walk the tiles
    # with the tile and K loops flattened, so the next tile's loads overlap this tile's epilogue (which
    # here also loads pre and computes act and act': the longest epilogue of the MLP's kernels).
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    PART: tl.constexpr = MAX_PART // 2 if HAS_DROPOUT else MAX_PART
    epilogue_tile = tl.program_id(0) - programs
    for tile in tl.range(tl.program_id(0), tiles, programs, flatten=True):
        row0, col0 = _grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, k_steps):
            a = dz_desc.load([row0, k * BLOCK_K])
            b = weight2_desc.load([k * BLOCK_K, col0])
            acc = tl.dot(a, b, acc)
        epilogue_tile += programs
        row0, col0 = _grouped_tile(epilogue_tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        _dh_epilogue_in_parts(
            acc, row0, col0, pre_ptr, seed_ptr, dpre_ptr, h_ptr, dbias_partial_ptr, row0 // BLOCK_M, M, N,
            drop_threshold, keep_scale, BLOCK_M, BLOCK_N, PART, ACTIVATION, HAS_BIAS, HAS_DROPOUT,
        )


@triton.jit
def _linear_act_bwd_kernel(
    dy_ptr, pre_ptr, seed_ptr, dpre_ptr, act_ptr, dbias_partial_ptr,
    M, N, rows_per_program, drop_threshold, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, STORE_ACT: tl.constexpr, LOAD_STAGES: tl.constexpr,
    STORE_DPRE: tl.constexpr = True, N_MULTIPLE_OF_8: tl.constexpr = False,
):
    # Program (column block, row chunk): dpre = dropout'(dy) * act'(pre) over rows_per_program rows of
    # BLOCK_N columns (the dropout mask regenerated from the seed); dbias of the chunk accumulates in
    # registers and lands in one partial row. STORE_ACT also writes act_out = dropout(act(pre)) -- the
    # forward's output, recomputed for the next layer's weight gradient (fused_mlp) in the same pass.
    # STORE_DPRE False (activation "none", no dropout: dpre is dy itself) leaves only dbias: a column sum.
    col_block = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = cols < N
    # dbias accumulates elementwise in a register tile and is reduced over its rows once, after the loop: a
    # reduction per iteration (across threads, through shared memory and a barrier) stalled the stream.
    dbias_tile = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    row_start = chunk.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    # LOAD_STAGES > 1: Triton pipelines this loop, the next row blocks' loads going to shared memory by
    # cp.async (16-byte aligned rows) while this block's math runs.
    for start in tl.range(row_start, row_end, BLOCK_M, num_stages=LOAD_STAGES):  # int64 rows
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & in_n[None, :]
        offsets = rows[:, None] * N + cols[None, :]

        # Loads.
        dpre = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if ACTIVATION != "none" or STORE_ACT:
            pre = tl.load(pre_ptr + offsets, mask=mask, other=0.0).to(tl.float32)

        # Math (masked lanes: dy = 0, so dpre = 0).
        if HAS_DROPOUT:
            if N_MULTIPLE_OF_8:  # one Philox call per eight elements of a row
                keep = keep_tile8(tl.load(seed_ptr), (rows * N + col_block * BLOCK_N) >> 3, drop_threshold,
                                  BLOCK_M, BLOCK_N)
            else:
                keep = keep_element8(tl.load(seed_ptr), offsets, drop_threshold)
            dpre = tl.where(keep, dpre * keep_scale, 0.0)
        if ACTIVATION != "none":
            dpre = dpre * _activation_grad(pre, ACTIVATION)
        if HAS_BIAS:
            dbias_tile += dpre

        # Stores.
        if STORE_DPRE:
            tl.store(dpre_ptr + offsets, dpre.to(dpre_ptr.dtype.element_ty), mask=mask)
        if STORE_ACT:
            h = _activation(pre, ACTIVATION)
            if HAS_DROPOUT:
                h = tl.where(keep, h * keep_scale, 0.0)
            tl.store(act_ptr + offsets, h.to(act_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        tl.store(dbias_partial_ptr + chunk * N + cols, tl.sum(dbias_tile, axis=0), mask=in_n)
