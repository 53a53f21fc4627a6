"""dropout_add_layer_norm's launch configs and plans (what the GPU tuner times), and their registration for
the AOT check. Why these plans: see DESIGN.md."""

from __future__ import annotations

import functools

import torch

from internvideo_fast.ops.dropout_add_layer_norm.kernels import (
    _dropout_add_layer_norm_bwd_kernel,
    _dropout_add_layer_norm_fwd_kernel,
    _dropout_add_layer_norm_fwd_loop_kernel,
)
from internvideo_fast.ops.framework.kernel_registry import (
    KernelConfig,
    TritonKernelSpec,
    register_triton_kernel,
)
from internvideo_fast.ops.framework.launch_math import sm_count


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
# Forward plans, timed by a LaunchTuner on the GPU: the default is the kernel above (one row per program);
# the others run _dropout_add_layer_norm_fwd_loop_kernel (a few programs per SM, weight and bias loaded once
# per program, the row loop pipelined through shared memory), at the ViT widths' blocks (D 257-1024). The
# last two put a row on a quarter of the warps (one warp at BLOCK_D 1024): no barriers in the row loop.
# (warps multiplier, programs per SM, load stages)
_FWD_LOOP_PLAN_SHAPES = ((1, 4, 1), (1, 4, 3), (1, 8, 2), (1, 8, 3), (2, 4, 3), (1, 4, 4), (0.25, 12, 1),
                         (0.25, 12, 3))
# Values of a row per thread in a plan with fewer warps than the width's default, at most: more spill with
# the sm_90a check. The backward's plans above 16 need 16-byte aligned rows (it spills unaligned there).
_MAX_VALUES_PER_THREAD = 32
_BWD_UNALIGNED_MAX_VALUES_PER_THREAD = 16
_FWD_LOOP_BLOCK_DS = (512, 1024)


def _forward_loop_plans(config: KernelConfig) -> list[tuple[KernelConfig, int]]:
    """The loop kernel's plans of one row width as (config, programs per SM); none outside
    _FWD_LOOP_BLOCK_DS."""
    if config.constexprs["BLOCK_D"] not in _FWD_LOOP_BLOCK_DS:
        return []
    return _row_loop_plans(config, _FWD_LOOP_PLAN_SHAPES)


# Backward plans per row width, timed by a LaunchTuner on the GPU (the first is the default everywhere
# else): (config, programs per SM). More warps halve the values per thread; more programs per SM put more
# rows in flight where registers allow; load stages pipeline the row loop through shared memory (cp.async,
# aligned rows only). The half- and quarter-warp plans put a row on fewer warps (one warp at BLOCK_D 1024:
# no barriers per row); unaligned they spill, so they run only on 16-byte aligned rows (_rows_aligned16).
# Why these and not others: DESIGN.md.
# (warps multiplier, programs per SM, load stages)
_BWD_PLAN_SHAPES = ((1, 4, 1), (2, 4, 1), (1, 8, 1), (1, 4, 3), (1, 8, 2), (2, 4, 3), (1, 8, 3), (1, 4, 4),
                    (0.5, 8, 3), (0.5, 8, 1), (0.25, 8, 1), (0.25, 8, 3))


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
