"""Linear layer with the bias and the activation fused into the matmul's epilogue (the MLP's fc1 / fc2).

For ``x [..., K]`` flattened to ``x [M, K]`` (``M = x.numel() / K`` rows), ``weight [N, K]`` (nn.Linear's
layout) and ``bias [N]`` (0 when absent):

    pre = x @ weight.T + bias                  (fp32 accumulator, then rounded to x's dtype)
    y   = act(pre)                             (then dropout, when dropout_p > 0: see "Dropout" below)

with ``act`` one of

    gelu        0.5 * pre * (1 + erf(pre / sqrt(2)))                        (VideoMAE, CLIP ViT)
    gelu_tanh   0.5 * pre * (1 + tanh(sqrt(2/pi) * (pre + 0.044715 pre^3)))
    quick_gelu  pre * sigmoid(1.702 * pre)                                   (OpenAI CLIP)
    none        pre

Backward, for ``dy = d y``:

    dpre   = dy * act'(pre)                    (one Triton pass over [M, N]; dbias summed in the same pass)
    dx     = dpre @ weight,     dweight = dpre.T @ x,     dbias = sum_rows(dpre)

Implementation choices:

- Forward: one Triton matmul (tiled, fp32 accumulator, grouped program order so neighbouring programs share
  weight tiles in L2). The epilogue adds the bias, stores ``pre`` when a backward will need it, applies
  the activation and stores ``y``. Eager PyTorch writes ``pre``, reads it back for the activation and
  writes ``y`` (two launches); here both are written from registers in one pass. Two kernels share the
  tile order and the epilogue: ``_linear_act_fwd_kernel`` loads through pointers (any alignment; masked
  tails) and ``_linear_act_fwd_tma_kernel`` through Hopper TMA tensor descriptors (16-bit inputs with
  16-byte aligned rows on sm_90+; no address registers, which leaves room for 128 x 256 tiles). On the
  GPU a :class:`~internvideo_fast.ops.autotuning.LaunchTuner` times the pointer kernel (itself autotuned
  over its tiles) and the TMA kernel at each of its tiles once per (dtype, rows bucket, N, K, epilogue)
  and keeps the fastest; elsewhere the pointer kernel runs. A third candidate,
  ``_linear_act_fwd_persistent_kernel``, is the TMA kernel made persistent: one program per SM walks the
  tiles, the tile and K loops are flattened so that the next tile's loads overlap this tile's epilogue,
  and the epilogue stores through TMA too (output rows of 16 bytes). Why: the H100 run of 2026-11-26
  measured the pointer kernel at 0.124 ms for ViT-B's fc1 against cuBLAS's 0.067-0.080 ms
  (``bench_linear_act``'s ``gemm_rows`` times every plan against cuBLAS in one run). The last candidate,
  ``cublas``, is eager PyTorch's own path as a floor: ``torch.addmm`` (cuBLAS) writes ``pre``, then
  ``_activation_dropout_kernel`` reads it and writes ``y`` (one pass more than the fused epilogue, at the
  library's GEMM speed; ``pre`` is rounded before the activation either way).
- Memory: ``pre`` is *saved* (``M x N`` in x's dtype), not recomputed. Recomputing it would cost a second
  ``M x N x K`` matmul in the backward (+50% of this layer's forward FLOPs) to save one activation that eager
  PyTorch keeps as well (its GELU saves its input). With ``activation="none"`` (fc2) or without grad,
  nothing extra is stored. For the whole MLP, :func:`fused_mlp` (one op, used by FusedMLP) saves only x and
  fc1's ``pre``: fc2's weight gradient needs ``h = dropout(act(pre))``, which the backward recomputes from
  ``pre`` and the seed in the same elementwise pass that computes fc1's ``dpre`` (no extra read, no extra
  matmul). Eager nn.Linear-GELU-nn.Linear also keeps ``h`` (``M x hidden``) and, with dropout, both masks;
  FusedMLP saves that many bytes less per block (tests/test_linear_act.py counts them with
  saved_tensors_hooks; ``bench/bench_linear_act.py`` reports them and the peak memory on GPU). Without
  dropout, fused_mlp's fc2 (nothing to fuse) runs on cuBLAS (``addmm``), faster than our Triton GEMM on an
  H100; the backward's matmuls are cuBLAS's too.
- CUTLASS (``kernels/mlp_gemm_sm90.cu``, built for sm_90a when CUTLASS's headers are there): the Triton
  GEMMs reached 77-83% of cuBLAS on an H100, so the tuned MLP ran cuBLAS GEMMs plus separate elementwise
  passes. CUTLASS's warp-specialized TMA / wgmma GEMMs run at cuBLAS's speed and take the bias and
  activation into their epilogue: ``mlp_gemm_bias_act`` (the forward's "cutlass" plan) writes ``pre`` (only
  when a backward needs it) and ``y = act(pre)`` from the accumulator (the activation of the fp32 value,
  before ``pre`` is rounded). It is a tuner candidate at two schedules (cooperative 128x256 tiles, pingpong
  128x128 tiles whose epilogues overlap the other warp group's mainloop) for sm_90, 16-bit, 16-byte rows
  and no dropout, checked against the default plan's outputs like every candidate; its CPU twin
  (``csrc/mlp_gemm_cpu.cpp``, ATen) defines the same results and is what the CPU tests hold it to. A
  backward twin (``dh = dz @ weight2`` with ``dpre``, ``h`` and ``dbias`` in the epilogue) measured
  2.8-4.5x slower than cuBLAS's GEMM plus our elementwise pass on an H100 and was removed
  (``bench/results/NOTES.md``, run 6).
- Dropout (``dropout_p > 0``) is fused into the epilogue after the activation, with
  dropout_add_layer_norm's mask rule: element ``i = row * N + col`` of the flattened ``[M, N]`` output is
  kept when half ``i % 2`` of word ``(i // 2) % 4`` of ``tl.randint4x(seed, i // 8)`` is at least
  ``dropout_threshold(p)`` (16 bits), and scaled by ``1 / (1 - p)``;
  ``dropout_keep_mask(seed, shape, p, elements_per_draw=8)`` reproduces it bitwise. One Philox call serves
  the eight elements a thread holds in the elementwise passes (the forward's activation pass always, the
  backward's pass when N is a multiple of 8). They drew one call per element (``tl.rand``) before, and
  gpu-check run 4 (H100) measured them at 46-48% of copy bandwidth with dropout against 81-85% without:
  issue-bound. sm_90a SASS per thread, activation pass (8 elements): "none" 512 -> 176 instructions
  (40 without dropout); with the activations' math below too, gelu 768 -> 312 and the backward's loop
  (16 elements, gelu, h recomputed) 2096 -> 746. The GEMM epilogues draw per element
  (``keep_element8``): the accumulator's layout gives a thread only pairs of adjacent columns. The mask is
  never stored: the backward's elementwise pass regenerates it from the seed (a one-element int64 tensor
  on x's device; no host sync). fused_mlp keys its first dropout on ``seed`` and the one after fc2 on
  ``seed + 1``. With dropout a 128 x 128 tile's epilogue runs in narrower column parts (Philox's
  temporaries spill registers otherwise; measured with the sm_90a check, see "Tile configs" below).
- Backward: ``dpre`` comes from a Triton elementwise kernel that reads ``dy`` and ``pre`` once, applies
  the dropout mask and ``act'`` in fp32, stores ``dpre`` in x's dtype and accumulates ``dbias`` in a
  register tile per program (reduced over its rows once, after the loop) into a fixed ``[programs, N]``
  fp32 buffer, summed by ``torch.sum`` (deterministic, like dropout_add_layer_norm). With activation
  ``none`` and no dropout (fc2) dpre is dy itself, and the same kernel only sums dbias's columns
  (``STORE_DPRE`` off), where ``dy.sum(0)`` took 0.024 ms for ViT-B's fc2 in an H100 profile (650 GB/s;
  not yet timed this way). Its tile, programs per SM and load stages (the row loop pipelined through
  shared memory) are timed on the GPU by the LaunchTuner (``_BWD_GPU_PLANS``). The two matmuls ``dx`` and
  ``dweight`` are plain GEMMs with nothing left to fuse, so they run on ``torch.matmul`` (cuBLAS on GPU):
  fusing ``act'`` into both GEMMs' prologues would read ``dy`` and ``pre`` twice. In fused_mlp's backward the
  GEMM that produces fc1's incoming gradient (``dh = dz @ weight2``) can instead carry the elementwise pass
  in its epilogue (``_fused_mlp_dh_kernel``, TMA loads, ``dh`` kept in fp32 and never stored: 2 of the 6
  ``[M, hidden]`` passes saved); the tuner times it against cuBLAS + the elementwise kernel.
- The activations' math is written for the GPU's issue rate: the elementwise passes move 8 elements per
  thread and were issue-bound with libdevice's ``erff`` (34 SASS instructions per element, sm_90a).
  gelu is ``x * Phi(x)`` with Phi from a rational-exponential fit of erfc (:func:`_normal_cdf_and_gauss`:
  within 3.8e-7 of float64, relative accuracy kept in the negative tail, where ``1 + erf`` cancels); its
  derivative reuses the same ``exp(-x^2 / 2)``. gelu_tanh is ``x * sigmoid(2u)`` (= ``0.5 x (1 + tanh u)``)
  and quick_gelu ``x * sigmoid(1.702 x)``, the sigmoid from one exp and one reciprocal square root
  (:func:`_sigmoids`). sm_90a SASS of the forward's activation pass per 8 elements: gelu 312 -> 184,
  gelu_tanh 216 -> 152, quick_gelu 160 -> 128 instructions; the backward's loop (8 x 256 tile at 4 warps,
  16 elements per thread, 3 load stages, the activation recomputed) gelu 831 -> 459. The Triton
  interpreter runs the same formulas.
- fp32 inputs multiply in IEEE fp32 (``input_precision="ieee"``) unless
  ``torch.backends.cuda.matmul.allow_tf32`` is set, as torch.matmul does; fp16 / bf16 use the tensor cores.
  Only the bf16 kernels are in the sm_90a check; at fp32 the autotuner drops any config whose stages do not
  fit in shared memory.
- Tile configs (see ``_FWD_GPU_CONFIGS`` and ``_FWD_TMA_CONFIGS``): the sm_90a check compiles the pointer
  kernel without Triton's divisibility-by-16 specialization too, and there a whole-tile epilogue spilled at
  128x128 / 8 warps; the epilogue therefore always works on column halves of the tile, split further into
  parts of at most 128 x 32 elements (128 x 8 with dropout: Philox's temporaries) -- a register-only split
  of the wgmma accumulator. Compiled as real launches are (aligned pointers, M / N / K multiples of 16),
  128x128x64 uses about 101 registers and 96 KB (3 stages) / 128 KB (4 stages) of shared memory, no spills;
  with the dropout epilogue 104-119 registers aligned and 255 unaligned, still no spills. (Unaligned, parts
  of 128 x 64 spilled 28 B with gelu_tanh, and with dropout parts of 128 x 32 spilled 44 B and of 128 x 16
  20 B under Triton 3.6, once the mask drew four words per element.)
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from internvideo_fast._extension import HAS_C, has_kernel
from internvideo_fast.ops.autotuning import launch_tuner, length_bucket
from internvideo_fast.ops.backend import available_backends, select_backend, triton_interpreter_on
from internvideo_fast.ops.dispatch import eager_op
from internvideo_fast.ops.dropout_add_layer_norm import (
    dropout_keep_mask, dropout_scalars, keep_block8, keep_element8, keep_tile8,
)
from internvideo_fast.ops.kernel_registry import KernelConfig, TritonKernelSpec, register_triton_kernel
from internvideo_fast.ops.launch_math import cdiv, device_capability, sm_count
from internvideo_fast.ops.outputs import new_output
from internvideo_fast.ops.seeds import seed_tensor

OP_NAME = "linear_act"
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "none")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_QUICK_GELU_SCALE = 1.702
# The CUTLASS fc1 GEMM's schedules (kernels/mlp_gemm_sm90.cuh), one tuner candidate each.
CUTLASS_SCHEDULES = ("cooperative", "pingpong")


# ----------------------------------------------------------------------------------------------------
# Triton kernels: math (pure functions of fp32 values) apart from loads and stores. Constants inline:
# 0.7071067811865476 = 1/sqrt(2), 0.3989422804014327 = 1/sqrt(2 pi), 0.7978845608028654 = sqrt(2/pi).
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _normal_cdf_and_gauss(x):
    """(Phi(x), exp(-x^2 / 2)) for fp32 `x`: the standard normal CDF and the unscaled density (one exp).

    Phi(-|x|) = erfc(z) / 2 = t * Q(t) * exp(-z^2) with z = |x| / sqrt(2), t = 1 / (1 + 0.375 z) and Q (the
    1/2 folded in) a degree-6 polynomial fitted to erfcx(z) / (2 t): minimax relative error 6.2e-7 over z in
    [0, 10] (past that exp(-z^2) is 0 in fp32). In fp32: gelu within 3.8e-7 and gelu' within 6.5e-7 of
    float64 over [-14, 14]; Phi's negative tail within 1e-5 relative. Why not libdevice's erff: it evaluates
    two polynomials (both, then a select) and moved their constants into registers, 34 SASS instructions
    per element, and made the activation pass issue-bound (sm_90a SASS); and 1 + erf cancels for x < 0
    (Phi(-5) came out 10% off). t is rsqrt(d^2) = 1 / d (d >= 1; MUFU.RSQ): `1 / d` compiles to
    div.full.f32 and its range checks."""
    d = tl.abs(x) * 0.2651650309562683 + 1.0  # 1 + 0.375 |x| / sqrt(2)
    t = tl.math.rsqrt(d * d)  # d * d = inf past |x| ~ 4e19: t = 0, the limit
    q = -0.06757182627916336
    q = q * t + 0.19405218958854675
    q = q * t - 0.06491463631391525
    q = q * t + 0.14161314070224762
    q = q * t + 0.08330093324184418
    q = q * t + 0.10785061120986938
    q = q * t + 0.10566926747560501
    gauss = tl.exp2(x * x * -0.7213475108146667)  # exp(-x^2 / 2) = 2^(-x^2 log2(e) / 2)
    tail = t * q * gauss
    return tl.where(x >= 0.0, 1.0 - tail, tail), gauss


@triton.jit
def _sigmoids(v):
    """(sigmoid(v), sigmoid(-v)) for fp32 `v`. With a = exp(-|v|) in (0, 1]: sigmoid(|v|) = 1 / (1 + a) and
    sigmoid(-|v|) = a / (1 + a), so neither tail cancels or overflows (relative error ~3e-7). The reciprocal
    is rsqrt((1 + a)^2) (MUFU.RSQ): tl.sigmoid's division compiles to div.full.f32 and its range checks
    (quick_gelu's pass: 160 -> 128 sm_90a SASS instructions per 8 elements)."""
    a = tl.exp2(tl.abs(v) * -1.4426950408889634)
    r = tl.math.rsqrt((1.0 + a) * (1.0 + a))
    positive = v >= 0.0
    return tl.where(positive, r, a * r), tl.where(positive, a * r, r)


@triton.jit
def _activation(pre, ACTIVATION: tl.constexpr):
    """act(pre) for fp32 `pre` (see the module docstring)."""
    if ACTIVATION == "gelu":
        cdf, _ = _normal_cdf_and_gauss(pre)
        out = pre * cdf
    elif ACTIVATION == "gelu_tanh":
        # 0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation in the negative tail.
        s, _ = _sigmoids(1.5957691216057308 * (pre + 0.044715 * pre * pre * pre))
        out = pre * s
    elif ACTIVATION == "quick_gelu":
        s, _ = _sigmoids(1.702 * pre)
        out = pre * s
    else:
        out = pre
    return out


@triton.jit
def _activation_grad(pre, ACTIVATION: tl.constexpr):
    """act'(pre) for fp32 `pre`."""
    if ACTIVATION == "gelu":
        cdf, gauss = _normal_cdf_and_gauss(pre)
        out = cdf + pre * 0.3989422804014327 * gauss
    elif ACTIVATION == "gelu_tanh":
        # d/dx of x sigmoid(2u): sigmoid(2u) + x sigmoid(2u) sigmoid(-2u) 2 du/dx.
        s, s_minus = _sigmoids(1.5957691216057308 * (pre + 0.044715 * pre * pre * pre))
        d2u = 1.5957691216057308 * (1.0 + 3.0 * 0.044715 * pre * pre)
        out = s + pre * s * s_minus * d2u
    elif ACTIVATION == "quick_gelu":
        s, s_minus = _sigmoids(1.702 * pre)
        out = s + 1.702 * pre * s * s_minus
    else:
        out = tl.full(pre.shape, 1.0, tl.float32)
    return out


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


# ----------------------------------------------------------------------------------------------------
# Configurations, registered for the sm_90a ahead-of-time check
# ----------------------------------------------------------------------------------------------------
# GPU forward configs, autotuned per (N, K, dtype, epilogue). Measured with the sm_90a check: 128x128x64 at
# 8 warps is the foundation's good tile (wgmma, no spills with the split epilogue); 128x256 tiles at 8
# warps and 128x128 / 64x128 / 128x64 tiles at 4 warps spill (128 or 64 accumulator registers per thread
# plus the epilogue), so none of those is here.
_FWD_GPU_CONFIGS = (
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    KernelConfig({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    KernelConfig({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
)
# The one config under the interpreter (cost grows with programs x operations; tiny test shapes). 64 rows
# so that it, too, compiles to wgmma (one warpgroup's m64 tile).
_FWD_INTERPRETER_CONFIG = KernelConfig(
    {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1
)
# GPU plans of the backward's elementwise kernel: (tile config, programs per SM), timed by the LaunchTuner.
# Registers from the sm_90a check (gelu; without / with dropout and the recomputed activation; aligned):
# 8x256 at 4 warps 80-168 (unaligned 141-245), 4x256 at 4 warps 40-59 (54-101), 8x512 at 8 warps 80-182
# (143-245), no spills. The first plan is the default. The H100 run of 2026-11-26 measured the earlier
# 16x256 tile, which reduced dbias across threads every iteration, at 0.164 ms for ViT-B's fc1 (252 MB
# moved: 51% of copy bandwidth); with the dbias tile accumulated in registers that tile spills. The
# LOAD_STAGES plans put the next row blocks' loads in flight through shared memory instead of registers.
# In gpu-check run 4 (H100, 2026-11-27) they won 4 of the 6 shapes, by at most 20%; the best plan moved
# 81-85% of copy bandwidth without dropout and 46-48% with it (the mask's Philox draws). The last two plans
# put more rows in flight still.
_BWD_GPU_PLANS = (
    (KernelConfig({"BLOCK_M": 8, "BLOCK_N": 256, "LOAD_STAGES": 1}, num_warps=4, num_stages=1), 4),
    (KernelConfig({"BLOCK_M": 4, "BLOCK_N": 256, "LOAD_STAGES": 1}, num_warps=4, num_stages=1), 8),
    (KernelConfig({"BLOCK_M": 8, "BLOCK_N": 512, "LOAD_STAGES": 1}, num_warps=8, num_stages=1), 2),
    (KernelConfig({"BLOCK_M": 8, "BLOCK_N": 256, "LOAD_STAGES": 3}, num_warps=4, num_stages=1), 4),
    (KernelConfig({"BLOCK_M": 4, "BLOCK_N": 256, "LOAD_STAGES": 3}, num_warps=4, num_stages=1), 8),
    (KernelConfig({"BLOCK_M": 4, "BLOCK_N": 256, "LOAD_STAGES": 4}, num_warps=4, num_stages=1), 8),
    (KernelConfig({"BLOCK_M": 8, "BLOCK_N": 256, "LOAD_STAGES": 3}, num_warps=4, num_stages=1), 8),
)
_BWD_INTERPRETER_CONFIG = KernelConfig({"BLOCK_M": 16, "BLOCK_N": 32, "LOAD_STAGES": 1}, num_warps=4,
                                       num_stages=1)
_FORCE_DPRE_PLAN: int | None = None

# The AOT check compiles each tile config with every activation (each is a separate compiled kernel), bias
# and the pre-activation store on (the largest epilogue), at bf16, where INPUT_PRECISION is unused; once
# without and once with the dropout epilogue (Philox per element: the largest register footprint).
register_triton_kernel(
    TritonKernelSpec(
        name="linear_act_fwd",
        kernel=_linear_act_fwd_kernel,
        signature={
            "x_ptr": "*bf16", "weight_ptr": "*bf16", "bias_ptr": "*bf16", "seed_ptr": "*i64",
            "y_ptr": "*bf16", "pre_ptr": "*bf16",
            "M": "i32", "N": "i32", "K": "i32", "drop_threshold": "i32", "keep_scale": "fp32",
        },
        configs=tuple(
            KernelConfig(
                dict(c.constexprs, ACTIVATION=activation, HAS_BIAS=True, STORE_PRE=activation != "none",
                     INPUT_PRECISION="tf32", HAS_DROPOUT=dropout),
                c.num_warps, c.num_stages,
            )
            for dropout in (False, True)
            for c in (*_FWD_GPU_CONFIGS, _FWD_INTERPRETER_CONFIG)
            for activation in ACTIVATIONS
        ),
        multiplies_matrices=True,
    )
)
# TMA-descriptor forward (``_linear_act_fwd_tma_kernel``), for 16-bit inputs with 16-byte aligned rows on
# sm_90+. Timed at run time against the pointer kernel (LaunchTuner, keyed on the GEMM's shape). Measured
# with the sm_90a check (bf16, gelu + pre store / dropout): 128x128x64 at 8 warps uses 125 / 171 registers
# and 128 KB (4 stages). 4-warp 128x128 and 64x256 tiles spill with dropout. The 128x256 (3 and 4 stages)
# and 256x128 tiles, also spill-free, took 1.2-2.7x the 128x128 tile's time on all four ViT-B / ViT-L fc1
# and fc2 shapes on an H100 (gpu-check run 4, 2026-11-27), so they were dropped.
_FWD_TMA_CONFIGS = (
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
)
# Under the interpreter (tests of the TMA path on CPU tensors).
_FWD_TMA_INTERPRETER_CONFIG = _FWD_INTERPRETER_CONFIG
# Persistent TMA forward (``_linear_act_fwd_persistent_kernel``, one program per SM, TMA loads and
# stores), timed beside the others. sm_90a check (bf16, aligned, every activation; Triton 3.8 / 3.6):
# 128x128x64 at 4 stages 144 KB of shared memory (the flattened loop keeps more in flight than the one-tile
# kernel's 128 KB) and 97-128 registers, 194-224 with dropout; no spills. The 3-stage 128x128 and 128x256
# tiles were slower on every shape of gpu-check run 4 (H100, 2026-11-27) and were dropped. warp_specialize=
# True on the loop is a no-op at 8 warps and crashes the compiler at 4 on sm_90a with both versions.
_FWD_PERSISTENT_CONFIGS = (
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
)


# The elementwise pass of the "cublas" forward plan: 8 elements per thread (16 bytes of bf16).
_ACTIVATION_CONFIG = KernelConfig({"BLOCK": 2048}, num_warps=8, num_stages=1)
_ACTIVATION_INTERPRETER_CONFIG = KernelConfig({"BLOCK": 256}, num_warps=4, num_stages=1)
register_triton_kernel(
    TritonKernelSpec(
        name="linear_act_activation_dropout",
        kernel=_activation_dropout_kernel,
        signature={"pre_ptr": "*bf16", "y_ptr": "*bf16", "seed_ptr": "*i64", "numel": "i64",
                   "drop_threshold": "i32", "keep_scale": "fp32"},
        configs=tuple(
            KernelConfig(dict(c.constexprs, ACTIVATION=activation, HAS_DROPOUT=dropout), c.num_warps,
                         c.num_stages)
            for c in (_ACTIVATION_CONFIG, _ACTIVATION_INTERPRETER_CONFIG)
            for activation in ACTIVATIONS
            for dropout in (False, True)
        ),
        also_aligned=True,  # as launched on ViT widths: 16-byte vector loads
    )
)


def _epilogue_columns(block_m: int, block_n: int, has_dropout: bool) -> int:
    """Columns of one epilogue part, as _linear_act_store_tile splits a tile: half the tile, at most
    128 x 64 elements (128 x 32 with dropout)."""
    return min(block_n // 2, (128 * 32 if has_dropout else 128 * 64) // block_m)


# Programs of the persistent kernel under the interpreter: a few, so that each walks several tiles.
_PERSISTENT_INTERPRETER_PROGRAMS = 3

register_triton_kernel(
    TritonKernelSpec(
        name="linear_act_fwd_tma",
        kernel=_linear_act_fwd_tma_kernel,
        signature={
            "x_desc": "tensordesc<bf16[{BLOCK_M},{BLOCK_K}]>",
            "weight_desc": "tensordesc<bf16[{BLOCK_N},{BLOCK_K}]>",
            "bias_ptr": "*bf16", "seed_ptr": "*i64", "y_ptr": "*bf16", "pre_ptr": "*bf16",
            "M": "i32", "N": "i32", "K": "i32", "drop_threshold": "i32", "keep_scale": "fp32",
        },
        configs=tuple(
            KernelConfig(
                dict(c.constexprs, ACTIVATION=activation, HAS_BIAS=True, STORE_PRE=activation != "none",
                     INPUT_PRECISION="tf32", HAS_DROPOUT=dropout),
                c.num_warps, c.num_stages,
            )
            for dropout in (False, True)
            for c in _FWD_TMA_CONFIGS
            for activation in ACTIVATIONS
        ),
        multiplies_matrices=True,
        # TMA needs 16-byte aligned rows: real launches always get Triton's 16-divisibility specialization.
        aligned_only=True,
    )
)
register_triton_kernel(
    TritonKernelSpec(
        name="linear_act_fwd_persistent",
        kernel=_linear_act_fwd_persistent_kernel,
        signature={
            "x_desc": "tensordesc<bf16[{BLOCK_M},{BLOCK_K}]>",
            "weight_desc": "tensordesc<bf16[{BLOCK_N},{BLOCK_K}]>",
            "bias_ptr": "*bf16", "seed_ptr": "*i64",
            "y_desc": "tensordesc<bf16[{BLOCK_M},{EPILOGUE_N}]>",
            "pre_desc": "tensordesc<bf16[{BLOCK_M},{EPILOGUE_N}]>",
            "M": "i32", "N": "i32", "K": "i32", "drop_threshold": "i32", "keep_scale": "fp32",
            "programs": "i32",
        },
        configs=tuple(
            KernelConfig(
                dict(c.constexprs,
                     EPILOGUE_N=_epilogue_columns(c.constexprs["BLOCK_M"], c.constexprs["BLOCK_N"], dropout),
                     ACTIVATION=activation, HAS_BIAS=True, STORE_PRE=activation != "none",
                     INPUT_PRECISION="tf32", HAS_DROPOUT=dropout),
                c.num_warps, c.num_stages,
            )
            for dropout in (False, True)
            for c in _FWD_PERSISTENT_CONFIGS
            for activation in ACTIVATIONS
        ),
        multiplies_matrices=True,
        aligned_only=True,
    )
)
register_triton_kernel(
    TritonKernelSpec(
        name="linear_act_bwd",
        kernel=_linear_act_bwd_kernel,
        signature={
            "dy_ptr": "*bf16", "pre_ptr": "*bf16", "seed_ptr": "*i64", "dpre_ptr": "*bf16",
            "act_ptr": "*bf16", "dbias_partial_ptr": "*fp32",
            "M": "i32", "N": "i32", "rows_per_program": "i32", "drop_threshold": "i32", "keep_scale": "fp32",
        },
        configs=tuple(
            KernelConfig(
                dict(c.constexprs, ACTIVATION=activation, HAS_BIAS=True, HAS_DROPOUT=dropout,
                     STORE_ACT=dropout and activation != "none", STORE_DPRE=dropout or activation != "none",
                     N_MULTIPLE_OF_8=whole_groups),
                c.num_warps, c.num_stages,
            )
            for dropout, whole_groups in ((False, False), (True, True), (True, False))
            for c in (*(config for config, _ in _BWD_GPU_PLANS), _BWD_INTERPRETER_CONFIG)
            for activation in ACTIVATIONS
            # "none" without dropout is the bias gradient's column sum alone (STORE_DPRE off); with dropout
            # it applies dropout' (fc2). STORE_ACT (fused_mlp's fc1 backward) is compiled with dropout on,
            # its largest form; the mask drawn per eight elements (N a multiple of 8) or per element.
        ),
        also_aligned=True,  # where the load stages pipeline (ViT widths)
    )
)

# fused_mlp's fused dh GEMM + fc1 backward pass (``_fused_mlp_dh_kernel``): TMA tiles, timed by the tuner
# against cuBLAS's dh plus the elementwise kernel. MAX_PART bounds the epilogue's parts (it loads pre and
# computes act and act' on top of the accumulator; half that with dropout). sm_90a check, bf16, aligned:
# 128x128 at 4 stages 128 KB shared memory and 126-157 registers; no spills. A 128x256 tile (3 stages) lost
# to cuBLAS + the elementwise kernel by 30-270% on every shape of gpu-check run 4 (H100, 2026-11-27), as did
# this one, which stays as the fused candidate.
_DH_TMA_CONFIGS = (
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "MAX_PART": 128 * 32},
                 num_warps=8, num_stages=4),
)
_DH_INTERPRETER_CONFIG = KernelConfig(
    {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "MAX_PART": 64 * 16},
    num_warps=4, num_stages=1,
)
# The persistent form (``_fused_mlp_dh_persistent_kernel``, one program per SM), also a tuner candidate; its
# 3-stage form was slower everywhere in run 4. sm_90a check (bf16, aligned, Triton 3.8 / 3.6): 136 KB of
# shared memory, 128-170 registers, 193-215 with dropout; no spills.
_DH_PERSISTENT_CONFIGS = (
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "MAX_PART": 128 * 32},
                 num_warps=8, num_stages=4),
)
# The plan fused_mlp's backward runs regardless of the tuner ("unfused" or "fused"; tests force each).
_FORCE_DH_PLAN: str | None = None

register_triton_kernel(
    TritonKernelSpec(
        name="fused_mlp_dh_tma",
        kernel=_fused_mlp_dh_kernel,
        signature={
            "dz_desc": "tensordesc<bf16[{BLOCK_M},{BLOCK_K}]>",
            "weight2_desc": "tensordesc<bf16[{BLOCK_K},{BLOCK_N}]>",
            "pre_ptr": "*bf16", "seed_ptr": "*i64", "dpre_ptr": "*bf16", "h_ptr": "*bf16",
            "dbias_partial_ptr": "*fp32",
            "M": "i32", "N": "i32", "K": "i32", "drop_threshold": "i32", "keep_scale": "fp32",
        },
        configs=tuple(
            KernelConfig(dict(c.constexprs, ACTIVATION=activation, HAS_BIAS=True, HAS_DROPOUT=dropout),
                         c.num_warps, c.num_stages)
            for dropout in (False, True)
            for c in (*_DH_TMA_CONFIGS, _DH_INTERPRETER_CONFIG)
            for activation in ("gelu", "gelu_tanh", "quick_gelu")
        ),
        multiplies_matrices=True,
        aligned_only=True,
    )
)
register_triton_kernel(
    TritonKernelSpec(
        name="fused_mlp_dh_persistent",
        kernel=_fused_mlp_dh_persistent_kernel,
        signature={
            "dz_desc": "tensordesc<bf16[{BLOCK_M},{BLOCK_K}]>",
            "weight2_desc": "tensordesc<bf16[{BLOCK_K},{BLOCK_N}]>",
            "pre_ptr": "*bf16", "seed_ptr": "*i64", "dpre_ptr": "*bf16", "h_ptr": "*bf16",
            "dbias_partial_ptr": "*fp32",
            "M": "i32", "N": "i32", "K": "i32", "drop_threshold": "i32", "keep_scale": "fp32",
            "programs": "i32",
        },
        configs=tuple(
            KernelConfig(dict(c.constexprs, ACTIVATION=activation, HAS_BIAS=True, HAS_DROPOUT=dropout),
                         c.num_warps, c.num_stages)
            for dropout in (False, True)
            for c in _DH_PERSISTENT_CONFIGS
            for activation in ("gelu", "gelu_tanh", "quick_gelu")
        ),
        multiplies_matrices=True,
        aligned_only=True,
    )
)

_fwd_kernel_autotuned = triton.autotune(
    configs=[
        triton.Config(dict(c.constexprs), num_warps=c.num_warps, num_stages=c.num_stages)
        for c in _FWD_GPU_CONFIGS
    ],
    key=["N", "K", "ACTIVATION", "HAS_BIAS", "STORE_PRE", "HAS_DROPOUT"],
)(_linear_act_fwd_kernel)


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _has_dropout(seed: torch.Tensor | None, dropout_p: float) -> bool:
    return seed is not None and dropout_p > 0.0


def _next_seed(seed: torch.Tensor | None) -> torch.Tensor | None:
    """fused_mlp's second dropout (after fc2) uses ``seed + 1`` (int64, wrapping): another Philox key."""
    return None if seed is None else seed + 1


# ----------------------------------------------------------------------------------------------------
# Kernel launchers (plain functions; the torch.library ops below call them)
# ----------------------------------------------------------------------------------------------------
def _tma_rows_ok(*tensors: torch.Tensor) -> bool:
    """Whether TMA descriptors can load these 2-D tensors: 16-bit, contiguous, 16-byte aligned bases and
    rows, on an sm_90+ GPU (or the interpreter)."""
    for t in tensors:
        row_bytes = t.shape[1] * t.element_size()
        if t.dtype not in (torch.float16, torch.bfloat16) or not t.is_contiguous():
            return False
        if t.data_ptr() % 16 or row_bytes == 0 or row_bytes % 16:
            return False
    device = tensors[0].device
    if device.type == "cuda" and not triton_interpreter_on():
        return device_capability(device)[0] >= 9
    return triton_interpreter_on()


def _cutlass_ok(*tensors: torch.Tensor) -> bool:
    """Whether the CUTLASS fc1 GEMM (kernels/mlp_gemm_sm90.cu, sm_90a only) can run on these 2-D tensors:
    built into _C, an sm_90 GPU (not the interpreter) and TMA-loadable rows."""
    device = tensors[0].device
    return (device.type == "cuda" and not triton_interpreter_on() and has_kernel("mlp_gemm_bias_act", "CUDA")
            and device_capability(device) == (9, 0) and _tma_rows_ok(*tensors))


def _fwd_plans(x, weight, bias, seed, y, pre, activation, store_pre, dropout_p, interpreter, with_tma):
    """Candidate launches of the forward as (label, closure), the default first: on the GPU the pointer
    kernel (itself autotuned over _FWD_GPU_CONFIGS), then the TMA kernel at each of _FWD_TMA_CONFIGS and the
    persistent TMA kernel at each of _FWD_PERSISTENT_CONFIGS, CUTLASS with the bias and activation in its
    epilogue ("cutlass": sm_90, no dropout), then torch.addmm + the elementwise kernel ("cublas"); under
    the interpreter one config of each Triton kernel."""
    M, K = x.shape
    N = weight.shape[0]
    has_dropout = _has_dropout(seed, dropout_p)
    common = dict(
        ACTIVATION=activation, HAS_BIAS=bias is not None, STORE_PRE=store_pre,
        INPUT_PRECISION=_input_precision(x.dtype), HAS_DROPOUT=has_dropout,
    )
    seed_arg = seed if has_dropout else None
    dropout_args = dropout_scalars(dropout_p, has_dropout)
    scalars = (M, N, K, *dropout_args)
    tail = (bias, seed_arg, y, pre if store_pre else None, *scalars)

    def launch(kernel, config, operands):
        blocks = config.constexprs
        grid = (cdiv(M, blocks["BLOCK_M"]) * cdiv(N, blocks["BLOCK_N"]),)
        kernel[grid](*operands, *tail, **blocks, **common, num_warps=config.num_warps,
                     num_stages=config.num_stages)

    def descriptors(config):
        from triton.tools.tensor_descriptor import TensorDescriptor

        blocks = config.constexprs
        return (TensorDescriptor.from_tensor(x, [blocks["BLOCK_M"], blocks["BLOCK_K"]]),
                TensorDescriptor.from_tensor(weight, [blocks["BLOCK_N"], blocks["BLOCK_K"]]))

    def launch_tma(config):
        launch(_linear_act_fwd_tma_kernel, config, descriptors(config))

    def launch_persistent(config):
        from triton.tools.tensor_descriptor import TensorDescriptor

        blocks = config.constexprs
        tiles = cdiv(M, blocks["BLOCK_M"]) * cdiv(N, blocks["BLOCK_N"])
        programs = min(tiles, _PERSISTENT_INTERPRETER_PROGRAMS if interpreter else sm_count(x.device))
        epilogue_n = _epilogue_columns(blocks["BLOCK_M"], blocks["BLOCK_N"], has_dropout)
        y_desc = TensorDescriptor.from_tensor(y, [blocks["BLOCK_M"], epilogue_n])
        pre_desc = TensorDescriptor.from_tensor(pre, [blocks["BLOCK_M"], epilogue_n]) if store_pre else y_desc
        _linear_act_fwd_persistent_kernel[(programs,)](
            *descriptors(config), bias, seed_arg, y_desc, pre_desc, *scalars, programs, **blocks,
            EPILOGUE_N=epilogue_n, **common, num_warps=config.num_warps, num_stages=config.num_stages,
        )

    if interpreter:
        plans = [("pointer", lambda: launch(_linear_act_fwd_kernel, _FWD_INTERPRETER_CONFIG, (x, weight)))]
        tma_configs = persistent_configs = (_FWD_TMA_INTERPRETER_CONFIG,)
    else:

        def grid(meta):
            return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

        plans = [("pointer", lambda: _fwd_kernel_autotuned[grid](x, weight, *tail, **common))]
        tma_configs, persistent_configs = _FWD_TMA_CONFIGS, _FWD_PERSISTENT_CONFIGS
    def launch_cublas():
        gemm_out = pre if store_pre else y
        if bias is None:
            torch.mm(x, weight.t(), out=gemm_out)
        else:
            torch.addmm(bias.to(x.dtype), x, weight.t(), out=gemm_out)
        if activation == "none" and not has_dropout and gemm_out is y:
            return
        config = _ACTIVATION_INTERPRETER_CONFIG if interpreter else _ACTIVATION_CONFIG
        _activation_dropout_kernel[(cdiv(M * N, config.constexprs["BLOCK"]),)](
            gemm_out, y, seed_arg, M * N, *dropout_args, **config.constexprs, ACTIVATION=activation,
            HAS_DROPOUT=has_dropout, num_warps=config.num_warps, num_stages=config.num_stages,
        )

    def launch_cutlass(schedule):
        # pre is [0] (not stored) unless store_pre; the kernel needs a bias (zeros if none).
        torch.ops.internvideo_fast.mlp_gemm_bias_act(
            x, weight, bias if bias is not None else y.new_zeros(N), activation, schedule, y, pre
        )

    if with_tma and _tma_rows_ok(x, weight):
        plans += [(f"tma:{c.label()}", functools.partial(launch_tma, c)) for c in tma_configs]
        if _tma_rows_ok(y):  # its stores go through TMA too
            plans += [(f"persistent:{c.label()}", functools.partial(launch_persistent, c))
                      for c in persistent_configs]
    if (activation != "none" and not has_dropout and K > 0 and _cutlass_ok(x, weight, y)
            and (bias is None or bias.data_ptr() % 16 == 0)):
        plans += [(f"cutlass:{s}", functools.partial(launch_cutlass, s)) for s in CUTLASS_SCHEDULES]
    plans.append(("cublas", launch_cublas))
    return plans


def _launch_fwd(x, weight, bias, activation, store_pre, seed, dropout_p):
    """(y, pre) for x [M, K], weight [N, K]: y = dropout(act(x @ weight.T + bias)); pre is [M, N] when
    `store_pre` (for any activation), else empty."""
    M, K = x.shape
    N = weight.shape[0]
    y = new_output(x, (M, N))
    pre = new_output(x, (M, N) if store_pre else (0,))
    if M > 0 and N > 0:
        interpreter = x.device.type != "cuda" or triton_interpreter_on()
        plans = _fwd_plans(
            x, weight, bias, seed, y, pre, activation, store_pre, dropout_p, interpreter, not interpreter
        )
        key = (x.dtype, M if M < 64 else length_bucket(M), N, K, activation, bias is not None, store_pre,
               _has_dropout(seed, dropout_p))
        launch_tuner(OP_NAME + "_fwd").run(key, plans, x.device, outputs=lambda _: (y, pre))
    return y, pre


def _launch_dpre(dy, pre, activation, has_bias, seed, dropout_p, store_act, in_place=False):
    """(dpre, dbias fp32 or None, act_out or None) for dy [M, N]: dpre = dropout'(dy) * act'(pre);
    `store_act` also returns dropout(act(pre)) (the forward's output, recomputed). `in_place` writes dpre
    over dy (each element is read before it is written, by the same program): for a dy the caller owns."""
    M, N = dy.shape
    has_dropout = _has_dropout(seed, dropout_p)
    # activation "none" without dropout: dpre is dy itself and act(pre) is pre, so the kernel only sums
    # dbias's columns (PyTorch's dy.sum(0) took 0.024 ms for fc2's ViT-B [10240, 768], 650 GB/s, in gpu-check
    # run 3's profile).
    store_dpre = activation != "none" or has_dropout
    act_out = pre if store_act and not store_dpre else None
    if not store_dpre:
        store_act = False
        if not has_bias:
            return dy, None, act_out
    interpreter = dy.device.type != "cuda" or triton_interpreter_on()
    tuner = launch_tuner(OP_NAME + "_bwd")
    key = (dy.dtype, length_bucket(M), N, activation, has_bias, has_dropout, store_act)
    plan_count = 1 if interpreter or _FORCE_DPRE_PLAN is not None else len(_BWD_GPU_PLANS)
    timed = tuner.will_time(key, plan_count, dy.device)
    # Timing runs each plan several times over the same dy: never in place then (first call per shape).
    dpre = dy if not store_dpre or (in_place and not timed) else new_output(dy, (M, N))
    if store_act:
        act_out = new_output(dy, (M, N))

    def launch(config: KernelConfig, programs_per_sm: int) -> torch.Tensor:
        """Runs the kernel at `config` over about `programs_per_sm` programs per SM (the interpreter: a
        couple of row chunks); returns the fp32 dbias partial rows, one per row chunk."""
        block_m, block_n = config.constexprs["BLOCK_M"], config.constexprs["BLOCK_N"]
        col_blocks = cdiv(N, block_n)
        row_blocks = cdiv(M, block_m)
        wanted = 2 if interpreter else (programs_per_sm * sm_count(dy.device)) // col_blocks
        chunks = max(1, min(row_blocks, wanted))
        rows_per_program = cdiv(row_blocks, chunks) * block_m
        chunks = max(1, cdiv(M, rows_per_program))
        dbias_partial = new_output(dy, (chunks, N) if has_bias else (0,), torch.float32)
        if M > 0 and N > 0:
            _linear_act_bwd_kernel[(col_blocks, chunks)](
                dy, pre if activation != "none" or store_act else None, seed if has_dropout else None,
                dpre if store_dpre else None, act_out if store_act else None,
                dbias_partial if has_bias else None, M, N, rows_per_program,
                *dropout_scalars(dropout_p, has_dropout),
                **config.constexprs, ACTIVATION=activation, HAS_BIAS=has_bias,
                HAS_DROPOUT=has_dropout, STORE_ACT=store_act, STORE_DPRE=store_dpre,
                N_MULTIPLE_OF_8=N % 8 == 0, num_warps=config.num_warps, num_stages=config.num_stages,
            )
        elif has_bias:
            dbias_partial.zero_()
        return dbias_partial

    if interpreter:
        plans = [("interpreter", lambda: launch(_BWD_INTERPRETER_CONFIG, 1))]
    else:
        plans = [
            (f"{config.label()},{per_sm}/SM", functools.partial(launch, config, per_sm))
            for config, per_sm in _BWD_GPU_PLANS
        ]
        if _FORCE_DPRE_PLAN is not None:  # tests: one plan, by its index in _BWD_GPU_PLANS
            plans = plans[_FORCE_DPRE_PLAN:_FORCE_DPRE_PLAN + 1]
    _, dbias_partial = tuner.run(
        key, plans, dy.device,
        # Never the caller's tensors (dy, pre): the tuner poisons what it compares.
        outputs=lambda partial: (dpre if store_dpre else None, act_out if store_act else None,
                                 partial.sum(0) if has_bias else None),
    )
    # Deterministic for a given plan: a fixed split of rows over programs, then one reduction over the
    # partial rows (IVF_AUTOTUNE=0 fixes the plan across processes).
    return dpre, (dbias_partial.sum(0) if has_bias else None), act_out


# ----------------------------------------------------------------------------------------------------
# linear_act as torch.library ops (x [M, K], weight [N, K] contiguous; the public function reshapes)
# ----------------------------------------------------------------------------------------------------
def _launch_dh_fused(dz, weight2, pre, activation, has_bias, seed, dropout_p, config, programs=None):
    """(dpre, dbias fp32 or None, h) of fc1's backward from dz [M, K] and weight2 [K, N] in one kernel: one
    program per tile, or with `programs` the persistent kernel with that many programs (at most the
    tiles)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    M, K = dz.shape
    N = weight2.shape[1]
    has_dropout = _has_dropout(seed, dropout_p)
    blocks = config.constexprs
    dpre = new_output(dz, (M, N))
    h = new_output(dz, (M, N))
    tiles_m = cdiv(M, blocks["BLOCK_M"])
    dbias_partial = new_output(dz, (tiles_m, N) if has_bias else (0,), torch.float32)
    tiles = tiles_m * cdiv(N, blocks["BLOCK_N"])
    operands = (
        TensorDescriptor.from_tensor(dz, [blocks["BLOCK_M"], blocks["BLOCK_K"]]),
        TensorDescriptor.from_tensor(weight2, [blocks["BLOCK_K"], blocks["BLOCK_N"]]),
        pre, seed if has_dropout else None, dpre, h, dbias_partial if has_bias else None, M, N, K,
        *dropout_scalars(dropout_p, has_dropout),
    )
    options = dict(**blocks, ACTIVATION=activation, HAS_BIAS=has_bias, HAS_DROPOUT=has_dropout,
                   num_warps=config.num_warps, num_stages=config.num_stages)
    if programs is None:
        _fused_mlp_dh_kernel[(tiles,)](*operands, **options)
    else:
        programs = min(programs, tiles)
        _fused_mlp_dh_persistent_kernel[(programs,)](*operands, programs, **options)
    return dpre, (dbias_partial.sum(0) if has_bias else None), h


def _dh_plans(dz, weight2, pre, activation, has_bias, seed, dropout_p, interpreter, with_fused):
    """fused_mlp's fc1 backward as candidate launches, the default first: cuBLAS's dh = dz @ weight2 then
    the elementwise kernel, or (TMA-loadable 16-bit tensors) the fused kernel at each of its tiles, one
    program per tile ("fused") or persistent ("fused_persistent")."""
    # dpre overwrites dh (which nothing else holds): one [M, hidden] buffer fewer at the backward's peak.
    plans = [("unfused", lambda: _launch_dpre(
        torch.matmul(dz, weight2), pre, activation, has_bias, seed, dropout_p, True, in_place=True))]
    M = dz.shape[0]
    if with_fused and activation != "none" and M > 0 and _tma_rows_ok(dz, weight2, pre):
        configs = (_DH_INTERPRETER_CONFIG,) if interpreter else _DH_TMA_CONFIGS
        persistent_configs = (_DH_INTERPRETER_CONFIG,) if interpreter else _DH_PERSISTENT_CONFIGS
        programs = _PERSISTENT_INTERPRETER_PROGRAMS if interpreter else sm_count(dz.device)
        fused = functools.partial(_launch_dh_fused, dz, weight2, pre, activation, has_bias, seed, dropout_p)
        plans += [(f"fused:{c.label()}", functools.partial(fused, c)) for c in configs]
        plans += [(f"fused_persistent:{c.label()}", functools.partial(fused, c, programs=programs))
                  for c in persistent_configs]
    if _FORCE_DH_PLAN is not None:  # tests
        plans = [plan for plan in plans if plan[0].split(":")[0] == _FORCE_DH_PLAN][:1] or plans[:1]
    return plans


def _linear_act_fwd_impl(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str,
    save_pre: bool,
    seed: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y, pre); pre is empty unless `save_pre` (and never stored for activation "none").
    Dropout (after the activation) runs when `seed` is given and dropout_p > 0."""
    return _launch_fwd(x, weight, bias, activation, save_pre and activation != "none", seed, dropout_p)


_linear_act_fwd_op = torch.library.custom_op(
    "internvideo_fast::linear_act_fwd", _linear_act_fwd_impl, mutates_args=()
)


@_linear_act_fwd_op.register_fake
def _linear_act_fwd_fake(x, weight, bias, activation, save_pre, seed=None, dropout_p=0.0):
    M, N = x.shape[0], weight.shape[0]
    return x.new_empty((M, N)), x.new_empty((M, N) if save_pre and activation != "none" else (0,))


def _linear_act_bwd_impl(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    pre: torch.Tensor,
    activation: str,
    has_bias: bool,
    seed: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight, dbias); dbias is empty when there is no bias. `pre` may be empty for "none".
    The dropout mask is regenerated from `seed`."""
    dpre, dbias, _ = _launch_dpre(dy, pre, activation, has_bias, seed, dropout_p, False)
    dx = torch.matmul(dpre, weight)  # [M, N] @ [N, K]
    dweight = torch.matmul(dpre.t(), x)  # [N, M] @ [M, K]
    dbias = dbias.to(weight.dtype) if dbias is not None else dy.new_empty((0,))
    return dx, dweight, dbias


_linear_act_bwd_op = torch.library.custom_op(
    "internvideo_fast::linear_act_bwd", _linear_act_bwd_impl, mutates_args=()
)


@_linear_act_bwd_op.register_fake
def _linear_act_bwd_fake(dy, x, weight, pre, activation, has_bias, seed=None, dropout_p=0.0):
    N = weight.shape[0]
    return torch.empty_like(x), torch.empty_like(weight), dy.new_empty((N,) if has_bias else (0,))


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, save_pre, seed, dropout_p = inputs
    _, pre = output
    ctx.activation = activation
    ctx.has_bias = bias is not None
    ctx.pre_saved = save_pre and activation != "none"
    ctx.dropout_p = dropout_p
    ctx.save_for_backward(x, weight, bias, pre, seed)
    ctx.mark_non_differentiable(pre)
    # Unused outputs' gradients arrive as None, not as a zero fill per backward; the backward takes None.
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, _dpre):
    x, weight, bias, pre, seed = ctx.saved_tensors
    if dy is None:
        return None, None, None, None, None, None, None
    if ctx.activation != "none" and not ctx.pre_saved:
        # Called without save_pre (a caller that promised no backward): recompute the pre-activation.
        pre, _ = _linear_act_fwd(x, weight, bias, "none", False)
    dx, dweight, dbias = _linear_act_bwd(
        dy.contiguous(), x, weight, pre, ctx.activation, ctx.has_bias, seed, ctx.dropout_p
    )
    return dx, dweight, dbias if ctx.has_bias else None, None, None, None, None


torch.library.register_autograd("internvideo_fast::linear_act_fwd", _backward, setup_context=_setup_context)
# Eager calls skip torch.library's dispatch (internvideo_fast/ops/dispatch.py); compiled graphs keep the ops.
_linear_act_bwd = eager_op(_linear_act_bwd_op, _linear_act_bwd_impl)
_linear_act_fwd = eager_op(
    _linear_act_fwd_op, _linear_act_fwd_impl, setup_context=_setup_context, backward=_backward
)


# ----------------------------------------------------------------------------------------------------
# fused_mlp: fc1 (+ act + dropout) and fc2 (+ dropout) as one op that saves only x and fc1's pre-activation
# ----------------------------------------------------------------------------------------------------
def _fused_mlp_fwd_impl(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
    activation: str,
    save_pre: bool,
    seed: torch.Tensor | None,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y, pre): ``y = dropout_{seed+1}(fc2(dropout_seed(act(pre))))``, ``pre = fc1(x)`` (empty
    unless `save_pre`). The hidden activation is a temporary: it is not returned and not saved."""
    h, pre = _launch_fwd(x, weight1, bias1, activation, save_pre, seed, dropout_p)
    if seed is None or dropout_p == 0.0:
        # Without dropout fc2 has no epilogue to fuse, and cuBLAS's GEMM + bias beats our Triton GEMM: on an
        # H100 (2026-11-26) ViT-B's fc2 took 0.067 ms there against 0.124 ms in _linear_act_fwd_kernel.
        y = torch.matmul(h, weight2.t()) if bias2 is None else torch.addmm(bias2, h, weight2.t())
    else:
        y, _ = _launch_fwd(h, weight2, bias2, "none", False, _next_seed(seed), dropout_p)
    return y, pre


_fused_mlp_fwd_op = torch.library.custom_op(
    "internvideo_fast::fused_mlp_fwd", _fused_mlp_fwd_impl, mutates_args=()
)


@_fused_mlp_fwd_op.register_fake
def _fused_mlp_fwd_fake(x, weight1, bias1, weight2, bias2, activation, save_pre, seed, dropout_p):
    M = x.shape[0]
    return x.new_empty((M, weight2.shape[0])), x.new_empty((M, weight1.shape[0]) if save_pre else (0,))


def _fused_mlp_bwd_impl(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight1: torch.Tensor,
    weight2: torch.Tensor,
    pre: torch.Tensor,
    activation: str,
    has_bias: bool,
    seed: torch.Tensor | None,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight1, dbias1, dweight2, dbias2) (the biases' grads empty when has_bias is False).

    fc2: dz = dropout'(dy) (mask from seed + 1); dh = dz @ weight2. fc1: one pass over (dh, pre) writes
    dpre = dropout'(dh) * act'(pre) and recomputes h = dropout(act(pre)) for dweight2 = dz.T @ h (on the
    GPU possibly fused into dh's GEMM, see _dh_plans)."""
    dz, dbias2, _ = _launch_dpre(dy, None, "none", has_bias, _next_seed(seed), dropout_p, False)
    # dh = dz @ weight2 ([M, N2] @ [N2, H]) and fc1's elementwise pass: two launches, or one on the GPU
    # when the tuner finds the fused TMA kernel faster.
    interpreter = dy.device.type != "cuda" or triton_interpreter_on()
    plans = _dh_plans(dz, weight2, pre, activation, has_bias, seed, dropout_p, interpreter,
                      with_fused=not interpreter or _FORCE_DH_PLAN is not None)
    key = (dy.dtype, length_bucket(dy.shape[0]), weight2.shape[0], weight2.shape[1], activation, has_bias,
           _has_dropout(seed, dropout_p))
    _, (dpre, dbias1, h) = launch_tuner("fused_mlp_dh").run(
        key, plans, dy.device, outputs=lambda result: result
    )
    dweight2 = torch.matmul(dz.t(), h)  # [N2, M] @ [M, H]
    del h  # [M, H]: freed before the two GEMMs below allocate their outputs
    dx = torch.matmul(dpre, weight1)  # [M, H] @ [H, K]
    dweight1 = torch.matmul(dpre.t(), x)  # [H, M] @ [M, K]
    return (
        dx, dweight1, dbias1.to(weight1.dtype) if has_bias else dy.new_empty((0,)),
        dweight2, dbias2.to(weight2.dtype) if has_bias else dy.new_empty((0,)),
    )


_fused_mlp_bwd_op = torch.library.custom_op(
    "internvideo_fast::fused_mlp_bwd", _fused_mlp_bwd_impl, mutates_args=()
)


@_fused_mlp_bwd_op.register_fake
def _fused_mlp_bwd_fake(dy, x, weight1, weight2, pre, activation, has_bias, seed, dropout_p):
    def bias_grad(weight):
        return dy.new_empty((weight.shape[0],) if has_bias else (0,))

    return (
        torch.empty_like(x), torch.empty_like(weight1), bias_grad(weight1),
        torch.empty_like(weight2), bias_grad(weight2),
    )


def _fused_mlp_setup_context(ctx, inputs, output):
    x, weight1, bias1, weight2, bias2, activation, save_pre, seed, dropout_p = inputs
    _, pre = output
    ctx.activation = activation
    ctx.has_bias = bias1 is not None
    ctx.has_bias2 = bias2 is not None
    ctx.pre_saved = save_pre
    ctx.dropout_p = dropout_p
    # x, fc1's pre-activation and the seed: no [M, hidden] activation, no dropout mask (bias1 only when the
    # pre-activation must be recomputed).
    ctx.save_for_backward(x, weight1, None if save_pre else bias1, weight2, pre, seed)
    ctx.mark_non_differentiable(pre)
    # Unused outputs' gradients arrive as None, not as a zero fill per backward; the backward takes None.
    ctx.set_materialize_grads(False)


def _fused_mlp_backward(ctx, dy, _dpre):
    x, weight1, bias1, weight2, pre, seed = ctx.saved_tensors
    if dy is None:
        return (None,) * 9
    if not ctx.pre_saved:
        pre, _ = _fused_mlp_pre(x, weight1, bias1)
    has_bias = ctx.has_bias or ctx.has_bias2
    dx, dweight1, dbias1, dweight2, dbias2 = _fused_mlp_bwd(
        dy.contiguous(), x, weight1, weight2, pre, ctx.activation, has_bias, seed, ctx.dropout_p
    )
    return (
        dx, dweight1, dbias1 if ctx.has_bias else None, dweight2, dbias2 if ctx.has_bias2 else None,
        None, None, None, None,
    )


def _fused_mlp_pre(x, weight1, bias1):
    return _linear_act_fwd(x, weight1, bias1, "none", False)


torch.library.register_autograd(
    "internvideo_fast::fused_mlp_fwd", _fused_mlp_backward, setup_context=_fused_mlp_setup_context
)
_fused_mlp_bwd = eager_op(_fused_mlp_bwd_op, _fused_mlp_bwd_impl)
_fused_mlp_fwd = eager_op(
    _fused_mlp_fwd_op, _fused_mlp_fwd_impl,
    setup_context=_fused_mlp_setup_context, backward=_fused_mlp_backward,
)


if HAS_C:
    # The CUTLASS fc1 GEMM (kernels/mlp_gemm_sm90.cu; csrc/mlp_gemm_cpu.cpp on the CPU): a plan of the ops
    # above, so never traced itself, but a fake implementation keeps it usable under torch.compile.
    @torch.library.register_fake("internvideo_fast::mlp_gemm_bias_act")
    def _mlp_gemm_bias_act_fake(x, weight, bias, activation, schedule, y, pre):
        return None


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------
def apply_activation_ref(pre: torch.Tensor, activation: str) -> torch.Tensor:
    """act(pre) with torch.nn.functional (see the module docstring)."""
    if activation == "gelu":
        return F.gelu(pre)
    if activation == "gelu_tanh":
        return F.gelu(pre, approximate="tanh")
    if activation == "quick_gelu":
        return pre * torch.sigmoid(_QUICK_GELU_SCALE * pre)
    if activation == "none":
        return pre
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def linear_act_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "gelu",
    upcast: bool = False,
    keep_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Plain PyTorch: ``dropout(act(F.linear(x, weight, bias)))`` in x's dtype (``upcast``: in float64,
    returned as float64). `keep_mask` (bool, the output's shape; None keeps everything) is the dropout
    mask, e.g. ``dropout_keep_mask(seed, out_shape, dropout_p, elements_per_draw=8)`` -- the kernels' mask for
    that seed."""
    dtype = torch.float64 if upcast else x.dtype
    pre = F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    out = apply_activation_ref(pre, activation)
    if keep_mask is not None:
        out = out * keep_mask.to(dtype) * (1.0 / (1.0 - dropout_p))
    return out


def fused_mlp_ref(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
    activation: str = "gelu",
    dropout_p: float = 0.0,
    seed: int | torch.Tensor | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """Plain PyTorch ``dropout(fc2(dropout(act(fc1(x)))))`` with the kernels' masks: the first dropout's
    from `seed`, the second's from ``seed + 1`` (no dropout when `seed` is None or dropout_p is 0)."""
    keep1 = keep2 = None
    out_shape = (*x.shape[:-1], weight1.shape[0])
    if seed is not None and dropout_p > 0.0:
        seed = seed_tensor(seed, x.device)
        keep1 = dropout_keep_mask(seed, out_shape, dropout_p, elements_per_draw=8)
        keep2 = dropout_keep_mask(seed + 1, (*x.shape[:-1], weight2.shape[0]), dropout_p,
                                  elements_per_draw=8)
    h = linear_act_ref(x, weight1, bias1, activation, upcast, keep1, dropout_p)
    return linear_act_ref(h, weight2, bias2, "none", upcast, keep2, dropout_p)


# ----------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------
def _check_parameter(name: str, tensor, x: torch.Tensor, shape) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.device != x.device:
        raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")
    if tensor.dtype != x.dtype:
        raise ValueError(f"{name} must have x's dtype {x.dtype}, got {tensor.dtype}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dim, got shape {tuple(x.shape)}")


def _check_activation(activation) -> None:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _check_dropout_p(dropout_p) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    return float(dropout_p)


def _check_linear(x, weight, bias, name="weight", bias_name="bias", in_features=None) -> int:
    """Checks weight [N, K] / bias [N] against x (K = `in_features` or x's last dim); returns N."""
    K = x.shape[-1] if in_features is None else in_features
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a 2-D [out_features, in_features] tensor, got {shape}")
    if weight.shape[1] != K:
        raise ValueError(
            f"{name} must have shape [out_features, {K}] to match the input's last dim {K}, "
            f"got {tuple(weight.shape)}"
        )
    N = weight.shape[0]
    _check_parameter(name, weight, x, (N, K))
    if bias is not None:
        _check_parameter(bias_name, bias, x, (N,))
    return N


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "gelu",
    dropout_p: float = 0.0,
    seed: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``dropout(act(x @ weight.T + bias))`` with the bias, activation and dropout fused into the matmul
    (module docstring).

    Args:
        x: ``[..., K]`` float32 / float16 / bfloat16; the leading dims are flattened into rows.
        weight: ``[N, K]`` (nn.Linear's layout), x's dtype and device.
        bias: ``[N]`` or None, x's dtype and device.
        activation: ``"gelu"`` (erf), ``"gelu_tanh"``, ``"quick_gelu"`` (``x * sigmoid(1.702 x)``) or
            ``"none"``.
        dropout_p: dropout probability in [0, 1) after the activation (0: none; the caller passes 0 in
            eval). Element ``(row, col)`` of the flattened ``[M, N]`` output is kept when
            ``keep_element8(seed, row * N + col, dropout_threshold(dropout_p))``;
            ``dropout_keep_mask(seed, y.shape, dropout_p, elements_per_draw=8)`` reproduces the mask.
        seed: the dropout seed: an int or a one-element int64 tensor on x's device; None draws one from
            torch's default generator. The backward regenerates the mask from it (no mask is stored).

    Returns:
        ``[..., N]`` in x's dtype.
    """
    _check_x(x)
    _check_activation(activation)
    dropout_p = _check_dropout_p(dropout_p)
    N = _check_linear(x, weight, bias)
    K = x.shape[-1]
    seed = seed_tensor(seed, x.device) if dropout_p > 0.0 else None

    backend = select_backend(OP_NAME, x.device, available_backends(OP_NAME, x.device))
    if backend == "reference":
        keep = (None if seed is None
                else dropout_keep_mask(seed, (*x.shape[:-1], N), dropout_p, elements_per_draw=8))
        return linear_act_ref(x, weight, bias, activation, keep_mask=keep, dropout_p=dropout_p)
    y, _ = _linear_act_fwd(
        x.contiguous().reshape(-1, K), weight.contiguous(), None if bias is None else bias.contiguous(),
        activation, _needs_grad(x, weight, bias), seed, dropout_p,
    )
    return y.reshape(*x.shape[:-1], N)


def fused_mlp(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
    activation: str = "gelu",
    dropout_p: float = 0.0,
    seed: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """The whole MLP ``dropout(fc2(dropout(act(fc1(x)))))`` as one op that saves for backward only x, fc1's
    pre-activation ``[..., hidden]`` and the seed (eager PyTorch also keeps the activation ``[..., hidden]``
    and, with dropout, both masks): fc2's weight gradient recomputes ``dropout(act(pre))`` inside the pass
    that computes fc1's ``dpre``.

    Both dropouts use probability `dropout_p` (0: none), the first keyed on `seed` and the second on
    ``seed + 1`` (see :func:`fused_mlp_ref`). Biases are both present or both None. Arguments otherwise
    as :func:`linear_act` (weight1 ``[hidden, K]``, weight2 ``[N, hidden]``).
    """
    _check_x(x)
    _check_activation(activation)
    dropout_p = _check_dropout_p(dropout_p)
    hidden = _check_linear(x, weight1, bias1, "weight1", "bias1")
    _check_linear(x, weight2, bias2, "weight2", "bias2", in_features=hidden)
    if (bias1 is None) != (bias2 is None):
        raise ValueError("bias1 and bias2 must both be tensors or both be None")
    K = x.shape[-1]
    N = weight2.shape[0]
    seed = seed_tensor(seed, x.device) if dropout_p > 0.0 else None
    if activation == "none":
        # No activation to recompute: two linear_act calls save the same (x and fc1's output).
        h = linear_act(x, weight1, bias1, "none", dropout_p, seed)
        return linear_act(h, weight2, bias2, "none", dropout_p, _next_seed(seed))

    backend = select_backend(OP_NAME, x.device, available_backends(OP_NAME, x.device))
    if backend == "reference":
        return fused_mlp_ref(x, weight1, bias1, weight2, bias2, activation, dropout_p, seed)

    def flat(t):
        return None if t is None else t.contiguous()

    y, _ = _fused_mlp_fwd(
        x.contiguous().reshape(-1, K), flat(weight1), flat(bias1), flat(weight2), flat(bias2),
        activation, _needs_grad(x, weight1, bias1, weight2, bias2), seed, dropout_p,
    )
    return y.reshape(*x.shape[:-1], N)
