"""linear_act's forward kernels: the GEMM with bias, activation and dropout in its epilogue (pointer loads,
TMA loads, persistent TMA), and the elementwise activation pass of the cuBLAS plan."""

from __future__ import annotations

import triton
import triton.language as tl

from internvideo_fast.ops.triton_common.activations import _activation
from internvideo_fast.ops.triton_common.philox import keep_block8, keep_element8


@triton.jit
def _linear_act_epilogue(
    acc, row0, col0, cols_local, bias_ptr, y_ptr, pre_ptr, seed_ptr, M, N, drop_threshold, keep_scale,
    BLOCK_M: tl.constexpr, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, TMA_STORE: tl.constexpr = False,
):
    """Bias, pre-activation store, activation, dropout and store of one [BLOCK_M, len(cols_local)] part of
    a tile whose top-left element is (row0, col0). With TMA_STORE, y_ptr and pre_ptr are tensor descriptors
    whose block is this part: the TMA unit stores from shared memory, asynchronously, and clips the rows
    and columns past the end itself."""
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = col0 + cols_local
    in_n = cols < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=in_n, other=0.0).to(tl.float32)[None, :]
    # int64 tile base, int32 offsets inside the tile (cheaper in registers than int64 offsets).
    base = row0.to(tl.int64) * N + col0
    offsets = tl.arange(0, BLOCK_M)[:, None] * N + cols_local[None, :]
    mask = (rows < M)[:, None] & in_n[None, :]
    if STORE_PRE:
        if TMA_STORE:
            pre = acc.to(pre_ptr.dtype)
            pre_ptr.store([row0, col0], pre)
        else:
            pre = acc.to(pre_ptr.dtype.element_ty)
            tl.store(pre_ptr + base + offsets, pre, mask=mask)
        # The backward sees the rounded pre-activation: apply the activation to the same value.
        acc = pre.to(tl.float32)
    y = _activation(acc, ACTIVATION)
    if HAS_DROPOUT:
        # Keyed on the output element's flat index row * N + col (int64), as dropout_add_layer_norm.
        y = tl.where(keep_element8(tl.load(seed_ptr), base + offsets, drop_threshold), y * keep_scale, 0.0)
    if TMA_STORE:
        y_ptr.store([row0, col0], y.to(y_ptr.dtype))
    else:
        tl.store(y_ptr + base + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _column_halves(acc, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr):
    """The left and right column halves of a [BLOCK_M, WIDTH] register tile (a relabelling, no data moves)."""
    return tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, WIDTH // 2)), (0, 2, 1)))


@triton.jit
def _linear_act_epilogue_in_parts(
    acc, row0, col0, bias_ptr, y_ptr, pre_ptr, seed_ptr, M, N, drop_threshold, keep_scale,
    BLOCK_M: tl.constexpr, WIDTH: tl.constexpr, MAX_PART: tl.constexpr, ACTIVATION: tl.constexpr,
    HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    TMA_STORE: tl.constexpr = False,
):
    """The epilogue of a [BLOCK_M, WIDTH] accumulator, split into column halves (recursively) until a part
    holds at most MAX_PART elements: the activation's temporaries (and Philox's, with dropout) on top of a
    whole 128 x 128 accumulator spill registers at 8 warps (measured with the sm_90a check); a split of the
    wgmma accumulator is a register-only relabelling, so parts cost nothing."""
    if BLOCK_M * WIDTH <= MAX_PART:
        _linear_act_epilogue(
            acc, row0, col0, tl.arange(0, WIDTH), bias_ptr, y_ptr, pre_ptr, seed_ptr, M, N, drop_threshold,
            keep_scale, BLOCK_M, ACTIVATION, HAS_BIAS, STORE_PRE, HAS_DROPOUT, TMA_STORE,
        )
    else:
        left, right = _column_halves(acc, BLOCK_M, WIDTH)
        _linear_act_epilogue_in_parts(
            left, row0, col0, bias_ptr, y_ptr, pre_ptr, seed_ptr, M, N, drop_threshold, keep_scale,
            BLOCK_M, WIDTH // 2, MAX_PART, ACTIVATION, HAS_BIAS, STORE_PRE, HAS_DROPOUT, TMA_STORE,
        )
        _linear_act_epilogue_in_parts(
            right, row0, col0 + WIDTH // 2, bias_ptr, y_ptr, pre_ptr, seed_ptr, M, N, drop_threshold,
            keep_scale,
            BLOCK_M, WIDTH // 2, MAX_PART, ACTIVATION, HAS_BIAS, STORE_PRE, HAS_DROPOUT, TMA_STORE,
        )


@triton.jit
def _linear_act_store_tile(
    acc, row0, col0, bias_ptr, y_ptr, pre_ptr, seed_ptr, M, N, drop_threshold, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr,
    STORE_PRE: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """The epilogue of one output tile: always in column halves (a whole 64 x 64 tile with dropout still
    spills at 4 warps), and then in parts of at most 128 x 32 elements, 128 x 8 with dropout (Philox: ten
    rounds of 32-bit multiplies per element)."""
    MAX_PART: tl.constexpr = 128 * 8 if HAS_DROPOUT else 128 * 32
    HALF: tl.constexpr = BLOCK_M * BLOCK_N // 2
    PART: tl.constexpr = HALF if HALF < MAX_PART else MAX_PART
    _linear_act_epilogue_in_parts(
        acc, row0, col0, bias_ptr, y_ptr, pre_ptr, seed_ptr, M, N, drop_threshold, keep_scale,
        BLOCK_M, BLOCK_N, PART, ACTIVATION, HAS_BIAS, STORE_PRE, HAS_DROPOUT,
    )


@triton.jit
def _grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row0, col0) of program `pid`'s output tile. Programs go in groups of GROUP_M tile rows, so that a
    wave of programs re-reads the same weight tiles from L2."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * tiles_n
    first_tile_m = (pid // programs_per_group) * GROUP_M
    group_size_m = min(tiles_m - first_tile_m, GROUP_M)
    tile_m = first_tile_m + ((pid % programs_per_group) % group_size_m)
    tile_n = (pid % programs_per_group) // group_size_m
    return tile_m * BLOCK_M, tile_n * BLOCK_N


@triton.jit
def _linear_act_fwd_kernel(
    x_ptr, weight_ptr, bias_ptr, seed_ptr, y_ptr, pre_ptr,
    M, N, K, drop_threshold, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
):
    # x [M, K] and weight [N, K] row-major; y, pre [M, N] row-major. One BLOCK_M x BLOCK_N tile of y per
    # program, loaded through pointers (any alignment).
    row0, col0 = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    # Loads clamp rows / cols past the end to the last one (their results are never stored), so only the
    # K tail needs a mask inside the loop. int64 tile bases, int32 offsets inside the tile.
    rows_local = tl.minimum(tl.arange(0, BLOCK_M), M - 1 - row0)
    cols_local = tl.minimum(tl.arange(0, BLOCK_N), N - 1 - col0)
    depth = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + row0.to(tl.int64) * K + (rows_local[:, None] * K + depth[None, :])
    w_ptrs = weight_ptr + col0.to(tl.int64) * K + (cols_local[None, :] * K + depth[:, None])  # weight.T tile

    # Loads + math: the K loop.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=depth[None, :] < k_left, other=0.0)
        b = tl.load(w_ptrs, mask=depth[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    _linear_act_store_tile(
        acc, row0, col0, bias_ptr, y_ptr, pre_ptr, seed_ptr, M, N, drop_threshold, keep_scale,
        BLOCK_M, BLOCK_N, ACTIVATION, HAS_BIAS, STORE_PRE, HAS_DROPOUT,
    )


@triton.jit
def _linear_act_fwd_tma_kernel(
    x_desc, weight_desc, bias_ptr, seed_ptr, y_ptr, pre_ptr,
    M, N, K, drop_threshold, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
):
    # The same tile as _linear_act_fwd_kernel, with x and weight tiles loaded by the Hopper TMA unit from
    # tensor descriptors (block [BLOCK_M, BLOCK_K] and [BLOCK_N, BLOCK_K]): no address arithmetic or masks
    # in registers (the unit zero-fills out-of-bounds rows and the K tail), which leaves registers for
    # larger tiles. Needs 16-byte aligned rows (see _tma_rows_ok).
    row0, col0 = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = x_desc.load([row0, k * BLOCK_K])
        b = weight_desc.load([col0, k * BLOCK_K])
        acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)
    _linear_act_store_tile(
        acc, row0, col0, bias_ptr, y_ptr, pre_ptr, seed_ptr, M, N, drop_threshold, keep_scale,
        BLOCK_M, BLOCK_N, ACTIVATION, HAS_BIAS, STORE_PRE, HAS_DROPOUT,
    )


@triton.jit
def _linear_act_fwd_persistent_kernel(
    x_desc, weight_desc, bias_ptr, seed_ptr, y_desc, pre_desc,
    M, N, K, drop_threshold, keep_scale, programs,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_N: tl.constexpr, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    # _linear_act_fwd_tma_kernel made persistent: `programs` (one per SM) walk the output tiles in the same
    # grouped order, tile, tile + programs, ... With K = 768 or 1024 a tile has only 12-16 K steps, so a
    # one-tile program spends much of its life filling the pipeline and in the epilogue (bias, activation,
    # stores) with the tensor cores idle. `flatten` fuses the two loops into one that Triton pipelines
    # across tile boundaries, so the next tile's TMA loads are in flight during this tile's epilogue, whose
    # stores go out through TMA too (y_desc / pre_desc, block [BLOCK_M, EPILOGUE_N]: one epilogue part)
    # (Triton's persistent-matmul tutorial; cuBLAS does the same).
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    # The epilogue recomputes its tile from its own counter, so that it does not depend on values the
    # pipelined loads of the next tile have already moved on from.
    epilogue_tile = tl.program_id(0) - programs
    for tile in tl.range(tl.program_id(0), tiles, programs, flatten=True):
        row0, col0 = _grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, k_steps):
            a = x_desc.load([row0, k * BLOCK_K])
            b = weight_desc.load([col0, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)
        epilogue_tile += programs
        row0, col0 = _grouped_tile(epilogue_tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        _linear_act_epilogue_in_parts(
            acc, row0, col0, bias_ptr, y_desc, pre_desc, seed_ptr, M, N, drop_threshold, keep_scale,
            BLOCK_M, BLOCK_N, BLOCK_M * EPILOGUE_N, ACTIVATION, HAS_BIAS, STORE_PRE, HAS_DROPOUT, True,
        )



@triton.jit
def _activation_dropout_kernel(
    pre_ptr, y_ptr, seed_ptr, numel, drop_threshold, keep_scale,
    BLOCK: tl.constexpr, ACTIVATION: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    # y = dropout(act(pre)) over the flat [M, N] elements: the forward's epilogue for the plan whose GEMM is
    # torch.addmm's. The flat index is row * N + col, so the mask is the fused epilogue's. In place (y_ptr
    # == pre_ptr) is allowed: each element is read before it is written, by the same program.
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < numel

    # Loads.
    pre = tl.load(pre_ptr + offsets, mask=in_range, other=0.0).to(tl.float32)

    # Math.
    y = _activation(pre, ACTIVATION)
    if HAS_DROPOUT:
        # BLOCK is a multiple of 8: one Philox call per eight elements, whatever N.
        keep = keep_block8(tl.load(seed_ptr), tl.program_id(0).to(tl.int64) * BLOCK, drop_threshold, BLOCK)
        y = tl.where(keep, y * keep_scale, 0.0)

    # Stores.
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=in_range)
