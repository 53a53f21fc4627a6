"""Fused dropout + drop-path + residual add + LayerNorm or RMSNorm (the pre-norm transformer block's seam).

For ``x, residual [..., D]`` flattened to ``rows = x.numel() / D`` rows, a per-sample drop-path scale
``s [B]`` (``B = x.shape[0]``, each sample owning ``rows / B`` consecutive rows; 1 when absent), a dropout
probability ``p`` and a keep mask ``k`` (1 where kept):

    h      = residual + x * k / (1 - p) * s[sample]        (new_residual; residual None: no add)
    mean   = sum(h) / D,      rstd = 1 / sqrt(sum((h - mean)^2) / D + eps)
    xhat   = (h - mean) * rstd
    normed = xhat * weight + bias                           (weight / bias None: 1 / 0)

RMSNorm (``dropout_add_rms_norm``, as flash-attn's) is the same with ``mean = 0``: ``rstd = 1 / sqrt(sum(h^2)
/ D + eps)``, ``xhat = h * rstd``, and no ``sum(g) / D`` term in the backward's ``dh``.

Backward, for ``dy = d normed`` and ``dr = d new_residual`` (from the residual stream's later uses):

    g         = dy * weight
    dh        = rstd * (g - xhat * sum(g * xhat) / D - sum(g) / D) + dr
    dresidual = dh,     dx = dh * k / (1 - p) * s[sample]      (no dropout, no drop path: dx is dresidual,
                                                             stored once)
    dweight   = sum_rows(dy * xhat),     dbias = sum_rows(dy)

Inside the kernels every value is fp32 whatever the input dtype (fp32 / fp16 / bf16); ``normed`` and
``new_residual`` are stored in x's dtype. ``dweight`` / ``dbias`` are summed per program into a
``[programs, D]`` fp32 buffer and reduced with ``torch.sum(0)``, so they are deterministic. The backward's
warps, programs per SM and load stages are timed on the GPU by a LaunchTuner (``_BWD_PLAN_SHAPES``); the
plan fixes how rows split over programs, so across processes dweight / dbias are bitwise equal under
``IVF_AUTOTUNE=0``. The forward runs one row per program, or (a tuner candidate, ``_FWD_LOOP_PLAN_SHAPES``)
the backward's structure: a block of rows per program, weight and bias loaded once, the row loop pipelined.

The dropout mask: element ``i`` of the flattened x (``i = row * D + col``) is kept when its 16-bit draw
is at least ``t = dropout_threshold(p) = min(round(p * 2**16), 2**16 - 1)``. The draw is half ``i % 2`` (0:
low, 1: high 16 bits) of word ``(i // 2) % 4`` of ``tl.randint4x(seed, i // 8)``: Triton's Philox4x32-10
with counter ``(i // 8 mod 2**32, i // 8 >> 32, 0, 0)`` and key ``(seed mod 2**32, seed >> 32)``. So one
Philox call serves eight elements, the eight 16-byte-aligned bf16 values a thread holds, and the test is an
integer compare; the kept fraction is ``1 - t / 2**16``, within ``2**-17`` of ``1 - p`` (flash-attn
quantizes p to 8 bits), and kept values are scaled by ``1 / (1 - p)``. Why so few draws: at one call per
element the generator, not memory, bounded the kernels on an H100 (2026-11-26: the forward took 0.055 ms for
8 x 1568 x 768 bf16 rows; 0.030 ms at one call per four elements), and at one call per four, with a float
compare, the mask was still 192 of the backward loop's 504 SASS instructions per row and thread (sm_90a,
BLOCK_D 1024, 4 warps; 312 without dropout). When D is a multiple of 8 a row's elements come in whole
groups, so the kernels draw each group once; otherwise each element draws its group (the same mask, eight
times the work). The mask is never stored: the backward kernel regenerates it from the seed, and
``dropout_keep_mask(seed, shape, p, elements_per_draw=8)`` reproduces it bitwise in PyTorch, so the
reference and the Triton kernel drop the same elements for the same seed. The seed is a one-element int64
tensor on x's device (no host sync; CUDA-graph and torch.compile friendly).

Rows wider than ``MAX_KERNEL_D`` run on the reference.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from internvideo_fast.ops.autotuning import launch_tuner, length_bucket
from internvideo_fast.ops.backend import available_backends, select_backend
from internvideo_fast.ops.dispatch import eager_op
from internvideo_fast.ops.kernel_registry import KernelConfig, TritonKernelSpec, register_triton_kernel
from internvideo_fast.ops.launch_math import cdiv, sm_count
from internvideo_fast.ops.outputs import new_output
from internvideo_fast.ops.seeds import seed_tensor
from internvideo_fast.ops.tube_mask import philox4x32_10_reference

OP_NAME = "dropout_add_layer_norm"
# One row lives in registers; the widest config below.
MAX_KERNEL_D = 4096
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Triton's uint32 -> [0, 1) scale (triton.language.random.uint_to_uniform_float).
_UNIFORM_SCALE = 4.6566127342e-10


# ----------------------------------------------------------------------------------------------------
# Triton kernels: math (pure functions of fp32 values) apart from loads and stores
# ----------------------------------------------------------------------------------------------------
@triton.jit
def keep_element(seed, offset, dropout_p):
    """1 where the element at flat `offset` (int64, any shape) survives dropout: ``tl.rand(seed, offset) >=
    dropout_p``, one Philox call per element. The rule of cross_attention's kernels, whose attention tiles
    would spill registers holding four words per element; :func:`dropout_keep_mask` reproduces it."""
    return tl.rand(seed, offset) >= dropout_p


@triton.jit
def _halves(words, threshold):
    """The keep flags of the low and high 16-bit halves of uint32 `words`: ``[..., 2]``, half last."""
    bound = tl.cast(threshold, tl.uint32)  # threshold may be a constexpr (Triton specializes 1)
    return tl.join((words & 0xFFFF) >= bound, (words >> 16) >= bound)


@triton.jit
def keep_element8(seed, offset, threshold):
    """This op's rule (see the module docstring) for elements at any flat offsets (int64): half
    ``offset % 2`` of word ``(offset // 2) % 4`` of the Philox call for group ``offset // 8``, against the
    16-bit `threshold`; ``dropout_keep_mask(..., elements_per_draw=8)`` reproduces it."""
    w0, w1, w2, w3 = tl.randint4x(seed, offset >> 3)
    odd_word = (offset & 2) != 0
    word = tl.where((offset & 4) != 0, tl.where(odd_word, w3, w2), tl.where(odd_word, w1, w0))
    half = (word >> ((offset & 1) * 16).to(tl.uint32)) & 0xFFFF
    return half >= tl.cast(threshold, tl.uint32)


@triton.jit
def keep_block8(seed, first, threshold, BLOCK: tl.constexpr):
    """keep_element8(seed, first + arange(BLOCK), threshold) for `first` a multiple of 8: one Philox call
    per group of eight."""
    w0, w1, w2, w3 = tl.randint4x(seed, (first >> 3) + tl.arange(0, BLOCK // 8))
    # join stacks along a new last dim, so join(join(w0, w2), join(w1, w3))[g, a, b] is word 2a + b of
    # group g, and _halves adds the half: row-major, the element order.
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [BLOCK // 2])
    return tl.reshape(_halves(words, threshold), [BLOCK])


@triton.jit
def keep_tile8(seed, first_groups, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """keep_element8 over a [BLOCK_M, BLOCK_N] tile whose row r starts a group of eight at flat offset
    8 * first_groups[r] (int64 [BLOCK_M]): keep_block8 row by row, one Philox call per group of eight."""
    w0, w1, w2, w3 = tl.randint4x(seed, first_groups[:, None] + tl.arange(0, BLOCK_N // 8)[None, :])
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [BLOCK_M, BLOCK_N // 2])
    return tl.reshape(_halves(words, threshold), [BLOCK_M, BLOCK_N])


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


# Launch configurations by row width: about 8 fp32 values of a row per thread at the widest.
_TRITON_CONFIGS = tuple(
    KernelConfig({"BLOCK_D": block}, num_warps=warps, num_stages=1)
    for block, warps in ((64, 1), (128, 1), (256, 2), (512, 4), (1024, 4), (2048, 8), (4096, 8))
)
# The AOT check compiles every feature switched on, with LayerNorm (the largest kernel); the launcher switches
# off the features a call lacks and RMSNorm drops the mean, which only removes code.
_ALL_FEATURES = dict(HAS_WEIGHT=True, HAS_BIAS=True, HAS_DROP_PATH=True, HAS_DROPOUT=True, IS_RMS_NORM=False)
_ALL_FEATURES_FWD = dict(_ALL_FEATURES, HAS_RESIDUAL=True)
_ALL_FEATURES_BWD = dict(_ALL_FEATURES, HAS_DNEW_RESIDUAL=True, STORE_DRESIDUAL=True)
_MASK_PATHS = (True, False)  # D_MULTIPLE_OF_8: the group-wise and the per-element mask
_FWD_POINTERS = {
    "x_ptr": "*bf16", "residual_ptr": "*bf16", "weight_ptr": "*fp32", "bias_ptr": "*fp32",
    "drop_path_ptr": "*fp32", "seed_ptr": "*i64",
    "normed_ptr": "*bf16", "new_residual_ptr": "*bf16", "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
}
_FWD_SCALARS = {"drop_threshold": "i32", "keep_scale": "fp32", "eps": "fp32"}
register_triton_kernel(
    TritonKernelSpec(
        name="dropout_add_layer_norm_fwd",
        kernel=_dropout_add_layer_norm_fwd_kernel,
        signature={**_FWD_POINTERS, "D": "i32", "rows_per_sample": "i32", **_FWD_SCALARS},
        configs=tuple(
            KernelConfig(dict(c.constexprs, **_ALL_FEATURES_FWD, D_MULTIPLE_OF_8=aligned), c.num_warps,
                         c.num_stages)
            for c in _TRITON_CONFIGS for aligned in _MASK_PATHS
        ),
    )
)
# Forward plans, timed by a LaunchTuner on the GPU like the backward's: the default is the kernel above (one
# row per program; the only forward up to gpu-check run 6, where it reached 71% (D = 768) and 80% (D = 1024)
# of copy bandwidth on an H100, replayed from a CUDA graph). The others run the row loop of
# _dropout_add_layer_norm_fwd_loop_kernel, the structure that took the backward from 55% to 69-78%: a few
# programs per SM, weight and bias loaded once per program, and the row loop pipelined through shared
# memory. Offered at the ViT widths' blocks (D 257-1024); not yet timed on a GPU.
# The last two put a row on a quarter of the warps: one warp at BLOCK_D 1024, 32 values per thread. Its
# sums then never cross warps (no barriers in the row loop), and the per-row work (statistics, addresses,
# loop control) runs on one warp, not four: 912 SASS instructions per row against 4 x 367 (sm_90a, every
# feature on, aligned). 168 registers, no spills (Triton 3.8 and 3.6, whole mask groups), so 12 programs
# fit an SM. The backward's one-warp plans need aligned rows (see _BWD_PLAN_SHAPES).
# (warps multiplier, programs per SM, load stages)
_FWD_LOOP_PLAN_SHAPES = ((1, 4, 1), (1, 4, 3), (1, 8, 2), (1, 8, 3), (2, 4, 3), (1, 4, 4), (0.25, 12, 1),
                         (0.25, 12, 3))
# Values of a row per thread in a plan with fewer warps than the width's default, at most: more spill with
# the sm_90a check. The backward's plans above 16 need 16-byte aligned rows (it spills unaligned there).
_MAX_VALUES_PER_THREAD = 32
_BWD_UNALIGNED_MAX_VALUES_PER_THREAD = 16
_FWD_LOOP_BLOCK_DS = (512, 1024)
# Tests set this to a plan index (0: the default) to run that plan where the tuner would run the default.
_FORCE_FWD_PLAN: int | None = None


def _forward_loop_plans(config: KernelConfig) -> list[tuple[KernelConfig, int]]:
    """The loop kernel's plans of one row width as (config, programs per SM); none outside
    _FWD_LOOP_BLOCK_DS."""
    if config.constexprs["BLOCK_D"] not in _FWD_LOOP_BLOCK_DS:
        return []
    return _row_loop_plans(config, _FWD_LOOP_PLAN_SHAPES)


# Backward plans per row width, timed by a LaunchTuner on the GPU (the first is the default everywhere
# else): (config, programs per SM). The H100 run of 2026-11-26 measured the default at 55% of copy bandwidth
# at D = 768: BLOCK_D = 1024 at 4 warps holds 8 values of each row vector per thread, with one row in
# flight per program. Twice the warps halve the values per thread; more programs per SM put more rows in
# flight where registers allow (sm_90a check, dropout on: 64 registers in the 16-aligned specialization
# the ViT widths launch with, 105-125 in the general one). Load stages have Triton pipeline the row loop:
# the next rows' loads go to shared memory by cp.async (aligned rows only) instead of registers; at
# D = 1024, 3 stages take 80 registers and 12 KB of shared memory. In gpu-check run 4 (H100, 2026-11-27)
# the pipelined plans won all three ViT shapes (D = 768: 0.046 ms against the default's 0.064, about 69%
# of copy bandwidth; D = 1024: 0.060 against 0.071) and 8 warps x 8 per SM never did, so that plan gave
# its place to deeper pipelines: 3 stages at 8 per SM and 4 stages at 4 per SM. Run 5 timed those within
# 0.3-12% of the winner, not past it. Each row's sums cross warps through shared memory, between barriers,
# before its stores (2 barriers per row since the two sums are paired, 4 in runs 4 and 5); half the warps
# per row halve the threads that meet at each barrier (the last two plans; at D = 1024 they take 198-212
# registers, so about 5 programs fit an SM, not 8).
# A multi-row kernel (a [2, BLOCK_D] tile per iteration: one set of barriers for two rows) was a candidate
# from the eighth session to run 6, which timed it 19-61% slower than the winner at D 768 and 1024 in bf16
# (ahead by 0.3%, within noise, only in fp32); it was removed.
# The last two put a row on one warp at BLOCK_D 1024 (32 values per thread), as the forward's last two do:
# no barriers per row, and 1171 SASS instructions per row on one warp against 4 x 428 on four (dropout and
# drop path on). 254 registers at 3 stages (Triton 3.8 and 3.6), so 8 programs fit an SM. Unaligned, that
# spills (12-320 B), so they run only on 16-byte aligned rows (_rows_aligned16).
# (warps multiplier, programs per SM, load stages)
_BWD_PLAN_SHAPES = ((1, 4, 1), (2, 4, 1), (1, 8, 1), (1, 4, 3), (1, 8, 2), (2, 4, 3), (1, 8, 3), (1, 4, 4),
                    (0.5, 8, 3), (0.5, 8, 1), (0.25, 8, 1), (0.25, 8, 3))
# Tests set this to a plan index to run that plan where the tuner would run the default.
_FORCE_BWD_PLAN: int | None = None


def _row_loop_plans(config: KernelConfig, shapes) -> list[tuple[KernelConfig, int]]:
    """(config, programs per SM) of a row-loop kernel for one row width, one per distinct (warps, programs
    per SM, load stages) of `shapes`, in their order. At most 8 warps: at 16 (512 threads) an SM caps a
    thread at 128 registers, and D = 4096 spills there (measured with the sm_90a check)."""
    plans = {}
    block_d = config.constexprs["BLOCK_D"]
    for factor, per_sm, stages in shapes:
        warps = max(1, min(8, int(config.num_warps * factor)))
        if factor < 1 and not 512 <= block_d <= _MAX_VALUES_PER_THREAD * 32 * warps:
            # Fewer warps than the width's default spill outside this range with the sm_90a check (BLOCK_D
            # = 256 at 1 warp: 8 B, Triton 3.6, unaligned); inside it, see _plan_fits_width and
            # _backward_needs_aligned_rows.
            continue
        plan = KernelConfig(dict(config.constexprs, LOAD_STAGES=stages), num_warps=warps, num_stages=1)
        plans.setdefault((warps, per_sm, stages), (plan, per_sm))
    return list(plans.values())


def _backward_plans(config: KernelConfig) -> list[tuple[KernelConfig, int]]:
    """The backward's plans of one row width, default first."""
    return _row_loop_plans(config, _BWD_PLAN_SHAPES)


def _values_per_thread(config: KernelConfig) -> int:
    return config.constexprs["BLOCK_D"] // (32 * config.num_warps)


def _backward_needs_aligned_rows(config: KernelConfig) -> bool:
    return _values_per_thread(config) > _BWD_UNALIGNED_MAX_VALUES_PER_THREAD


def _plan_label(config: KernelConfig, per_sm: int) -> str:
    return f"w{config.num_warps}_{per_sm}per_sm_ld{config.constexprs['LOAD_STAGES']}"


def _distinct_configs(configs) -> list[KernelConfig]:
    return list({config.label(): config for config in configs}.values())


def _plan_fits_width(config: KernelConfig, D: int) -> bool:
    """Load stages and more than 16 values per thread only where rows come in whole mask groups (D a
    multiple of 8). Other rows (16-bit) are never 16-byte aligned, so nothing is pipelined through cp.async,
    and there the per-element mask's eight Philox draws per value spilled with Triton 3.6 (sm_90a check):
    4-8 B at 2-4 stages, 276-484 B at 32 values per thread."""
    return D % 8 == 0 or (config.constexprs["LOAD_STAGES"] == 1 and _values_per_thread(config) <= 16)


def _register_row_loop_kernel(name, kernel, signature, features, plans_of, needs_aligned_rows=None) -> None:
    """A row-loop kernel for the AOT check: every plan of every width, with the group-wise mask and, where
    _plan_fits_width allows it, the per-element one. Plans for which `needs_aligned_rows` holds go in a
    second entry, ``{name}_aligned_rows``, compiled in the 16-aligned specialization alone (as launched)."""
    plans = _distinct_configs(plan for config in _TRITON_CONFIGS for plan, _ in plans_of(config))
    aligned_rows = [plan for plan in plans if needs_aligned_rows is not None and needs_aligned_rows(plan)]
    general = [plan for plan in plans if plan not in aligned_rows]
    entries = ((name, general, False), (f"{name}_aligned_rows", aligned_rows, True))
    for entry, entry_plans, aligned_only in entries:
        if not entry_plans:
            continue
        register_triton_kernel(
            TritonKernelSpec(
                name=entry,
                kernel=kernel,
                signature=signature,
                configs=tuple(  # aligned rows come in whole mask groups: the group-wise mask alone
                    KernelConfig(dict(plan.constexprs, **features, D_MULTIPLE_OF_8=aligned), plan.num_warps,
                                 plan.num_stages)
                    for plan in entry_plans for aligned in ((True,) if aligned_only else _MASK_PATHS)
                    if _plan_fits_width(plan, 8 if aligned else 1)
                ),
                also_aligned=not aligned_only,  # where the load stages pipeline (the ViT widths)
                aligned_only=aligned_only,
            )
        )


_register_row_loop_kernel(
    "dropout_add_layer_norm_fwd_loop", _dropout_add_layer_norm_fwd_loop_kernel,
    {**_FWD_POINTERS, "rows": "i32", "D": "i32", "rows_per_program": "i32", "rows_per_sample": "i32",
     **_FWD_SCALARS},
    _ALL_FEATURES_FWD, _forward_loop_plans,
)
_BWD_SIGNATURE = {
    "dy_ptr": "*bf16", "dnew_residual_ptr": "*bf16", "new_residual_ptr": "*bf16", "weight_ptr": "*fp32",
    "mean_ptr": "*fp32", "rstd_ptr": "*fp32", "drop_path_ptr": "*fp32", "seed_ptr": "*i64",
    "dx_ptr": "*bf16", "dresidual_ptr": "*bf16", "dweight_partial_ptr": "*fp32", "dbias_partial_ptr": "*fp32",
    "rows": "i32", "D": "i32", "rows_per_program": "i32", "rows_per_sample": "i32",
    "drop_threshold": "i32", "keep_scale": "fp32",
}
_register_row_loop_kernel(
    "dropout_add_layer_norm_bwd", _dropout_add_layer_norm_bwd_kernel, _BWD_SIGNATURE, _ALL_FEATURES_BWD,
    _backward_plans, _backward_needs_aligned_rows,
)


def _triton_config(D: int) -> KernelConfig:
    return next(config for config in _TRITON_CONFIGS if D <= config.constexprs["BLOCK_D"])


@functools.lru_cache(maxsize=None)
def _labelled_backward_plans(D: int, rows_aligned16: bool = False
                             ) -> tuple[tuple[str, KernelConfig, int], ...]:
    """(label, config, programs per SM) of each backward plan for rows of width D (``rows_aligned16``: with
    the plans that need 16-byte aligned rows): built once per width, not on every call (host time)."""
    plans = _backward_plans(_triton_config(D))
    return tuple((_plan_label(config, per_sm), config, per_sm) for config, per_sm in plans
                 if _plan_fits_width(config, D)
                 and (rows_aligned16 or not _backward_needs_aligned_rows(config)))


def _rows_aligned16(D: int, *tensors: torch.Tensor | None) -> bool:
    """Whether every row of these tensors starts 16-byte aligned: D a multiple of 16 (for 16-bit rows; the
    specialization Triton compiles needs the integer too) and every base address a multiple of 16."""
    if D % 16:
        return False
    for tensor in tensors:  # a plain loop: host time
        if tensor is not None and tensor.data_ptr() % 16:
            return False
    return True


@functools.lru_cache(maxsize=None)
def _labelled_forward_plans(D: int) -> tuple[tuple[str, KernelConfig, int | None], ...]:
    """(label, config, programs per SM) of each forward plan for rows of width D, the default first (one row
    per program: programs per SM None)."""
    config = _triton_config(D)
    default = ("row_per_program", config, None)
    return (default, *(
        (f"loop_{_plan_label(plan, per_sm)}", plan, per_sm) for plan, per_sm in _forward_loop_plans(config)
        if _plan_fits_width(plan, D)
    ))


@functools.lru_cache(maxsize=None)
def _row_loop_programs(device: torch.device, per_sm: int = 4) -> int:
    """Programs of a row-loop kernel (the backward, the forward's loop plans): `per_sm` per SM on CUDA (the
    interpreter: a handful)."""
    if device.type == "cuda":
        return per_sm * sm_count(device)
    return per_sm


# ----------------------------------------------------------------------------------------------------
# Host launchers as torch.library ops (x, residual: [rows, D] contiguous; the public function reshapes)
# ----------------------------------------------------------------------------------------------------
def _rows_per_sample(rows: int, drop_path_scale: torch.Tensor | None) -> int:
    if drop_path_scale is None or drop_path_scale.numel() == 0:
        return 1
    return max(1, rows // drop_path_scale.numel())


def dropout_scalars(dropout_p: float, has_dropout: bool) -> tuple[int, float]:
    """The kernels' (drop_threshold, keep_scale): the 16-bit draw an element must reach to be kept and
    1 / (1 - p); (0, 1) without dropout. linear_act's kernels take the same two."""
    if not has_dropout:
        return 0, 1.0
    return dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p)


def _dropout_add_layer_norm_fwd_impl(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    drop_path_scale: torch.Tensor | None,
    seed: torch.Tensor | None,
    dropout_p: float,
    eps: float,
    rms_norm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (normed, new_residual, mean, rstd) (RMSNorm: mean 0); dropout runs when `seed` is given and
    dropout_p > 0."""
    rows, D = x.shape
    normed = new_output(x, (rows, D))
    new_residual = new_output(x, (rows, D))
    mean = new_output(x, (rows,), torch.float32)
    rstd = new_output(x, (rows,), torch.float32)
    if rows == 0:
        return normed, new_residual, mean, rstd
    has_dropout = seed is not None and dropout_p > 0.0
    pointers = (x, residual, weight, bias, drop_path_scale, seed if has_dropout else None,
                normed, new_residual, mean, rstd)
    scalars = (*dropout_scalars(dropout_p, has_dropout), eps)
    features = dict(
        HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        HAS_DROP_PATH=drop_path_scale is not None, HAS_DROPOUT=has_dropout, D_MULTIPLE_OF_8=D % 8 == 0,
        IS_RMS_NORM=rms_norm,
    )
    rows_per_sample = _rows_per_sample(rows, drop_path_scale)

    def launch(config: KernelConfig, per_sm: int | None) -> None:
        options = dict(config.constexprs, **features, num_warps=config.num_warps,
                       num_stages=config.num_stages)
        if per_sm is None:
            _dropout_add_layer_norm_fwd_kernel[(rows,)](*pointers, D, rows_per_sample, *scalars, **options)
            return
        programs = max(1, min(rows, _row_loop_programs(x.device, per_sm)))
        _dropout_add_layer_norm_fwd_loop_kernel[(programs,)](
            *pointers, rows, D, cdiv(rows, programs), rows_per_sample, *scalars, **options
        )

    plans = _labelled_forward_plans(D)
    if _FORCE_FWD_PLAN is not None:  # tests
        plans = plans[min(_FORCE_FWD_PLAN, len(plans) - 1):][:1]
    candidates = [(label, functools.partial(launch, config, per_sm)) for label, config, per_sm in plans]
    key = (str(x.dtype), D, length_bucket(rows), residual is not None, weight is not None, bias is not None,
           drop_path_scale is not None, has_dropout, rms_norm)
    launch_tuner(OP_NAME + "_fwd").run(key, candidates, x.device,
                                       outputs=lambda _: (normed, new_residual, mean, rstd))
    return normed, new_residual, mean, rstd


_dropout_add_layer_norm_fwd_op = torch.library.custom_op(
    "internvideo_fast::dropout_add_layer_norm_fwd", _dropout_add_layer_norm_fwd_impl, mutates_args=()
)


@_dropout_add_layer_norm_fwd_op.register_fake
def _dropout_add_layer_norm_fwd_fake(x, residual, weight, bias, drop_path_scale, seed, dropout_p, eps,
                                     rms_norm):
    rows, D = x.shape
    return (
        x.new_empty((rows, D)), x.new_empty((rows, D)),
        x.new_empty((rows,), dtype=torch.float32), x.new_empty((rows,), dtype=torch.float32),
    )


def _dropout_add_layer_norm_bwd_impl(
    dy: torch.Tensor,
    dnew_residual: torch.Tensor | None,
    new_residual: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    drop_path_scale: torch.Tensor | None,
    seed: torch.Tensor | None,
    dropout_p: float,
    store_dresidual: bool,
    rms_norm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dresidual, dparams): dresidual is empty unless `store_dresidual` (off without a
    residual, or where the caller uses dx for it); dparams [n, D] fp32 holds the row sums of dweight then
    dbias, one row each for those that are not None (n = 0, 1 or 2). One buffer, so that both reduce in one
    launch (the two reductions over the programs' partial rows took 0.021 ms beside the kernel's 0.058 in an
    H100 profile: each such small reduction is mostly latency)."""
    rows, D = new_residual.shape
    dx = new_output(new_residual, (rows, D))
    dresidual = new_output(new_residual, (rows, D) if store_dresidual else (0,))
    params = (weight is not None) + (bias is not None)
    if rows == 0:
        return dx, dresidual, new_residual.new_zeros((params, D), dtype=torch.float32)
    has_dropout = seed is not None and dropout_p > 0.0

    def launch(config: KernelConfig, per_sm: int) -> torch.Tensor:
        programs = max(1, min(rows, _row_loop_programs(new_residual.device, per_sm)))
        partials = new_output(new_residual, (params, programs, D), torch.float32)
        _dropout_add_layer_norm_bwd_kernel[(programs,)](
            dy, dnew_residual, new_residual, weight, mean, rstd, drop_path_scale,
            seed if has_dropout else None,
            dx, dresidual if store_dresidual else None,
            partials[0] if weight is not None else None, partials[params - 1] if bias is not None else None,
            rows, D, cdiv(rows, programs), _rows_per_sample(rows, drop_path_scale),
            *dropout_scalars(dropout_p, has_dropout), **config.constexprs,
            HAS_DNEW_RESIDUAL=dnew_residual is not None, STORE_DRESIDUAL=store_dresidual,
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            HAS_DROP_PATH=drop_path_scale is not None, HAS_DROPOUT=has_dropout, D_MULTIPLE_OF_8=D % 8 == 0,
            IS_RMS_NORM=rms_norm, num_warps=config.num_warps, num_stages=config.num_stages,
        )
        return partials

    aligned = _rows_aligned16(D, dy, dnew_residual, new_residual, weight, mean, rstd, drop_path_scale, seed)
    plans = _labelled_backward_plans(D, aligned)
    if _FORCE_BWD_PLAN is not None:  # tests
        plans = plans[min(_FORCE_BWD_PLAN, len(plans) - 1):][:1]
    candidates = [(label, functools.partial(launch, config, per_sm)) for label, config, per_sm in plans]
    key = (str(new_residual.dtype), D, length_bucket(rows), dnew_residual is not None, store_dresidual,
           weight is not None, bias is not None, has_dropout, rms_norm, aligned)

    def outputs(partials):  # plans split the rows differently: their partial sums are compared summed
        return dx, dresidual, partials.sum(1)

    _, partials = launch_tuner(OP_NAME + "_bwd").run(key, candidates, new_residual.device, outputs=outputs)
    # Deterministic: a fixed split of rows over programs, then one reduction over the partial rows (the
    # split, hence the rounding of dweight / dbias, is the plan's: IVF_AUTOTUNE=0 fixes it across processes).
    return dx, dresidual, partials.sum(1)


_dropout_add_layer_norm_bwd_op = torch.library.custom_op(
    "internvideo_fast::dropout_add_layer_norm_bwd", _dropout_add_layer_norm_bwd_impl, mutates_args=()
)


@_dropout_add_layer_norm_bwd_op.register_fake
def _dropout_add_layer_norm_bwd_fake(
    dy, dnew_residual, new_residual, weight, bias, mean, rstd, drop_path_scale, seed, dropout_p,
    store_dresidual, rms_norm,
):
    rows, D = new_residual.shape
    return (
        new_residual.new_empty((rows, D)),
        new_residual.new_empty((rows, D) if store_dresidual else (0,)),
        new_residual.new_empty(((weight is not None) + (bias is not None), D), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, drop_path_scale, seed, dropout_p, eps, rms_norm = inputs
    _, new_residual, mean, rstd = output
    ctx.save_for_backward(new_residual, weight, bias, mean, rstd, drop_path_scale, seed)
    ctx.dropout_p = dropout_p
    ctx.rms_norm = rms_norm
    ctx.has_residual = residual is not None
    ctx.mark_non_differentiable(mean, rstd)
    # Unused outputs' gradients arrive as None, not as a zero fill per backward; the backward takes None.
    ctx.set_materialize_grads(False)


def _backward(ctx, dnormed, dnew_residual, _dmean, _drstd):
    new_residual, weight, bias, mean, rstd, drop_path_scale, seed = ctx.saved_tensors
    if dnormed is None:
        dnormed = torch.zeros_like(new_residual)
    # Without dropout and drop path, dx = dh * 1 = dresidual bitwise: the kernel stores it once (4 passes
    # over [rows, D] instead of 5) and both inputs get the same tensor, as an add's backward gives them.
    shared = ctx.has_residual and drop_path_scale is None and (seed is None or ctx.dropout_p == 0.0)
    dx, dresidual, dparams = _dropout_add_layer_norm_bwd(
        dnormed.contiguous(), None if dnew_residual is None else dnew_residual.contiguous(),
        new_residual, weight, bias, mean, rstd, drop_path_scale, seed, ctx.dropout_p,
        ctx.has_residual and not shared, ctx.rms_norm,
    )
    if shared:
        dresidual = dx
    # dparams: fp32 row sums of dweight then dbias (those not None); one cast when their dtypes agree.
    params = [t for t in (weight, bias) if t is not None]
    if len(params) == 2 and weight.dtype == bias.dtype:
        grads = list(dparams.to(weight.dtype).unbind(0))
    else:
        grads = [row.to(param.dtype) for row, param in zip(dparams.unbind(0), params)]
    dweight = grads.pop(0) if weight is not None else None
    dbias = grads.pop(0) if bias is not None else None
    return dx, dresidual if ctx.has_residual else None, dweight, dbias, None, None, None, None, None


torch.library.register_autograd(
    "internvideo_fast::dropout_add_layer_norm_fwd", _backward, setup_context=_setup_context
)
_dropout_add_layer_norm_bwd = eager_op(_dropout_add_layer_norm_bwd_op, _dropout_add_layer_norm_bwd_impl)
# Eager calls skip torch.library's dispatch (internvideo_fast/ops/dispatch.py); compiled graphs keep the ops.
_dropout_add_layer_norm_fwd = eager_op(
    _dropout_add_layer_norm_fwd_op, _dropout_add_layer_norm_fwd_impl,
    setup_context=_setup_context, backward=_backward,
)


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------
_MASK32 = 0xFFFFFFFF


def dropout_threshold(dropout_p: float) -> int:
    """The 16-bit draw an element must reach to be kept by dropout_add_layer_norm's kernels:
    ``min(round(p * 2**16), 2**16 - 1)`` (kept fraction ``1 - t / 2**16``, within ``2**-17`` of ``1 - p``)."""
    return min(int(dropout_p * 65536.0 + 0.5), 65535)


def dropout_keep_mask(seed, shape, dropout_p: float, device=None, elements_per_draw: int = 1) -> torch.Tensor:
    """A kernel's dropout keep mask (bool, True = kept) for `seed` (int or one-element int64 tensor) and a
    tensor of `shape`, bitwise, recomputed in PyTorch. For flat index ``i``: `elements_per_draw` 1
    (cross_attention): ``tl.rand(seed, i) >= dropout_p``; 8 (dropout_add_layer_norm and linear_act, see
    this module's docstring): half ``i % 2`` of word ``(i // 2) % 4`` of ``tl.randint4x(seed, i // 8)`` at least
    ``dropout_threshold(dropout_p)``."""
    if elements_per_draw not in (1, 8):
        raise ValueError(f"elements_per_draw must be 1 or 8, got {elements_per_draw!r}")
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(())
    device = seed.device
    numel = 1
    for size in shape:
        numel *= size
    counter = torch.arange(-(-numel // elements_per_draw), dtype=torch.int64, device=device)
    zero = torch.zeros_like(counter)
    words = philox4x32_10_reference(
        counter & _MASK32, counter >> 32, zero, zero, seed & _MASK32, (seed >> 32) & _MASK32
    )
    if elements_per_draw == 8:
        stream = torch.stack(words, dim=1).reshape(-1)  # word w of counter c at 4c + w
        halves = torch.stack((stream & 0xFFFF, stream >> 16), dim=1).reshape(-1)[:numel]
        return (halves >= dropout_threshold(dropout_p)).reshape(shape)
    signed = torch.where(words[0] >= 2**31, words[0] - 2**32, words[0])  # the word bitcast to int32
    nonnegative = torch.where(signed < 0, -signed - 1, signed)  # ~x for x < 0
    uniform = nonnegative.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=device)
    return (uniform >= torch.tensor(dropout_p, dtype=torch.float32, device=device)).reshape(shape)


def dropout_add_layer_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    keep_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    eps: float = 1e-6,
    drop_path_scale: torch.Tensor | None = None,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch: ``(LayerNorm(h) * weight + bias, h)`` for ``h = residual + x * keep_mask / (1 - p) *
    drop_path_scale[sample]``, computed in x's dtype (``upcast``: in float64, returned as float64).
    `keep_mask` (bool, x's shape) is the dropout mask; None keeps everything."""
    dtype = torch.float64 if upcast else x.dtype
    new_residual = _new_residual_ref(x, residual, keep_mask, dropout_p, drop_path_scale, dtype)
    normed = F.layer_norm(
        new_residual, (x.shape[-1],),
        None if weight is None else weight.to(dtype), None if bias is None else bias.to(dtype), eps,
    )
    return normed, new_residual


def dropout_add_rms_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    keep_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    eps: float = 1e-6,
    drop_path_scale: torch.Tensor | None = None,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dropout_add_layer_norm_ref` with RMSNorm: ``h / sqrt(mean(h^2) + eps) * weight + bias``."""
    dtype = torch.float64 if upcast else x.dtype
    new_residual = _new_residual_ref(x, residual, keep_mask, dropout_p, drop_path_scale, dtype)
    normed = F.rms_norm(new_residual, (x.shape[-1],), None if weight is None else weight.to(dtype), eps)
    return (normed if bias is None else normed + bias.to(dtype)), new_residual


def _new_residual_ref(x, residual, keep_mask, dropout_p, drop_path_scale, dtype) -> torch.Tensor:
    """``residual + x * keep_mask / (1 - p) * drop_path_scale[sample]`` in `dtype` (the references' h)."""
    dropped = x.to(dtype)
    if keep_mask is not None:
        dropped = dropped * keep_mask.to(dtype) * (1.0 / (1.0 - dropout_p))
    if drop_path_scale is not None:
        dropped = dropped * drop_path_scale.to(dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return dropped if residual is None else residual.to(dtype) + dropped


# ----------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------
def _check_tensor(name: str, tensor, x: torch.Tensor, shape) -> None:
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor or None, got {type(tensor).__name__}")
    if tensor.device != x.device:
        raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")


def dropout_add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    dropout_p: float = 0.0,
    eps: float = 1e-6,
    drop_path_scale: torch.Tensor | None = None,
    seed: int | torch.Tensor | None = None,
    training: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normed, new_residual)`` with ``new_residual = residual + dropout(x) * drop_path_scale[sample]``
    and ``normed = LayerNorm(new_residual) * weight + bias`` over the last dim (see the module docstring;
    :func:`dropout_add_rms_norm` for RMSNorm).

    Args:
        x: ``[..., D]`` float32 / float16 / bfloat16 (the branch output: attention or MLP).
        residual: x's shape and dtype, or None (then ``new_residual = dropout(x) * scale``).
        weight, bias: ``[D]`` LayerNorm affine parameters, or None.
        dropout_p: dropout probability in [0, 1); applied only when `training`.
        eps: LayerNorm epsilon (1e-6 VideoMAE, 1e-5 CLIP).
        drop_path_scale: ``[x.shape[0]]`` per-sample factor (0 or ``1 / (1 - drop_path_rate)``) multiplied
            into the dropped x; applied as given, training or not (the caller builds it only in training).
        seed: the dropout seed: an int or a one-element int64 tensor on x's device; None draws one from
            torch's default generator. The same seed gives the same mask on every backend.
        training: False turns dropout off.

    Returns:
        ``(normed, new_residual)``, both x's shape, in x's dtype, or in the wider of x's and residual's
        (as ``residual + x``) when they differ: an fp32 residual stream under bf16 autocast stays fp32.
    """
    return _dropout_add_norm(x, residual, weight, bias, dropout_p, eps, drop_path_scale, seed, training,
                             rms_norm=False)


def dropout_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    eps: float = 1e-6,
    drop_path_scale: torch.Tensor | None = None,
    seed: int | torch.Tensor | None = None,
    training: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dropout_add_layer_norm` with RMSNorm (flash-attn's ``dropout_add_rms_norm``): ``normed =
    new_residual / sqrt(mean(new_residual^2) + eps) * weight + bias``, the same kernels without the mean.
    Arguments and returns as there; `bias` is usually None."""
    return _dropout_add_norm(x, residual, weight, bias, dropout_p, eps, drop_path_scale, seed, training,
                             rms_norm=True)


def _dropout_add_norm(x, residual, weight, bias, dropout_p, eps, drop_path_scale, seed, training, rms_norm):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0.0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    D = x.shape[-1]
    _check_tensor("residual", residual, x, x.shape)
    if residual is not None and residual.dtype != x.dtype:
        # As `residual + x` would: under autocast the branch output (x) is bf16 while the residual stream
        # stays fp32; both outputs then take the wider dtype.
        dtype = torch.promote_types(x.dtype, residual.dtype)
        x, residual = x.to(dtype), residual.to(dtype)
    _check_tensor("weight", weight, x, (D,))
    _check_tensor("bias", bias, x, (D,))
    if drop_path_scale is not None and x.dim() < 2:
        raise ValueError("drop_path_scale needs x with a leading sample dim, got a 1-D x")
    _check_tensor("drop_path_scale", drop_path_scale, x, x.shape[:1])
    dropout_p = float(dropout_p) if training else 0.0
    seed = seed_tensor(seed, x.device) if dropout_p > 0.0 else None

    available = available_backends(OP_NAME, x.device)
    if D > MAX_KERNEL_D:
        available.discard("triton")
    backend = select_backend(OP_NAME, x.device, available)
    if backend == "reference":
        keep = None if seed is None else dropout_keep_mask(seed, x.shape, dropout_p, elements_per_draw=8)
        reference = dropout_add_rms_norm_ref if rms_norm else dropout_add_layer_norm_ref
        return reference(x, residual, weight, bias, keep, dropout_p, float(eps), drop_path_scale)
    flat_residual = None if residual is None else residual.contiguous().reshape(-1, D)
    normed, new_residual, _, _ = _dropout_add_layer_norm_fwd(
        x.contiguous().reshape(-1, D), flat_residual,
        None if weight is None else weight.contiguous(), None if bias is None else bias.contiguous(),
        None if drop_path_scale is None else drop_path_scale.contiguous(),
        seed, dropout_p, float(eps), rms_norm,
    )
    return normed.reshape(x.shape), new_residual.reshape(x.shape)
