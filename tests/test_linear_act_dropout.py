"""linear_act and fused_mlp with dropout: the fused Philox mask against dropout_keep_mask (forward and
backward), its kept fraction and seeding; the fused_mlp op (whole MLP, recomputing the activation in the
backward) against float64 and the bytes it saves for backward against eager; opcheck, torch.compile and bad
input of the dropout ops."""

import pytest
import torch
from torch import nn

from helpers import CPU_TRITON, poisoned_outputs, needs_triton
from internvideo_fast.layers.mlp import FusedMLP
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.dropout_add_layer_norm import dropout_keep_mask
from internvideo_fast.ops.linear_act import OP_NAME, fused_mlp, fused_mlp_ref, linear_act, linear_act_ref
from linear_act_cases import HIDDEN, IN, TOLERANCE, _assert_close, _inputs, _leaves, saved_bytes


# ------------------------------------------------------------------------------------------------ dropout
def _linear_act_dropout(activation, dropout_p, seed):
    def kernel(x, w, b):
        return linear_act(x, w, b, activation, dropout_p, seed)

    def reference(x, w, b):
        keep = dropout_keep_mask(seed, (*x.shape[:-1], w.shape[0]), dropout_p, elements_per_draw=8)
        return linear_act_ref(x, w, b, activation, upcast=True, keep_mask=keep, dropout_p=dropout_p)

    return kernel, reference


def _check_pair(kernel, reference, leaves, dy, dtype, names):
    with use_backend("triton", OP_NAME), poisoned_outputs():
        y = kernel(*_leaves(*leaves))
        actual_leaves = _leaves(*leaves)
        actual = kernel(*actual_leaves)
        wanted = [t for t in actual_leaves if t is not None]
        actual_grads = torch.autograd.grad((actual.double() * dy).sum(), wanted)
    torch.testing.assert_close(y, actual, rtol=0, atol=0)  # same seed: the same output, bitwise
    expected_leaves = _leaves(*leaves)
    expected = reference(*expected_leaves)
    expected_grads = torch.autograd.grad((expected * dy).sum(), [t for t in expected_leaves if t is not None])
    out_tol, grad_tol = TOLERANCE[dtype]
    assert actual.dtype == dtype
    _assert_close(actual, expected, out_tol, "y")
    for name, a, e in zip(names, actual_grads, expected_grads):
        assert a.dtype == dtype, name
        _assert_close(a, e, grad_tol, name)


@needs_triton
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(37, IN), (2, 3, IN)], ids=str)
def test_dropout_forward_backward_match_float64_reference(shape, dtype, activation):
    """Dropout in the epilogue: the same mask as dropout_keep_mask(seed, y.shape, p, elements_per_draw=8),
    forward and backward (the backward regenerates it from the seed), against a float64 reference that
    applies that mask."""
    x, w, b = _inputs(shape, HIDDEN, dtype)
    dy = torch.randn(*shape[:-1], HIDDEN, dtype=torch.float64)
    kernel, reference = _linear_act_dropout(activation, 0.3, 1234)
    _check_pair(kernel, reference, (x, w, b), dy, dtype, ("dx", "dweight", "dbias"))


@needs_triton
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_fused_mlp_op_matches_float64_reference(dropout_p, bias, dtype, activation):
    """The whole-MLP op (fc1 + act + dropout, fc2 + dropout; the activation recomputed in the backward)
    against fused_mlp_ref in float64 with the same masks (seed for the first dropout, seed + 1 for the
    second)."""
    shape = (2, 19, IN)
    x, w1, b1 = _inputs(shape, HIDDEN, dtype, bias=bias)
    _, w2, b2 = _inputs((1, HIDDEN), IN, dtype, bias=bias)
    seed = torch.tensor(-77)
    dy = torch.randn(*shape[:-1], IN, dtype=torch.float64)

    def kernel(x, w1, b1, w2, b2):
        return fused_mlp(x, w1, b1, w2, b2, activation, dropout_p, seed)

    def reference(x, w1, b1, w2, b2):
        return fused_mlp_ref(x, w1, b1, w2, b2, activation, dropout_p, seed, upcast=True)

    leaves = (x, w1, b1, w2, b2) if bias else (x, w1, w2)
    if not bias:
        def kernel_nb(x, w1, w2, f=kernel):
            return f(x, w1, None, w2, None)

        def reference_nb(x, w1, w2, f=reference):
            return f(x, w1, None, w2, None)

        kernel, reference = kernel_nb, reference_nb
    names = ("dx", "dweight1", "dbias1", "dweight2", "dbias2") if bias else ("dx", "dweight1", "dweight2")
    _check_pair(kernel, reference, leaves, dy, dtype, names)


@needs_triton
@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_kept_fraction_and_mask_reproduction(dropout_p):
    """1e5 outputs (x = 1, weight = 1, K = 1): kept fraction within 0.01 of 1 - p, kept values exactly
    1 / (1 - p), and the kept set is dropout_keep_mask's, bitwise."""
    M, N = 1000, 100
    x, w = torch.ones(M, 1), torch.ones(N, 1)
    with use_backend("triton", OP_NAME), poisoned_outputs():
        y = linear_act(x, w, None, "none", dropout_p, 42)
    kept = y != 0
    assert abs(kept.double().mean().item() - (1 - dropout_p)) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1.0 / (1.0 - dropout_p)))
    assert torch.equal(kept, dropout_keep_mask(42, (M, N), dropout_p, elements_per_draw=8))


@needs_triton
def test_dropout_seeding():
    """Same seed (int or tensor) -> same mask; another seed -> another mask; the reference backend draws
    the same mask as the kernel."""
    x, w, b = _inputs((8, IN), 64, torch.float32)
    with use_backend("triton", OP_NAME):
        first = linear_act(x, w, b, "gelu", 0.5, 3)
        again = linear_act(x, w, b, "gelu", 0.5, torch.tensor(3))
        other = linear_act(x, w, b, "gelu", 0.5, 4)
        drawn = [linear_act(x, w, b, "gelu", 0.5) for _ in range(2)]
    with use_backend("reference", OP_NAME):
        reference = linear_act(x, w, b, "gelu", 0.5, 3)
    assert torch.equal(first, again)
    assert not torch.equal(first != 0, other != 0)
    assert not torch.equal(drawn[0] != 0, drawn[1] != 0)  # seed=None draws a fresh seed each call
    assert torch.equal(first != 0, reference != 0)
    torch.testing.assert_close(first, reference, rtol=1e-5, atol=1e-5)


@needs_triton
def test_dropout_forward_and_backward_use_the_same_mask():
    """weight = I, activation none: y = keep * x / (1 - p), dx = keep * dy / (1 - p); both masks must be
    dropout_keep_mask's (x and dy have no zeros)."""
    p = 0.4
    x = (torch.rand(70, IN) + 0.5).requires_grad_()
    dy = torch.rand(70, IN) + 0.5
    with use_backend("triton", OP_NAME), poisoned_outputs():
        y = linear_act(x, torch.eye(IN), None, "none", p, 99)
        (dx,) = torch.autograd.grad(y, x, dy)
    keep = dropout_keep_mask(99, y.shape, p, elements_per_draw=8)
    assert torch.equal(y != 0, keep)
    assert torch.equal(dx != 0, keep)
    torch.testing.assert_close(dx, dy * keep / (1 - p))


@needs_triton
@pytest.mark.parametrize("drop", [0.0, 0.1])
def test_fused_mlp_saves_fewer_bytes_than_eager(drop):
    """FusedMLP keeps x and fc1's pre-activation (+ the seed); eager nn.Linear-GELU-nn.Linear also keeps the
    [rows, hidden] activation (and, with dropout, both masks). The difference is the bytes saved per block."""
    rows = 2 * 19
    mlp = FusedMLP(IN, HIDDEN, activation="gelu", drop=drop)
    eager = nn.Sequential(
        nn.Linear(IN, HIDDEN), nn.GELU(), nn.Dropout(drop), nn.Linear(HIDDEN, IN), nn.Dropout(drop)
    )
    eager[0].load_state_dict(mlp.fc1.state_dict())
    eager[3].load_state_dict(mlp.fc2.state_dict())
    x = torch.randn(2, 19, IN, requires_grad=True)
    with use_backend("triton", OP_NAME):
        fused_bytes, y = saved_bytes(lambda: mlp(x))
    eager_bytes, y_eager = saved_bytes(lambda: eager(x))
    y.sum().backward()  # the saved tensors suffice for the backward
    assert x.grad is not None and mlp.fc2.weight.grad is not None
    activation_bytes = rows * HIDDEN * 4
    mask_bytes = rows * (HIDDEN + IN) if drop else 0  # eager's masks, at least one byte per element
    assert fused_bytes < eager_bytes
    # Saved: the activation and the masks, less the 8-byte seed.
    print(f"drop={drop}: FusedMLP saves {fused_bytes} B, eager {eager_bytes} B")
    if drop:
        # Eager also keeps fc2's input (the dropped activation) and both masks (float on CPU, bool on CUDA).
        assert eager_bytes - fused_bytes >= activation_bytes + mask_bytes - 8
    else:
        assert eager_bytes - fused_bytes == activation_bytes, f"fused {fused_bytes} B, eager {eager_bytes} B"


@needs_triton
def test_opcheck_fused_mlp():
    x, w1, b1 = _inputs((5, IN), 24, torch.float32)
    _, w2, b2 = _inputs((1, 24), 16, torch.float32)
    leaves = [t.requires_grad_() for t in (x, w1, b1, w2, b2)]
    for args in [
        (*leaves, "gelu", True, torch.tensor(11), 0.25),
        (*leaves, "quick_gelu", True, None, 0.0),
        (x, w1, None, w2, None, "gelu_tanh", True, torch.tensor(2), 0.5),
        (*leaves, "gelu", False, torch.tensor(11), 0.25),  # grad without a saved pre: recomputed
    ]:
        torch.library.opcheck(torch.ops.internvideo_fast.fused_mlp_fwd.default, args)
    dy = torch.randn(5, 16)
    pre = torch.randn(5, 24)
    torch.library.opcheck(
        torch.ops.internvideo_fast.fused_mlp_bwd.default,
        (dy, x.detach(), w1.detach(), w2.detach(), pre, "gelu", True, torch.tensor(11), 0.25),
    )


@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if CPU_TRITON else []))
def test_dropout_ops_torch_compile_fullgraph(backend):
    """linear_act and fused_mlp with dropout (seed tensors, so no graph break and no recompile per seed),
    and a training FusedMLP drawing its own seed on the device."""
    def mlp(x, w1, b1, w2, b2, seed):
        h = linear_act(x, w1, b1, "gelu", 0.25, seed)
        return fused_mlp(h, w2, b2, w1, b1, "quick_gelu", 0.1, seed + 5) * 2

    x, w1, b1 = _inputs((3, 2, IN), HIDDEN, torch.float32)
    _, w2, b2 = _inputs((3, 2, HIDDEN), IN, torch.float32)
    seed = torch.tensor(123)
    torch._dynamo.reset()
    with use_backend(backend, OP_NAME):
        compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")
        leaves_c, leaves_e = _leaves(x, w1, b1, w2, b2), _leaves(x, w1, b1, w2, b2)
        out_c, out_e = compiled(*leaves_c, seed), mlp(*leaves_e, seed)
        torch.testing.assert_close(out_c, out_e)
        out_c.sum().backward()
        out_e.sum().backward()
        for c, e in zip(leaves_c, leaves_e):
            torch.testing.assert_close(c.grad, e.grad)
        module = FusedMLP(IN, HIDDEN, drop=0.3)
        compiled_module = torch.compile(module, fullgraph=True, backend="aot_eager")
        y_c = compiled_module(x, seed=seed)
        torch.testing.assert_close(y_c, module(x, seed=seed))
        assert (compiled_module(x) == 0).any()  # a drawn seed inside the graph


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(dropout_p=-0.5), "dropout_p"),
        (dict(weight2=torch.randn(6, 7)), "weight2"),
        (dict(bias2=None), "bias"),
        (dict(activation="relu"), "activation"),
    ],
)
def test_fused_mlp_bad_input_names_the_argument(kwargs, argument):
    call = dict(
        x=torch.randn(2, 3, 8), weight1=torch.randn(5, 8), bias1=torch.randn(5),
        weight2=torch.randn(6, 5), bias2=torch.randn(6), activation="gelu",
    )
    with pytest.raises(ValueError, match=argument):
        fused_mlp(**(call | kwargs))
