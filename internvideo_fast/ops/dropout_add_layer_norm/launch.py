"""dropout_add_layer_norm's host launchers as torch.library custom ops (x, residual: ``[rows, D]``
contiguous; the public function reshapes), their fakes and the autograd formula."""

from __future__ import annotations

import functools

import torch

from internvideo_fast.ops.dropout_add_layer_norm.kernels import (
    _dropout_add_layer_norm_bwd_kernel,
    _dropout_add_layer_norm_fwd_kernel,
    _dropout_add_layer_norm_fwd_loop_kernel,
)
from internvideo_fast.ops.dropout_add_layer_norm.plans import (
    _labelled_backward_plans,
    _labelled_forward_plans,
    _row_loop_programs,
    _rows_aligned16,
)
from internvideo_fast.ops.dropout_add_layer_norm.reference import OP_NAME
from internvideo_fast.ops.framework.autotuning import forced_candidates, launch_tuner, length_bucket
from internvideo_fast.ops.framework.dispatch import eager_op
from internvideo_fast.ops.framework.kernel_registry import KernelConfig
from internvideo_fast.ops.framework.launch_math import cdiv
from internvideo_fast.ops.framework.outputs import new_output
from internvideo_fast.ops.triton_common.philox import dropout_scalars


def _rows_per_sample(rows: int, drop_path_scale: torch.Tensor | None) -> int:
    if drop_path_scale is None or drop_path_scale.numel() == 0:
        return 1
    return max(1, rows // drop_path_scale.numel())



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
    plans = forced_candidates(OP_NAME + "_fwd", plans)
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
    launch (each such small reduction is mostly latency; see DESIGN.md)."""
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
    plans = forced_candidates(OP_NAME + "_bwd", plans)
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
# Eager calls skip torch.library's dispatch (ops/framework/dispatch.py); compiled graphs keep the ops.
_dropout_add_layer_norm_fwd = eager_op(
    _dropout_add_layer_norm_fwd_op, _dropout_add_layer_norm_fwd_impl,
    setup_context=_setup_context, backward=_backward,
)
