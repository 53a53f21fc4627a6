"""cross_attention's host launchers as torch.library custom ops (layout checks, split-key and TMA choices,
the tuner's candidates), their fakes and the autograd formula."""

from __future__ import annotations

import functools

import torch

from internvideo_fast.ops.cross_attention.kernels.backward import (
    _cross_attention_bwd_dkdv_kernel,
    _cross_attention_bwd_dkdv_tma_kernel,
    _cross_attention_bwd_dq_kernel,
    _cross_attention_bwd_dq_tma_kernel,
    _cross_attention_bwd_preprocess_kernel,
)
from internvideo_fast.ops.cross_attention.kernels.forward import (
    _cross_attention_combine_kernel,
    _cross_attention_fwd_kernel,
    _cross_attention_fwd_tma_kernel,
)
from internvideo_fast.ops.cross_attention.plans import (
    _BWD_TMA_TUNE,
    _COMBINE,
    _CONFIGS,
    _FWD_TMA_TUNE,
    _PREPROCESS,
    _backward_plans,
    _forward_tiles,
    _launch_options,
    _plan_label,
    _precision_class,
    _tile_config,
    _tile_label,
    _tma_bwd_config,
    _tma_config,
    _tma_label,
)
from internvideo_fast.ops.cross_attention.reference import SPLIT_MAX_SQ
from internvideo_fast.ops.framework.autotuning import (
    forced_candidates,
    forced_plan,
    launch_tuner,
    length_bucket,
)
from internvideo_fast.ops.framework.backend import triton_interpreter_on
from internvideo_fast.ops.framework.dispatch import eager_op
from internvideo_fast.ops.framework.launch_math import cdiv, device_capability, next_power_of_2, sm_count
from internvideo_fast.ops.framework.outputs import new_output


# force_plan("cross_attention_bwd", "split" | "atomic" | "split_tma") runs that backward plan (its first
# candidate); force_plan("cross_attention_fwd*", "tma") the TMA forward (its first tile). A forced TMA plan
# runs wherever the tensors have a TMA layout, skipping the device check (the interpreter runs host
# descriptors over CPU tensors); deterministic=True ignores the forcing.


def _block_d(D: int) -> int:
    return max(32, next_power_of_2(D))


def _aligned16(*tensors: torch.Tensor) -> bool:
    """Whether Triton specializes a launch on these tensors as 16-divisible (pointers and strides)."""
    for t in tensors:  # plain loops: nested generators cost more host time than the checks themselves
        if t.data_ptr() % 16:
            return False
        for stride in t.stride()[:-1]:
            if stride % 16:
                return False
    return True


def _tma_layout_ok(capability: tuple[int, int] | None, *tensors: torch.Tensor) -> bool:
    """Whether TMA descriptors can load these [B, S, H, D] tensors on a device of `capability` (None: not a
    CUDA device): sm_90+, 16-bit, 16-byte aligned base, every stride but the last a positive multiple of 16
    bytes."""
    if capability is None or capability[0] < 9:
        return False
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16) or t.data_ptr() % 16 or t.stride(-1) != 1:
            return False
        if any(stride <= 0 or stride * t.element_size() % 16 for stride in t.stride()[:-1]):
            return False
    return True


def _tma_eligible(*tensors: torch.Tensor) -> bool:
    """_tma_layout_ok on the tensors' device: CUDA outside the interpreter, else not eligible."""
    device = tensors[0].device
    on_gpu = device.type == "cuda" and not triton_interpreter_on()
    return _tma_layout_ok(device_capability(device) if on_gpu else None, *tensors)


def _split_block_n(D: int, dtype: torch.dtype) -> int:
    return _CONFIGS[_precision_class(dtype)]["fwd_split"][_block_d(D)][1]


@functools.lru_cache(maxsize=None)
def _target_programs(device: torch.device) -> int:
    """Programs that keep the device busy: two per SM on CUDA; on the interpreter 16, so that the tests'
    tiny shapes take the split path."""
    if device.type == "cuda":
        return 2 * sm_count(device)
    return 16


def _num_splits(batch_heads: int, Sq: int, Sk: int, block_n: int, device: torch.device) -> int:
    """Key splits of the forward: 1 unless Sq is small and (b, h, query block) programs alone leave the
    device idle; then enough splits to reach the target, at least one key block per split."""
    if Sq > SPLIT_MAX_SQ:
        return 1
    key_blocks = cdiv(Sk, block_n)
    wanted = cdiv(_target_programs(device), batch_heads)
    return max(1, min(wanted, key_blocks, 64))


def _bsh_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, sequence, head) strides of a [B, S, H, D] tensor."""
    return t.stride()[:3]


def _tma_descriptors(blocks: dict, *tensors_and_rows: tuple[torch.Tensor, str]) -> tuple:
    """4-D TMA descriptors over [B, S, H, D] tensors with their strides, each paired with the name of its
    block's row count: blocks of [1, BLOCK_M or BLOCK_N, 1, BLOCK_D] (the unit zero-fills rows past S and
    dims past D)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return tuple(
        TensorDescriptor(t, list(t.shape), list(t.stride()), [1, blocks[rows], 1, blocks["BLOCK_D"]])
        for t, rows in tensors_and_rows
    )


def _tuning_key(q: torch.Tensor, Sk: int, aligned: bool, has_lengths: bool, has_dropout: bool) -> tuple:
    B, Sq, H, D = q.shape
    return (
        str(q.dtype), D, aligned, has_lengths, has_dropout,
        length_bucket(Sq), length_bucket(Sk), length_bucket(B * H),
    )


def _run_candidates(tuner: str, key: tuple, candidates: list, device: torch.device, outputs: tuple):
    """One candidate runs directly (deterministic=True, or nothing to tune); more go to the tuner, which
    checks each one's `outputs` against the default's before choosing."""
    if len(candidates) == 1:
        return candidates[0][1]()
    return launch_tuner(tuner).run(key, candidates, device, outputs=lambda _: outputs)[1]


# ----------------------------------------------------------------------------------------------------
# Host launchers as torch.library ops
# ----------------------------------------------------------------------------------------------------
def _cross_attention_fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    seed: torch.Tensor | None,
    softmax_scale: float,
    dropout_p: float,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out [B, Sq, H, D] contiguous in q's dtype, lse [B, H, Sq] fp32). `deterministic` launches
    the default tiles only (no tuning), so results are bitwise the same in every process."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    out = new_output(q, (B, Sq, H, D))
    lse = new_output(q, (B, H, Sq), torch.float32)
    has_dropout = seed is not None and dropout_p > 0.0
    kind, block_d = _precision_class(q.dtype), _block_d(D)
    splits = _num_splits(B * H, Sq, Sk, _split_block_n(D, q.dtype), q.device)
    kernel = "fwd" if splits == 1 else "fwd_split"
    features = dict(HAS_LENGTHS=kv_lengths is not None, HAS_DROPOUT=has_dropout)

    def launch(tile, tma=False):
        config = _tma_config(block_d, tile, **features) if tma else _tile_config(
            kind, kernel, block_d, tile, **features
        )
        constexprs, options = _launch_options(config)
        block_n = constexprs["BLOCK_N"]
        keys_per_split = cdiv(cdiv(Sk, splits), block_n) * block_n
        tile_splits = cdiv(Sk, keys_per_split)
        if tile_splits == 1:
            target_out, target_lse = out, lse
            out_strides = (0, *out.stride()[:3])
            lse_strides = (0, lse.stride(0), lse.stride(1))
        else:
            target_out = new_output(q, (tile_splits, B, Sq, H, D), torch.float32)
            target_lse = new_output(q, (tile_splits, B, H, Sq), torch.float32)
            out_strides = target_out.stride()[:4]
            lse_strides = target_lse.stride()[:3]
        grid = (cdiv(Sq, constexprs["BLOCK_M"]), B * H, tile_splits)
        if tma:
            inputs = _tma_descriptors(constexprs, (q, "BLOCK_M"), (k, "BLOCK_N"), (v, "BLOCK_N"))
            fn = _cross_attention_fwd_tma_kernel
        else:
            fn, inputs = _cross_attention_fwd_kernel, (q, k, v)
        fn[grid](
            *inputs, kv_lengths, seed if has_dropout else None, target_out, target_lse,
            *(() if tma else (*_bsh_strides(q), *_bsh_strides(k), *_bsh_strides(v))), *out_strides,
            *lse_strides, H, Sq, Sk, D, keys_per_split, softmax_scale,
            dropout_p if has_dropout else 0.0, 1.0 / (1.0 - dropout_p) if has_dropout else 1.0,
            **constexprs, **options,
        )
        if tile_splits > 1:
            block_m, warps = _COMBINE[block_d]
            _cross_attention_combine_kernel[(cdiv(Sq, block_m), B * H)](
                target_out, target_lse, out, lse, H, Sq, D, tile_splits,
                BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps, num_stages=1,
            )

    aligned = _aligned16(q, k, v, out)
    tiles = _forward_tiles(kind, kernel, block_d, aligned, tune=not deterministic)
    candidates = [(_tile_label(tile), functools.partial(launch, tile)) for tile in tiles]
    tuner = f"cross_attention_{kernel}"
    forced = not deterministic and forced_plan(tuner) == "tma"
    with_tma = not deterministic and kind == "16bit" and (
        _tma_layout_ok((9, 0), q, k, v) if forced else _tma_eligible(q, k, v)
    )
    if with_tma:
        tma_tiles = _FWD_TMA_TUNE[kernel][block_d]
        tma = [(_tma_label(tile), functools.partial(launch, tile, True)) for tile in tma_tiles]
        candidates = forced_candidates(tuner, candidates + tma)
    # TMA eligibility is part of the key: launches of one key always offer the same candidates.
    key = (*_tuning_key(q, Sk, aligned, kv_lengths is not None, has_dropout), with_tma)
    _run_candidates(tuner, key, candidates, q.device, (out, lse))
    return out, lse


_cross_attention_fwd_op = torch.library.custom_op(
    "internvideo_fast::cross_attention_fwd", _cross_attention_fwd_impl, mutates_args=()
)


@_cross_attention_fwd_op.register_fake
def _cross_attention_fwd_fake(q, k, v, kv_lengths, seed, softmax_scale, dropout_p, deterministic=False):
    B, Sq, H, D = q.shape
    return q.new_empty((B, Sq, H, D)), q.new_empty((B, H, Sq), dtype=torch.float32)


def _cross_attention_bwd_impl(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    seed: torch.Tensor | None,
    softmax_scale: float,
    dropout_p: float,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv), contiguous [B, S, H, D] in the inputs' dtype. `deterministic`: the default plan
    (dK/dV kernel, then dQ kernel, no atomics) at the default tiles, bitwise reproducible; otherwise the
    GPU tunes between plans, atomic dQ included."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    out = out.contiguous()
    dq = new_output(q, (B, Sq, H, D))
    dk = new_output(q, (B, Sk, H, D))
    dv = new_output(q, (B, Sk, H, D))
    delta = new_output(q, (B, H, Sq), torch.float32)
    has_dropout = seed is not None and dropout_p > 0.0
    kind, block_d = _precision_class(q.dtype), _block_d(D)
    block_m, warps = _PREPROCESS[block_d]
    _cross_attention_bwd_preprocess_kernel[(cdiv(Sq, block_m), B * H)](
        out, dout, delta, *_bsh_strides(dout), H, Sq, D,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps, num_stages=1,
    )
    scalars = (
        H, Sq, Sk, D, softmax_scale,
        dropout_p if has_dropout else 0.0, 1.0 / (1.0 - dropout_p) if has_dropout else 1.0,
    )
    common = (*_bsh_strides(q), *_bsh_strides(k), *_bsh_strides(v), *_bsh_strides(dout), *scalars)
    features = dict(HAS_LENGTHS=kv_lengths is not None, HAS_DROPOUT=has_dropout)
    seed_arg = seed if has_dropout else None

    def launch_tma(plan):
        constexprs, options = _launch_options(_tma_bwd_config(block_d, plan[1], **features))
        descriptors = _tma_descriptors(constexprs, (q, "BLOCK_M"), (k, "BLOCK_N"), (v, "BLOCK_N"),
                                       (dout, "BLOCK_M"))
        _cross_attention_bwd_dkdv_tma_kernel[(cdiv(Sk, constexprs["BLOCK_N"]), B * H)](
            *descriptors, lse, delta, kv_lengths, seed_arg, dk, dv, *scalars, **constexprs, **options,
        )
        constexprs, options = _launch_options(_tma_bwd_config(block_d, plan[2], **features))
        descriptors = _tma_descriptors(constexprs, (q, "BLOCK_M"), (k, "BLOCK_N"), (v, "BLOCK_N"),
                                       (dout, "BLOCK_M"))
        _cross_attention_bwd_dq_tma_kernel[(cdiv(Sq, constexprs["BLOCK_M"]), B * H)](
            *descriptors, lse, delta, kv_lengths, seed_arg, dq, *scalars, **constexprs, **options,
        )

    def launch(plan):
        if plan[0] == "split_tma":
            return launch_tma(plan)
        atomic = plan[0] == "atomic"
        constexprs, options = _launch_options(
            _tile_config(kind, "bwd_dkdv_atomic" if atomic else "bwd_dkdv", block_d, plan[1], **features)
        )
        # fp32 dq takes the atomics directly; 16-bit dq is converted from an fp32 buffer. Zeroed here,
        # inside the candidate, so that every (timed) run starts from zero.
        dq_acc = (dq if q.dtype == torch.float32 else torch.empty_like(dq, dtype=torch.float32)).zero_() \
            if atomic else None
        _cross_attention_bwd_dkdv_kernel[(cdiv(Sk, constexprs["BLOCK_N"]), B * H)](
            q, k, v, dout, lse, delta, kv_lengths, seed_arg, dk, dv, dq_acc, *common, **constexprs, **options,
        )
        if atomic:
            if dq_acc is not dq:
                dq.copy_(dq_acc)
            return
        constexprs, options = _launch_options(_tile_config(kind, "bwd_dq", block_d, plan[2], **features))
        _cross_attention_bwd_dq_kernel[(cdiv(Sq, constexprs["BLOCK_M"]), B * H)](
            q, k, v, dout, lse, delta, kv_lengths, seed_arg, dq, *common, **constexprs, **options,
        )

    aligned = _aligned16(q, k, v, dout, dq, dk, dv)
    plans = _backward_plans(kind, block_d, aligned, deterministic)
    forced = None if deterministic else forced_plan("cross_attention_bwd")
    forced_tma = forced == "split_tma"
    with_tma = not deterministic and kind == "16bit" and (
        _tma_layout_ok((9, 0), q, k, v, dout) if forced_tma else _tma_eligible(q, k, v, dout)
    )
    if with_tma:
        plans += _BWD_TMA_TUNE[block_d]
    candidates = [(_plan_label(plan), functools.partial(launch, plan)) for plan in plans]
    if forced is not None:
        # Where that plan has no candidate (atomic at D = 128 unaligned), the default runs.
        candidates = forced_candidates("cross_attention_bwd", candidates)
    # TMA eligibility is part of the key: launches of one key always offer the same candidates.
    key = (*_tuning_key(q, Sk, aligned, kv_lengths is not None, has_dropout), with_tma)
    _run_candidates("cross_attention_bwd", key, candidates, q.device, (dq, dk, dv))
    return dq, dk, dv


_cross_attention_bwd_op = torch.library.custom_op(
    "internvideo_fast::cross_attention_bwd", _cross_attention_bwd_impl, mutates_args=()
)


@_cross_attention_bwd_op.register_fake
def _cross_attention_bwd_fake(
    dout, q, k, v, out, lse, kv_lengths, seed, softmax_scale, dropout_p, deterministic=False
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, kv_lengths, seed, softmax_scale, dropout_p, *rest = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_lengths, seed)
    ctx.softmax_scale = softmax_scale
    ctx.dropout_p = dropout_p
    ctx.deterministic = bool(rest[0]) if rest else False
    ctx.mark_non_differentiable(lse)
    # Unused outputs' gradients arrive as None, not as a zero fill per backward; the backward takes None.
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, kv_lengths, seed = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = _cross_attention_bwd(
        dout, q, k, v, out, lse, kv_lengths, seed, ctx.softmax_scale, ctx.dropout_p, ctx.deterministic
    )
    return dq, dk, dv, None, None, None, None, None


torch.library.register_autograd(
    "internvideo_fast::cross_attention_fwd", _backward, setup_context=_setup_context
)
# Eager calls skip torch.library's dispatch (ops/framework/dispatch.py); compiled graphs keep the ops.
_cross_attention_bwd = eager_op(_cross_attention_bwd_op, _cross_attention_bwd_impl)
_cross_attention_fwd = eager_op(
    _cross_attention_fwd_op, _cross_attention_fwd_impl, setup_context=_setup_context, backward=_backward
)
