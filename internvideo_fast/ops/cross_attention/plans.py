"""cross_attention's launch configurations by BLOCK_D (the next power of two of the head dim): default tiles,
the alternatives the GPU tuner times, and their registration for the AOT check. Why these tiles: DESIGN.md."""

from __future__ import annotations

import functools

import torch

from internvideo_fast.ops.cross_attention.kernels.backward import (
    _cross_attention_bwd_dkdv_kernel,
    _cross_attention_bwd_dkdv_tma_kernel,
    _cross_attention_bwd_dq_kernel,
    _cross_attention_bwd_dq_tma_kernel,
)
from internvideo_fast.ops.cross_attention.kernels.forward import (
    _cross_attention_fwd_kernel,
    _cross_attention_fwd_tma_kernel,
)
from internvideo_fast.ops.framework.kernel_registry import (
    KernelConfig,
    TritonKernelSpec,
    register_triton_kernel,
)


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
# elements (every power-of-two head dim and D = 80 or 96 with an even head count): faster dK/dV tiles that
# spill in the unaligned specialization (D = 40), which keeps the tiles above. See DESIGN.md.
_ALIGNED_CONFIGS = {
    "bwd_dkdv": {32: (32, 64, 4, 2), 64: (32, 64, 4, 2), 128: (16, 128, 8, 2)},
    "bwd_dq": {32: (128, 64, 8, 3), 64: (128, 64, 8, 3)},
}
# Forward alternatives that the GPU tunes after the default (16-bit only: fp32 runs on FMA, where the tile
# matters less than the missing tensor cores). _FWD_TUNE compiles spill-free in both specializations;
# _FWD_TUNE_ALIGNED only in the 16-aligned one, so it is tried only on aligned launches.
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
# load (see _tma_layout_ok); the first is what force_plan(..., "tma") runs. Each compiles for sm_90a
# (16-aligned specialization, kv_lengths and dropout on) without spills and with wgmma; tiles that spill
# are not offered (DESIGN.md).
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
# default's 32x64 dK/dV tile with atomics.
_BWD_TUNE_ALIGNED = {
    32: [("atomic", (32, 64, 4, 2)), ("atomic", (64, 128, 8, 2)), ("atomic", (32, 128, 8, 2)),
         ("split", (32, 128, 8, 2), (128, 64, 8, 2))],
    64: [("atomic", (32, 64, 4, 2)), ("atomic", (32, 128, 8, 2)), ("atomic", (16, 128, 8, 1))],
    128: [("atomic", (16, 64, 8, 2)), ("atomic", (16, 128, 8, 2)), ("atomic", (32, 64, 8, 2)),
          ("split", (16, 128, 8, 2), (128, 32, 8, 2))],
}
# Backward plans through the TMA kernels (_cross_attention_bwd_dkdv_tma_kernel, then
# _cross_attention_bwd_dq_tma_kernel), offered after the others on launches that TMA can load (16-bit,
# sm_90+, 16-byte aligned rows: see _tma_layout_ok): q and dout (dK/dV) and k and v (dQ) come to shared
# memory by TMA as wgmma's operands. Each tile compiles for sm_90a (16-aligned, kv_lengths and dropout on)
# without spills, with wgmma; first a plan with the pointer default's dK/dV tile, then smaller and larger.
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
