"""eager_op: eager calls of the Triton ops skip torch.library's dispatch but run the same kernels and the
same registered autograd formula, so outputs and gradients are bitwise equal to the custom ops' (which
torch.compile and every tracer still get)."""

import pytest
import torch
import torch.utils._python_dispatch

from helpers import needs_triton
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.framework.dispatch import eager_op
from internvideo_fast.ops.cross_attention import OP_NAME as ATTENTION_OP, cross_attention
from internvideo_fast.ops.dropout_add_layer_norm import OP_NAME as LN_OP, dropout_add_layer_norm
from internvideo_fast.ops.linear_act import OP_NAME as LINEAR_OP, fused_mlp, linear_act


def _ln(x, r, w, b):
    scale = torch.tensor([0.0, 1.25, 1.25])
    return dropout_add_layer_norm(x, r, w, b, 0.2, 1e-6, drop_path_scale=scale, seed=5)


def _linear(x, w, b):
    return (linear_act(x, w, b, "gelu", 0.1, 9),)


def _mlp(x, w1, b1, w2, b2):
    return (fused_mlp(x, w1, b1, w2, b2, "quick_gelu", 0.1, 9),)


def _attention(q, k, v):
    return (cross_attention(q, k, v, kv_lengths=torch.tensor([9, 4], dtype=torch.int32), dropout_p=0.1,
                            seed=3),)


CASES = {
    "cross_attention": (ATTENTION_OP, _attention, lambda: [torch.randn(2, 5, 2, 32), torch.randn(2, 9, 2, 32),
                                                           torch.randn(2, 9, 2, 32)]),
    "dropout_add_layer_norm": (LN_OP, _ln, lambda: [torch.randn(3, 5, 40), torch.randn(3, 5, 40),
                                                    torch.randn(40), torch.randn(40)]),
    "linear_act": (LINEAR_OP, _linear, lambda: [torch.randn(2, 7, 40), torch.randn(100, 40) / 7,
                                                torch.randn(100)]),
    "fused_mlp": (LINEAR_OP, _mlp, lambda: [torch.randn(2, 7, 40), torch.randn(100, 40) / 7, torch.randn(100),
                                            torch.randn(40, 100) / 10, torch.randn(40)]),
}


def _run(fn, inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    outputs = fn(*leaves)
    torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
    return outputs, [leaf.grad for leaf in leaves]


def _op_node(output):
    """The name of the autograd node under the public function's reshapes."""
    node = output.grad_fn
    while type(node).__name__ in ("ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0"):
        node = node.next_functions[0][0]
    return type(node).__name__


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_eager_path_is_bitwise_the_custom_op(case, monkeypatch):
    op_name, fn, make_inputs = CASES[case]
    torch.manual_seed(0)
    inputs = make_inputs()
    with use_backend("triton", op_name):
        monkeypatch.delenv("IVF_DISPATCH_CUSTOM_OPS", raising=False)
        eager_outputs, eager_grads = _run(fn, inputs)
        monkeypatch.setenv("IVF_DISPATCH_CUSTOM_OPS", "1")
        op_outputs, op_grads = _run(fn, inputs)
    # Which path ran: the eager path's autograd node is our Function, the custom op's torch.library's.
    assert "_impl_function" in _op_node(eager_outputs[0])
    assert "GeneratedBackwardFor_internvideo_fast" in _op_node(op_outputs[0])
    for a, b in zip(eager_outputs + tuple(eager_grads), op_outputs + tuple(op_grads)):
        assert torch.equal(a, b)


class _FillRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every aten op that fills a tensor with a constant (zeros, full, fill_)."""

    def __init__(self):
        super().__init__()
        self.fills = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if "zero" in name or "fill" in name or "full" in name:
            self.fills.append((name, tuple(out.shape) if isinstance(out, torch.Tensor) else None))
        return out


@needs_triton
@pytest.mark.parametrize("custom_ops", [False, True], ids=["eager_path", "custom_op"])
@pytest.mark.parametrize("case", list(CASES))
def test_backward_fills_no_gradient_for_the_auxiliary_outputs(case, custom_ops, monkeypatch):
    """The ops' auxiliary outputs (linear_act's and fused_mlp's pre-activation, LayerNorm's mean / rstd,
    attention's lse) are non-differentiable and never used by callers' losses: autograd must not
    materialize their gradients as zeros (for the MLPs a [rows, hidden] fill per backward, about 3% of
    the FFN's GPU time at ViT-B)."""
    op_name, fn, make_inputs = CASES[case]
    monkeypatch.setenv("IVF_DISPATCH_CUSTOM_OPS", "1" if custom_ops else "0")
    leaves = [t.requires_grad_() for t in make_inputs()]
    with use_backend("triton", op_name):
        outputs = fn(*leaves)
        grads = [torch.ones_like(o) for o in outputs]
        with _FillRecorder() as recorder:
            torch.autograd.backward(outputs, grads)
    assert all(leaf.grad is not None for leaf in leaves)
    assert recorder.fills == []


def test_eager_op_fills_defaults_and_skips_autograd_without_grad():
    calls = []

    def impl(x: torch.Tensor, scale: float = 2.0, shift: float = 1.0) -> torch.Tensor:
        calls.append((scale, shift))
        return x * scale + shift

    def setup_context(ctx, inputs, output):
        ctx.scale = inputs[1]

    def backward(ctx, grad):
        return grad * ctx.scale, None, None

    op = torch.library.custom_op("ivf_test::scale_shift", impl, mutates_args=())
    op.register_fake(lambda x, scale=2.0, shift=1.0: torch.empty_like(x))
    torch.library.register_autograd("ivf_test::scale_shift", backward, setup_context=setup_context)
    call = eager_op(op, impl, setup_context=setup_context, backward=backward)

    x = torch.randn(4, requires_grad=True)
    y = call(x, 3.0)
    assert calls == [(3.0, 1.0)]
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((4,), 3.0))
    with torch.no_grad():
        assert call(x).grad_fn is None and calls[-1] == (2.0, 1.0)
    # Traced, the call is the custom op (without the fake registered above this fails to compile).
    compiled = torch.compile(lambda t: call(t, 0.5), fullgraph=True, backend="eager")
    assert torch.equal(compiled(x.detach()), x.detach() * 0.5 + 1.0)
