"""linear_act's host launchers (the forward's candidate plans, the backward's elementwise pass) and the
``internvideo_fast::linear_act_fwd`` / ``_bwd`` custom ops with their fakes and autograd formula."""

from __future__ import annotations

import functools

import torch

from internvideo_fast._extension import HAS_C, has_kernel
from internvideo_fast.ops.framework.autotuning import (
    forced_candidates,
    forced_plan,
    launch_tuner,
    length_bucket,
)
from internvideo_fast.ops.framework.backend import triton_interpreter_on
from internvideo_fast.ops.framework.dispatch import eager_op
from internvideo_fast.ops.framework.kernel_registry import KernelConfig
from internvideo_fast.ops.framework.launch_math import cdiv, device_capability, sm_count
from internvideo_fast.ops.framework.outputs import new_output
from internvideo_fast.ops.linear_act.kernels.backward import _linear_act_bwd_kernel
from internvideo_fast.ops.linear_act.kernels.forward import (
    _activation_dropout_kernel,
    _linear_act_fwd_kernel,
    _linear_act_fwd_persistent_kernel,
    _linear_act_fwd_tma_kernel,
)
from internvideo_fast.ops.linear_act.plans import (
    _ACTIVATION_CONFIG,
    _ACTIVATION_INTERPRETER_CONFIG,
    _BWD_GPU_PLANS,
    _BWD_INTERPRETER_CONFIG,
    _FWD_INTERPRETER_CONFIG,
    _FWD_PERSISTENT_CONFIGS,
    _FWD_TMA_CONFIGS,
    _FWD_TMA_INTERPRETER_CONFIG,
    _PERSISTENT_INTERPRETER_PROGRAMS,
    _epilogue_columns,
    _fwd_kernel_autotuned,
)
from internvideo_fast.ops.linear_act.reference import CUTLASS_SCHEDULES, OP_NAME
from internvideo_fast.ops.triton_common.philox import dropout_scalars


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _has_dropout(seed: torch.Tensor | None, dropout_p: float) -> bool:
    return seed is not None and dropout_p > 0.0


def _next_seed(seed: torch.Tensor | None) -> torch.Tensor | None:
    """fused_mlp's second dropout (after fc2) uses ``seed + 1`` (int64, wrapping): another Philox key."""
    return None if seed is None else seed + 1



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
    # dbias's columns (in place of dy.sum(0), which runs well below copy bandwidth).
    store_dpre = activation != "none" or has_dropout
    act_out = pre if store_act and not store_dpre else None
    if not store_dpre:
        store_act = False
        if not has_bias:
            return dy, None, act_out
    interpreter = dy.device.type != "cuda" or triton_interpreter_on()
    tuner = launch_tuner(OP_NAME + "_bwd")
    key = (dy.dtype, length_bucket(M), N, activation, has_bias, has_dropout, store_act)
    plan_count = 1 if interpreter or forced_plan(tuner.name) is not None else len(_BWD_GPU_PLANS)
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
        plans = forced_candidates(tuner.name, plans)
    _, dbias_partial = tuner.run(
        key, plans, dy.device,
        # Never the caller's tensors (dy, pre): the tuner poisons what it compares.
        outputs=lambda partial: (dpre if store_dpre else None, act_out if store_act else None,
                                 partial.sum(0) if has_bias else None),
    )
    # Deterministic for a given plan: a fixed split of rows over programs, then one reduction over the
    # partial rows (IVF_AUTOTUNE=0 fixes the plan across processes).
    return dpre, (dbias_partial.sum(0) if has_bias else None), act_out



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
# Eager calls skip torch.library's dispatch (ops/framework/dispatch.py); compiled graphs keep the ops.
_linear_act_bwd = eager_op(_linear_act_bwd_op, _linear_act_bwd_impl)
_linear_act_fwd = eager_op(
    _linear_act_fwd_op, _linear_act_fwd_impl, setup_context=_setup_context, backward=_backward
)


if HAS_C:
    # The CUTLASS fc1 GEMM (kernels/mlp_gemm_sm90.cu; csrc/mlp_gemm_cpu.cpp on the CPU): a plan of the ops
    # above, so never traced itself, but a fake implementation keeps it usable under torch.compile.
    @torch.library.register_fake("internvideo_fast::mlp_gemm_bias_act")
    def _mlp_gemm_bias_act_fake(x, weight, bias, activation, schedule, y, pre):
        return None
