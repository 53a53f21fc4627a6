"""fused_mlp's host launchers and custom ops: fc1 (+ act + dropout) and fc2 (+ dropout) as one op that saves
only x and fc1's pre-activation, with fc1's backward pass fused into the dh GEMM where the tuner finds it
faster."""

from __future__ import annotations

import functools

import torch

from internvideo_fast.ops.framework.autotuning import (
    forced_candidates,
    forced_plan,
    launch_tuner,
    length_bucket,
)
from internvideo_fast.ops.framework.backend import triton_interpreter_on
from internvideo_fast.ops.framework.dispatch import eager_op
from internvideo_fast.ops.framework.launch_math import cdiv, sm_count
from internvideo_fast.ops.framework.outputs import new_output
from internvideo_fast.ops.linear_act.kernels.backward import (
    _fused_mlp_dh_kernel,
    _fused_mlp_dh_persistent_kernel,
)
from internvideo_fast.ops.linear_act.launch import (
    _has_dropout,
    _launch_dpre,
    _launch_fwd,
    _linear_act_fwd,
    _next_seed,
    _tma_rows_ok,
)
from internvideo_fast.ops.linear_act.plans import (
    _DH_INTERPRETER_CONFIG,
    _DH_PERSISTENT_CONFIGS,
    _DH_TMA_CONFIGS,
    _PERSISTENT_INTERPRETER_PROGRAMS,
)
from internvideo_fast.ops.triton_common.philox import dropout_scalars

_DH_TUNER = "fused_mlp_dh"  # fc1's backward in fused_mlp: the dh GEMM and the elementwise pass, fused or not


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
    return forced_candidates(_DH_TUNER, plans)



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
        # Without dropout fc2 has no epilogue to fuse, and cuBLAS's GEMM + bias beats our Triton GEMM
        # (DESIGN.md).
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
                      with_fused=not interpreter or forced_plan(_DH_TUNER) is not None)
    key = (dy.dtype, length_bucket(dy.shape[0]), weight2.shape[0], weight2.shape[1], activation, has_bias,
           _has_dropout(seed, dropout_p))
    _, (dpre, dbias1, h) = launch_tuner(_DH_TUNER).run(
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
