"""linear_act's and fused_mlp's launch configurations and backward plans (what the GPU tuners time), and
their registration for the sm_90a AOT check. Why these tiles: DESIGN.md."""

from __future__ import annotations

import triton

from internvideo_fast.ops.framework.kernel_registry import (
    KernelConfig,
    TritonKernelSpec,
    register_triton_kernel,
)
from internvideo_fast.ops.linear_act.kernels.backward import (
    _fused_mlp_dh_kernel,
    _fused_mlp_dh_persistent_kernel,
    _linear_act_bwd_kernel,
)
from internvideo_fast.ops.linear_act.kernels.forward import (
    _activation_dropout_kernel,
    _linear_act_fwd_kernel,
    _linear_act_fwd_persistent_kernel,
    _linear_act_fwd_tma_kernel,
)
from internvideo_fast.ops.linear_act.reference import ACTIVATIONS


# GPU forward configs, autotuned per (N, K, dtype, epilogue). From the sm_90a check: 128x128x64 at
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
# GPU plans of the backward's elementwise kernel: (tile config, programs per SM), timed by the LaunchTuner;
# the first is the default. Registers from the sm_90a check (gelu; without / with dropout and the
# recomputed activation; aligned): 8x256 at 4 warps 80-168 (unaligned 141-245), 4x256 at 4 warps 40-59
# (54-101), 8x512 at 8 warps 80-182 (143-245), no spills. The LOAD_STAGES plans put the next row blocks'
# loads in flight through shared memory instead of registers; the last two put more rows in flight still.
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

# Arguments of the GEMM kernels that TMA loads: x [M, K] and weight [N, K] as descriptors.
_TMA_OPERANDS = {
    "x_desc": "tensordesc<bf16[{BLOCK_M},{BLOCK_K}]>",
    "weight_desc": "tensordesc<bf16[{BLOCK_N},{BLOCK_K}]>",
}
_GEMM_SIZES = {"M": "i32", "N": "i32", "K": "i32", "drop_threshold": "i32", "keep_scale": "fp32"}
# fused_mlp's dh GEMM: dz [M, K] and weight2 [K, N] by TMA, the fc1 pass's tensors by pointer.
_DH_SIGNATURE = {
    "dz_desc": "tensordesc<bf16[{BLOCK_M},{BLOCK_K}]>",
    "weight2_desc": "tensordesc<bf16[{BLOCK_K},{BLOCK_N}]>",
    "pre_ptr": "*bf16", "seed_ptr": "*i64", "dpre_ptr": "*bf16", "h_ptr": "*bf16",
    "dbias_partial_ptr": "*fp32", **_GEMM_SIZES,
}


def _epilogue_variants(configs, extra=None) -> tuple[KernelConfig, ...]:
    """What the AOT check compiles of a forward GEMM: each tile config with every activation (each is a
    separate compiled kernel), bias and the pre-activation store on (the largest epilogue), at bf16, where
    INPUT_PRECISION is unused; once without and once with the dropout epilogue (Philox per element: the
    largest register footprint). ``extra(config, dropout)`` adds constexprs before the epilogue's."""
    return tuple(
        KernelConfig(
            dict(c.constexprs, **(extra(c, dropout) if extra else {}), ACTIVATION=activation, HAS_BIAS=True,
                 STORE_PRE=activation != "none", INPUT_PRECISION="tf32", HAS_DROPOUT=dropout),
            c.num_warps, c.num_stages,
        )
        for dropout in (False, True)
        for c in configs
        for activation in ACTIVATIONS
    )


def _dh_variants(configs) -> tuple[KernelConfig, ...]:
    """What the AOT check compiles of the fused dh GEMM: each config with every activation that has a
    derivative to fuse, bias on, without and with dropout."""
    return tuple(
        KernelConfig(dict(c.constexprs, ACTIVATION=activation, HAS_BIAS=True, HAS_DROPOUT=dropout),
                     c.num_warps, c.num_stages)
        for dropout in (False, True)
        for c in configs
        for activation in ("gelu", "gelu_tanh", "quick_gelu")
    )


register_triton_kernel(
    TritonKernelSpec(
        name="linear_act_fwd",
        kernel=_linear_act_fwd_kernel,
        signature={
            "x_ptr": "*bf16", "weight_ptr": "*bf16", "bias_ptr": "*bf16", "seed_ptr": "*i64",
            "y_ptr": "*bf16", "pre_ptr": "*bf16", **_GEMM_SIZES,
        },
        configs=_epilogue_variants((*_FWD_GPU_CONFIGS, _FWD_INTERPRETER_CONFIG)),
        multiplies_matrices=True,
    )
)
# TMA-descriptor forward (``_linear_act_fwd_tma_kernel``), for 16-bit inputs with 16-byte aligned rows on
# sm_90+, timed against the pointer kernel (LaunchTuner, keyed on the GEMM's shape). sm_90a check (bf16,
# gelu + pre store / dropout): 128x128x64 at 8 warps uses 125 / 171 registers and 128 KB (4 stages);
# 4-warp 128x128 and 64x256 tiles spill with dropout. Larger tiles are slower (DESIGN.md).
_FWD_TMA_CONFIGS = (
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
)
# Under the interpreter (tests of the TMA path on CPU tensors).
_FWD_TMA_INTERPRETER_CONFIG = _FWD_INTERPRETER_CONFIG
# Persistent TMA forward (``_linear_act_fwd_persistent_kernel``, one program per SM, TMA loads and
# stores), timed beside the others. sm_90a check (bf16, aligned, every activation): 128x128x64 at 4 stages
# 144 KB of shared memory (the flattened loop keeps more in flight than the one-tile kernel's 128 KB) and
# 97-128 registers, 194-224 with dropout; no spills. warp_specialize=True on the loop is a no-op at 8 warps
# and crashes the compiler at 4 on sm_90a.
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
            **_TMA_OPERANDS, "bias_ptr": "*bf16", "seed_ptr": "*i64", "y_ptr": "*bf16", "pre_ptr": "*bf16",
            **_GEMM_SIZES,
        },
        configs=_epilogue_variants(_FWD_TMA_CONFIGS),
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
            **_TMA_OPERANDS, "bias_ptr": "*bf16", "seed_ptr": "*i64",
            "y_desc": "tensordesc<bf16[{BLOCK_M},{EPILOGUE_N}]>",
            "pre_desc": "tensordesc<bf16[{BLOCK_M},{EPILOGUE_N}]>",
            **_GEMM_SIZES, "programs": "i32",
        },
        configs=_epilogue_variants(_FWD_PERSISTENT_CONFIGS, lambda c, dropout: dict(
            EPILOGUE_N=_epilogue_columns(c.constexprs["BLOCK_M"], c.constexprs["BLOCK_N"], dropout))),
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
# 128x128 at 4 stages 128 KB shared memory and 126-157 registers; no spills.
_DH_TMA_CONFIGS = (
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "MAX_PART": 128 * 32},
                 num_warps=8, num_stages=4),
)
_DH_INTERPRETER_CONFIG = KernelConfig(
    {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "MAX_PART": 64 * 16},
    num_warps=4, num_stages=1,
)
# The persistent form (``_fused_mlp_dh_persistent_kernel``, one program per SM), also a tuner candidate.
# sm_90a check (bf16, aligned): 136 KB of shared memory, 128-170 registers, 193-215 with dropout; no spills.
_DH_PERSISTENT_CONFIGS = (
    KernelConfig({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "MAX_PART": 128 * 32},
                 num_warps=8, num_stages=4),
)

register_triton_kernel(
    TritonKernelSpec(
        name="fused_mlp_dh_tma",
        kernel=_fused_mlp_dh_kernel,
        signature=_DH_SIGNATURE,
        configs=_dh_variants((*_DH_TMA_CONFIGS, _DH_INTERPRETER_CONFIG)),
        multiplies_matrices=True,
        aligned_only=True,
    )
)
register_triton_kernel(
    TritonKernelSpec(
        name="fused_mlp_dh_persistent",
        kernel=_fused_mlp_dh_persistent_kernel,
        signature={**_DH_SIGNATURE, "programs": "i32"},
        configs=_dh_variants(_DH_PERSISTENT_CONFIGS),
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
