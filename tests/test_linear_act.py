"""linear_act and FusedMLP: the Triton matmul + bias + activation (+ dropout) epilogue against a float64
reference (forward and backward, every activation, fp32 / fp16, with and without bias, any leading shape),
each activation against torch.nn.functional, bad input, opcheck, torch.compile, a shape fuzz, and the
module's parity with eager nn.Linear-GELU-nn.Linear and its state-dict names. Dropout: the fused Philox
mask against dropout_keep_mask (forward and backward), its kept fraction and seeding; the fused_mlp op
(whole MLP, recomputing the activation in the backward) and the bytes it saves for backward vs eager."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import CPU_TRITON, assert_close_to_reference, describe_difference, poisoned_outputs, needs_triton
from internvideo_fast._extension import HAS_C
from internvideo_fast.layers.mlp import FusedMLP, clip_mlp_key_map, remap_clip_mlp_keys
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.dropout_add_layer_norm import dropout_keep_mask
from internvideo_fast.ops.linear_act import (
    ACTIVATIONS,
    OP_NAME,
    apply_activation_ref,
    fused_mlp,
    fused_mlp_ref,
    linear_act,
    linear_act_ref,
)
from internvideo_fast.ops.framework.autotuning import force_plan
from internvideo_fast.ops.framework.seeds import seed_tensor

# The modules whose plans and launchers the tests inspect or force (the package's `linear_act` attribute
# is the function).
la_plans = importlib.import_module("internvideo_fast.ops.linear_act.plans")
la_launch = importlib.import_module("internvideo_fast.ops.linear_act.launch")
la_fused = importlib.import_module("internvideo_fast.ops.linear_act.fused_mlp")
la_reference = importlib.import_module("internvideo_fast.ops.linear_act.reference")

# Tolerances of the CPU tests against float64: (outputs, gradients) per dtype. The gradients sum over up
# to 100 (dx) or 37 (dweight, dbias) products, so they get more room.
TOLERANCE = {torch.float32: (2e-5, 1e-4), torch.float16: (4e-3, 3e-2)}
IN, HIDDEN = 40, 100


def _inputs(shape, out_features, dtype, device="cpu", bias=True):
    K = shape[-1]
    x = torch.randn(shape, device=device).to(dtype)
    w = (torch.randn(out_features, K, device=device) / K**0.5).to(dtype)
    b = (0.5 * torch.randn(out_features, device=device)).to(dtype) if bias else None
    return x, w, b


def _leaves(*tensors):
    return [t.detach().requires_grad_() if t is not None else None for t in tensors]


def _forward_backward(fn, x, w, b, dy):
    """The output and the grads of (x, weight, bias) for the upstream grad dy."""
    y = fn(x, w, b)
    wanted = [t for t in (x, w, b) if t is not None]
    grads = iter(torch.autograd.grad((y.double() * dy).sum(), wanted))
    return y, [next(grads) if t is not None else None for t in (x, w, b)]


def _assert_close(actual, expected, tol, name):
    assert actual.shape == expected.shape, f"{name}: {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.allclose(actual.double(), expected.double(), rtol=tol, atol=tol), (
        f"{name}: " + describe_difference(actual, expected)
    )


def _check_against_reference(shape, dtype, activation, bias=True, out_features=HIDDEN):
    x, w, b = _inputs(shape, out_features, dtype, bias=bias)
    dy = torch.randn(*shape[:-1], out_features, dtype=torch.float64)

    def kernel(x, w, b):
        return linear_act(x, w, b, activation)

    def reference(x, w, b):
        return linear_act_ref(x, w, b, activation, upcast=True)

    with use_backend("triton", OP_NAME), poisoned_outputs():
        actual, actual_grads = _forward_backward(kernel, *_leaves(x, w, b), dy)
    expected, expected_grads = _forward_backward(reference, *_leaves(x, w, b), dy)
    out_tol, grad_tol = TOLERANCE[dtype]
    assert actual.dtype == dtype
    _assert_close(actual, expected, out_tol, "y")
    for name, a, e in zip(("dx", "dweight", "dbias"), actual_grads, expected_grads):
        assert (a is None) == (e is None), name
        if a is not None:
            assert a.dtype == dtype, name
            _assert_close(a, e, grad_tol, name)


# ---------------------------------------------------------------------------------------------------- CPU
@needs_triton
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, IN), (3, IN), (37, IN), (2, 3, IN)], ids=str)
def test_forward_backward_match_float64_reference(shape, dtype, activation):
    _check_against_reference(shape, dtype, activation)


@needs_triton
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_without_bias(dtype, activation):
    _check_against_reference((37, IN), dtype, activation, bias=False)


@needs_triton
def test_fc2_shape_hidden_to_in():
    """fc2's direction (100 -> 40): N smaller than K, neither a multiple of the blocks."""
    _check_against_reference((37, HIDDEN), torch.float32, "none", out_features=IN)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "quick_gelu"])
def test_reference_activations_match_torch_functional(activation):
    pre = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    expected = {
        "gelu": F.gelu(pre),
        "gelu_tanh": F.gelu(pre, approximate="tanh"),
        "quick_gelu": pre * torch.sigmoid(1.702 * pre),
    }[activation]
    torch.testing.assert_close(apply_activation_ref(pre, activation), expected, rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_kernel_activation_and_derivative_match_torch_functional(activation):
    """An identity weight makes the kernel's output act(x) itself: compare act and act' over [-14, 14] with
    torch.nn.functional (and its autograd) in float64, at fp32 accuracy (the kernels' own erfc fit and
    sigmoid, see linear_act's module docstring)."""
    pre = torch.linspace(-14, 14, 32 * 40).reshape(32, 40)
    eye = torch.eye(40)
    x = pre.clone().requires_grad_()
    with use_backend("triton", OP_NAME), poisoned_outputs():
        y = linear_act(x, eye, None, activation)
    (dx,) = torch.autograd.grad(y.sum(), x)
    pre64 = pre.double().requires_grad_()
    functional = {
        "gelu": lambda t: F.gelu(t),
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t),
        "none": lambda t: t,
    }[activation]
    expected = functional(pre64)
    (expected_dx,) = torch.autograd.grad(expected.sum(), pre64)
    _assert_close(y, expected, 2e-6, f"{activation}(x)")
    _assert_close(dx, expected_dx, 2e-6, f"{activation}'(x)")


@needs_triton
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "quick_gelu"])
def test_kernel_activation_keeps_relative_accuracy_in_the_negative_tail(activation):
    """For x < 0 the three activations are x times a small probability; 0.5 x (1 + erf(x / sqrt 2)) in fp32
    cancels there (Phi(-5) 10% off with an exact fp32 erf). The kernels' forms keep act and act' within
    3e-5 of float64, relatively, wherever the float64 value is a normal fp32 number (act' below -1.5)."""
    pre = -torch.logspace(-1, math.log10(12.0), 24 * 40).reshape(24, 40)
    x = pre.clone().requires_grad_()
    with use_backend("triton", OP_NAME), poisoned_outputs():
        y = linear_act(x, torch.eye(40), None, activation)
    (dx,) = torch.autograd.grad(y.sum(), x)
    pre64 = pre.double().requires_grad_()
    # Without cancellation in float64 too: torch's ndtr and tanh-GELU lose their tails below ~-8.
    expected = {
        "gelu": lambda t: t * 0.5 * torch.special.erfc(-t / math.sqrt(2.0)),
        "gelu_tanh": lambda t: t * torch.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (t + 0.044715 * t**3)),
        "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t),
    }[activation](pre64)
    (expected_dx,) = torch.autograd.grad(expected.sum(), pre64)
    # act' crosses 0 near x = -0.75 (no relative accuracy there, for any formula): check it from -1.5 down.
    derivative_tail = pre < -1.5
    everywhere = torch.ones_like(derivative_tail)
    for name, actual, reference, where in ((f"{activation}(x)", y, expected, everywhere),
                                           (f"{activation}'(x)", dx, expected_dx, derivative_tail)):
        normal = (reference.abs() > torch.finfo(torch.float32).tiny) & where
        relative = ((actual.double() - reference).abs() / reference.abs())[normal]
        assert normal.sum() > 300, name
        assert relative.max() < 3e-5, f"{name}: max relative error {relative.max():.3g}"


def _bad(**kwargs):
    call = dict(x=torch.randn(2, 3, 8), weight=torch.randn(5, 8), bias=torch.randn(5), activation="gelu")
    return call | kwargs


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(weight=torch.randn(5, 9)), "weight"),
        (dict(weight=torch.randn(5)), "weight"),
        (dict(weight="w"), "weight"),
        (dict(weight=torch.randn(5, 8, dtype=torch.float64)), "weight"),
        (dict(weight=torch.randn(5, 8, device="meta")), "weight"),
        (dict(bias=torch.randn(6)), "bias"),
        (dict(bias=torch.randn(1, 5)), "bias"),
        (dict(bias=torch.randn(5, dtype=torch.float16)), "bias"),
        (dict(bias=torch.randn(5, device="meta")), "bias"),
        (dict(x=torch.randn(2, 3, 8, dtype=torch.float64), weight=torch.randn(5, 8, dtype=torch.float64),
              bias=None), "x"),
        (dict(x=torch.ones(2, 8, dtype=torch.int64)), "x"),
        (dict(x=[1.0, 2.0]), "x"),
        (dict(activation="relu"), "activation"),
        (dict(activation=None), "activation"),
        (dict(dropout_p=-0.1), "dropout_p"),
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(dropout_p=True), "dropout_p"),
        (dict(dropout_p="0.1"), "dropout_p"),
    ],
)
def test_bad_input_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        linear_act(**_bad(**kwargs))


def test_backend_choice_is_explicit():
    with use_backend("cuda", OP_NAME), pytest.raises(ValueError, match="cuda"):
        linear_act(*_inputs((2, IN), HIDDEN, torch.float32))


def test_reference_backend_is_the_cpu_default():
    x, w, b = _inputs((3, IN), HIDDEN, torch.float32)
    torch.testing.assert_close(linear_act(x, w, b), F.gelu(F.linear(x, w, b)))


@needs_triton
def test_opcheck():
    """torch.library's own checks of the forward op: schema, fake, autograd registration, AOT dispatch."""
    x, w, b = _inputs((5, IN), 24, torch.float32)
    for args in [
        (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), "gelu", True),
        (x, w, None, "quick_gelu", True),
        (x, w, b, "none", False),
        (x, w, b, "gelu_tanh", False),  # grad without a saved pre-activation: the backward recomputes it
        (x, w, b, "gelu", True, torch.tensor(5), 0.25),  # dropout fused into the epilogue
        (x, w, b, "none", True, torch.tensor(-3), 0.5),  # fc2: bias + dropout
    ]:
        torch.library.opcheck(torch.ops.internvideo_fast.linear_act_fwd.default, args)


@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if CPU_TRITON else []))
def test_torch_compile_fullgraph(backend):
    def mlp(x, w1, b1, w2, b2):
        return linear_act(linear_act(x, w1, b1, "gelu"), w2, b2, "none") * 2

    x, w1, b1 = _inputs((3, 2, IN), HIDDEN, torch.float32)
    _, w2, b2 = _inputs((3, 2, HIDDEN), IN, torch.float32)
    torch._dynamo.reset()
    with use_backend(backend, OP_NAME):
        compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")
        leaves_c, leaves_e = _leaves(x, w1, b1, w2, b2), _leaves(x, w1, b1, w2, b2)
        out_c, out_e = compiled(*leaves_c), mlp(*leaves_e)
        torch.testing.assert_close(out_c, out_e)
        out_c.sum().backward()
        out_e.sum().backward()
        for c, e in zip(leaves_c, leaves_e):
            torch.testing.assert_close(c.grad, e.grad)


@needs_triton
def test_no_grad_and_empty_rows():
    x, w, b = _inputs((0, IN), HIDDEN, torch.float32)
    with use_backend("triton", OP_NAME), poisoned_outputs():
        assert linear_act(x, w, b).shape == (0, HIDDEN)
        x, w, b = _inputs((4, IN), HIDDEN, torch.float32)
        with torch.no_grad():
            y = linear_act(x, w.requires_grad_(), b, "gelu_tanh")
    _assert_close(y, linear_act_ref(x, w, b, "gelu_tanh", upcast=True), 2e-5, "y")


@needs_triton
@settings(max_examples=8)
@given(
    rows=st.integers(1, 40),
    in_features=st.integers(1, 70),
    hidden=st.integers(1, 70),
    activation=st.sampled_from(ACTIVATIONS),
    bias=st.booleans(),
)
def test_fuzz_shapes(rows, in_features, hidden, activation, bias):
    x, w, b = _inputs((rows, in_features), hidden, torch.float32, bias=bias)
    dy = torch.randn(rows, hidden, dtype=torch.float64)
    with use_backend("triton", OP_NAME), poisoned_outputs():
        actual, actual_grads = _forward_backward(
            lambda *a: linear_act(*a, activation), *_leaves(x, w, b), dy
        )
    expected, expected_grads = _forward_backward(
        lambda *a: linear_act_ref(*a, activation, upcast=True), *_leaves(x, w, b), dy
    )
    _assert_close(actual, expected, 3e-5, "y")
    for name, a, e in zip(("dx", "dweight", "dbias"), actual_grads, expected_grads):
        if e is not None:
            _assert_close(a, e, 2e-4, name)


# ------------------------------------------------------------------------------------------------ FusedMLP
def _eager_mlp(mlp: FusedMLP) -> nn.Sequential:
    eager = nn.Sequential(nn.Linear(IN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, IN))
    eager[0].load_state_dict(mlp.fc1.state_dict())
    eager[2].load_state_dict(mlp.fc2.state_dict())
    return eager


@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if CPU_TRITON else []))
def test_fused_mlp_matches_eager_linear_gelu_linear(backend):
    mlp = FusedMLP(IN, HIDDEN, activation="gelu", drop=0.1).eval()
    eager = _eager_mlp(mlp)
    x = torch.randn(2, 19, IN)
    x_ours, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
    with use_backend(backend, OP_NAME), poisoned_outputs():
        y = mlp(x_ours)
        y.square().sum().backward()
    y_eager = eager(x_eager)
    y_eager.square().sum().backward()
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_ours.grad, x_eager.grad, rtol=1e-4, atol=1e-4)
    for ours, theirs in [(mlp.fc1, eager[0]), (mlp.fc2, eager[2])]:
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if CPU_TRITON else []))
def test_fused_mlp_torch_compile_fullgraph(backend):
    mlp = FusedMLP(IN, HIDDEN, activation="quick_gelu").eval()
    x = torch.randn(2, 5, IN)
    torch._dynamo.reset()
    with use_backend(backend, OP_NAME):
        compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")
        x_c, x_e = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_c, out_e = compiled(x_c), mlp(x_e)
        torch.testing.assert_close(out_c, out_e)
        out_c.sum().backward()
        out_e.sum().backward()
    torch.testing.assert_close(x_c.grad, x_e.grad)


def test_fused_mlp_dropout_in_training_only():
    mlp = FusedMLP(IN, HIDDEN, drop=0.5)
    x = torch.randn(4, IN)
    assert not torch.equal(mlp(x), mlp(x))  # two dropout draws
    mlp.eval()
    torch.testing.assert_close(mlp(x), _eager_mlp(mlp)(x))


def test_fused_mlp_state_dict_names_and_defaults():
    mlp = FusedMLP(IN, HIDDEN)
    assert list(mlp.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert mlp.fc1.weight.shape == (HIDDEN, IN) and mlp.fc2.weight.shape == (IN, HIDDEN)
    assert list(FusedMLP(8, bias=False).state_dict()) == ["fc1.weight", "fc2.weight"]
    square = FusedMLP(8)
    assert square.fc1.weight.shape == (8, 8) and square.fc2.weight.shape == (8, 8)
    with pytest.raises(ValueError, match="activation"):
        FusedMLP(8, activation="relu")
    with pytest.raises(ValueError, match="drop"):
        FusedMLP(8, drop=1.0)


def test_clip_key_map_loads_a_clip_mlp():
    assert clip_mlp_key_map() == {
        "c_fc.weight": "fc1.weight", "c_fc.bias": "fc1.bias",
        "c_proj.weight": "fc2.weight", "c_proj.bias": "fc2.bias",
    }
    assert FusedMLP.clip_mlp_key_map("blocks.0.mlp.")["blocks.0.mlp.c_proj.bias"] == "blocks.0.mlp.fc2.bias"
    clip_mlp = nn.Module()
    clip_mlp.c_fc, clip_mlp.c_proj = nn.Linear(IN, HIDDEN), nn.Linear(HIDDEN, IN)
    clip_state = {f"visual.blocks.3.mlp.{k}": v for k, v in clip_mlp.state_dict().items()}
    clip_state["visual.blocks.3.ln_1.weight"] = torch.ones(IN)
    remapped = remap_clip_mlp_keys(clip_state)
    assert "visual.blocks.3.ln_1.weight" in remapped
    mlp = FusedMLP(IN, HIDDEN, activation="quick_gelu")
    prefix = "visual.blocks.3.mlp."
    mlp.load_state_dict({k.removeprefix(prefix): v for k, v in remapped.items() if k.startswith(prefix)})
    x = torch.randn(3, IN)
    expected = clip_mlp.c_proj(apply_activation_ref(clip_mlp.c_fc(x), "quick_gelu"))
    torch.testing.assert_close(mlp(x), expected)


def test_fused_mlp_casts_parameters_to_the_input_dtype():
    mlp = FusedMLP(IN, HIDDEN)  # fp32 parameters
    x = torch.randn(3, IN, dtype=torch.float16)
    y = mlp(x)
    assert y.dtype == torch.float16
    y.float().sum().backward()
    assert mlp.fc1.weight.grad.dtype == torch.float32


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


def _saved_bytes(fn) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct storages autograd saves for backward while `fn` runs (parameters included,
    counted once)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return sum(storages.values()), out


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
        fused_bytes, y = _saved_bytes(lambda: mlp(x))
    eager_bytes, y_eager = _saved_bytes(lambda: eager(x))
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


# ------------------------------------------------------------------------------ TMA forward plan
def _run_plan(label_prefix, x, w, b, activation, seed, dropout_p, interpreter, store_pre=None):
    """(y, pre) of the forward plan whose label starts with `label_prefix`, into poisoned outputs; `pre` is
    stored when `store_pre` (default: for an activation)."""
    M, N = x.shape[0], w.shape[0]
    y = torch.full((M, N), float("nan"), dtype=x.dtype, device=x.device)
    pre = torch.full((M, N), float("nan"), dtype=x.dtype, device=x.device)
    seed_t = None if seed is None else seed_tensor(seed, x.device)
    plans = dict(
        la_launch._fwd_plans(x, w, b, seed_t, y, pre, activation,
                                     activation != "none" if store_pre is None else store_pre, dropout_p,
                                     interpreter, True)
    )
    matching = [label for label in plans if label.startswith(label_prefix)]
    assert matching, f"no {label_prefix!r} plan among {list(plans)}"
    for label in matching:
        y.fill_(float("nan"))
        pre.fill_(float("nan"))
        plans[label]()
        yield label, y.clone(), pre.clone()


def _tma_plan_prefixes(hidden: int) -> tuple[str, ...]:
    """The TMA plans offered for 16-byte x / weight rows: the persistent one also stores y through TMA, so
    it needs 16-byte output rows (hidden a multiple of 8)."""
    return ("tma", "persistent") if hidden % 8 == 0 else ("tma",)


@needs_triton
@pytest.mark.parametrize("hidden", [HIDDEN, 104])
@pytest.mark.parametrize("activation", ["gelu", "none"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("rows", [1, 37, 70])
def test_tma_plans_match_pointer_plan_and_float64(rows, dropout_p, activation, hidden):
    """The TMA-descriptor forwards (zero-filled out-of-bounds tiles instead of masks), one tile per program
    and persistent (3 programs walking all tiles under the interpreter, TMA stores clipped at the edges),
    equal the pointer kernel and the float64 reference, with its dropout mask, for row counts below, at and
    past a tile."""
    x, w, b = _inputs((rows, IN), hidden, torch.float16)
    seed = 7 if dropout_p else None
    (_, y_pointer, pre_pointer), = _run_plan("pointer", x, w, b, activation, seed, dropout_p, True)
    for prefix in _tma_plan_prefixes(hidden):
        (_, y_tma, pre_tma), = _run_plan(prefix, x, w, b, activation, seed, dropout_p, True)
        assert torch.equal(y_tma, y_pointer), prefix
        if activation != "none":
            assert torch.equal(pre_tma, pre_pointer), prefix
    keep = dropout_keep_mask(seed, (rows, hidden), dropout_p, elements_per_draw=8) if dropout_p else None
    expected = linear_act_ref(x, w, b, activation, upcast=True, keep_mask=keep, dropout_p=dropout_p)
    _assert_close(y_tma, expected, TOLERANCE[torch.float16][0], "y")


@needs_triton
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("store_pre, bias", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("rows", [1, 37])
def test_cublas_plan_matches_float64_with_the_fused_plans_mask(rows, store_pre, bias, dropout_p, activation):
    """The "cublas" forward plan (torch.addmm, then the activation / dropout kernel over the flat [M, N]
    elements, in place on y when pre is not kept) against float64 with the fused epilogue's dropout mask;
    its pre is the GEMM's own."""
    x, w, b = _inputs((rows, IN), HIDDEN, torch.float16, bias=bias)
    seed = 9 if dropout_p else None
    (_, y, pre), = _run_plan("cublas", x, w, b, activation, seed, dropout_p, True, store_pre=store_pre)
    keep = dropout_keep_mask(seed, (rows, HIDDEN), dropout_p, elements_per_draw=8) if dropout_p else None
    expected = linear_act_ref(x, w, b, activation, upcast=True, keep_mask=keep, dropout_p=dropout_p)
    _assert_close(y, expected, TOLERANCE[torch.float16][0], "y")
    if keep is not None:
        assert torch.equal(y[~keep], torch.zeros_like(y[~keep]))
    if store_pre:
        _assert_close(pre, linear_act_ref(x, w, b, "none", upcast=True), TOLERANCE[torch.float16][0], "pre")
    else:
        assert pre.isnan().all()  # not written


@needs_triton
@settings(max_examples=6, deadline=None)
@given(
    rows=st.integers(1, 140),
    in_features=st.sampled_from([8, 16, 40, 72, 104]),
    hidden=st.one_of(st.integers(1, 90), st.integers(1, 12).map(lambda n: 8 * n)),
    activation=st.sampled_from(ACTIVATIONS),
    dropout_p=st.sampled_from([0.0, 0.3]),
)
def test_fuzz_shapes_tma_plans(rows, in_features, hidden, activation, dropout_p):
    """The TMA plans over random shapes (16-byte rows: K a multiple of 8) equal the pointer plan bitwise."""
    x, w, b = _inputs((rows, in_features), hidden, torch.float16)
    seed = 3 if dropout_p else None
    (_, y_pointer, _), = _run_plan("pointer", x, w, b, activation, seed, dropout_p, True)
    for prefix in _tma_plan_prefixes(hidden):
        (_, y_tma, _), = _run_plan(prefix, x, w, b, activation, seed, dropout_p, True)
        assert torch.equal(y_tma, y_pointer), prefix


@needs_triton
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("rows", [1, 37, 70])
def test_fused_dh_plan_matches_float64_and_the_unfused_plan(monkeypatch, rows, dropout_p, activation):
    """fused_mlp's backward with dh = dz @ weight2 and fc1's elementwise pass in one TMA kernel (dh kept in
    fp32, never stored), one program per tile and persistent (3 programs walking all tiles): gradients
    against float64 and close to the two-launch plan's."""
    hidden = 104  # rows of 208 bytes: TMA-loadable
    x, w1, b1 = _inputs((rows, IN), hidden, torch.float16)
    _, w2, b2 = _inputs((1, hidden), IN, torch.float16)
    dy = torch.randn(rows, IN, dtype=torch.float64)
    seed = 13 if dropout_p else None

    def grads(fn):
        leaves = _leaves(x, w1, b1, w2, b2)
        return torch.autograd.grad((fn(*leaves).double() * dy).sum(), leaves)

    results = {}
    for plan in ("unfused", "fused", "fused_persistent"):
        with force_plan("fused_mlp_dh", plan):
            with use_backend("triton", OP_NAME), poisoned_outputs():
                results[plan] = grads(lambda *a: fused_mlp(*a, activation, dropout_p, seed))
    expected = grads(lambda *a: fused_mlp_ref(*a, activation, dropout_p, seed, upcast=True))
    for plan in ("fused", "fused_persistent"):
        for name, fused, unfused, ref in zip(("dx", "dw1", "db1", "dw2", "db2"), results[plan],
                                            results["unfused"], expected):
            _assert_close(fused, ref, TOLERANCE[torch.float16][1], f"{name} ({plan})")
            _assert_close(fused, unfused, TOLERANCE[torch.float16][1], f"{name} {plan} vs unfused")
    # Same tiles, same order of accumulation: the persistent kernel gives the per-tile kernel's bits.
    for fused, persistent in zip(results["fused"], results["fused_persistent"]):
        assert torch.equal(fused, persistent)


@needs_triton
def test_dpre_in_place_overwrites_its_input_with_the_same_result():
    """fused_mlp's unfused backward writes dpre over dh (one [M, hidden] buffer fewer at the peak): the same
    values as out of place, in dh's storage."""
    dh, pre = torch.randn(37, HIDDEN).half(), torch.randn(37, HIDDEN).half()
    seed = seed_tensor(5, dh.device)
    args = (pre, "gelu", True, seed, 0.2, True)
    dpre, dbias, h = la_launch._launch_dpre(dh, *args)
    overwritten = dh.clone()
    in_place = la_launch._launch_dpre(overwritten, *args, in_place=True)
    assert in_place[0].data_ptr() == overwritten.data_ptr() and dpre.data_ptr() != dh.data_ptr()
    for name, actual, expected in zip(("dpre", "dbias", "h"), in_place, (dpre, dbias, h)):
        assert torch.equal(actual, expected), name


def test_fused_dh_plan_is_offered_only_for_tma_loadable_tensors():
    def labels(dtype, hidden):
        dz = torch.randn(5, 40).to(dtype)
        w2 = torch.randn(40, hidden).to(dtype)
        pre = torch.randn(5, hidden).to(dtype)
        plans = la_fused._dh_plans(dz, w2, pre, "gelu", True, None, 0.0, True, True)
        return [label.split(":")[0] for label, _ in plans]

    fused = ["fused", "fused_persistent"] if CPU_TRITON else []
    assert labels(torch.float16, 104) == ["unfused", *fused]
    assert labels(torch.float16, 100) == ["unfused"]  # 200-byte rows
    assert labels(torch.float32, 104) == ["unfused"]


@needs_triton
def test_tma_plans_only_for_16bit_inputs_with_16_byte_aligned_rows():
    def labels(dtype, in_features, hidden=16):
        x, w, b = _inputs((5, in_features), hidden, dtype)
        y = torch.empty(5, hidden, dtype=dtype)
        plans = la_launch._fwd_plans(x, w, b, None, y, y, "gelu", False, 0.0, True, True)
        return [label.split(":")[0] for label, _ in plans]

    assert labels(torch.float16, 40) == ["pointer", "tma", "persistent", "cublas"]
    assert labels(torch.bfloat16, 64) == ["pointer", "tma", "persistent", "cublas"]
    # 40-byte output rows: no TMA stores.
    assert labels(torch.float16, 40, hidden=20) == ["pointer", "tma", "cublas"]
    assert labels(torch.float16, 36) == ["pointer", "cublas"]  # 72-byte rows: TMA needs multiples of 16 bytes
    assert labels(torch.float32, 40) == ["pointer", "cublas"]


# ------------------------------------------------------------------ the fc1 GEMM op of _C (CUTLASS on sm_90)
needs_c = pytest.mark.skipif(not HAS_C, reason="internvideo_fast._C is not built")


def _check_mlp_gemm_bias_act(x, w, b, activation, schedule):
    """mlp_gemm_bias_act's (y, pre) against float64 (flash-attn's rule, PyTorch at x's dtype as the
    baseline), written into poisoned outputs."""
    M, N = x.shape[0], w.shape[0]
    y = torch.full((M, N), float("nan"), dtype=x.dtype, device=x.device)
    pre = torch.full_like(y, float("nan"))
    with poisoned_outputs():
        torch.ops.internvideo_fast.mlp_gemm_bias_act(x, w, b, activation, schedule, y, pre)
    pre64 = F.linear(x.double(), w.double(), b.double())
    pre_baseline = F.linear(x, w, b)
    assert_close_to_reference(pre, pre64, pre_baseline, name=f"pre ({activation}, {schedule})")
    assert_close_to_reference(y, apply_activation_ref(pre64, activation),
                              apply_activation_ref(pre_baseline, activation),
                              name=f"y ({activation}, {schedule})")


@needs_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "quick_gelu"])
@pytest.mark.parametrize("M, K, N", [(1, 8, 16), (37, 40, 100)])
def test_mlp_gemm_bias_act_matches_float64_reference(M, K, N, dtype, activation):
    """The CPU kernel of the op behind the "cutlass" plans: the contract the sm_90 kernels are held to."""
    for schedule in la_reference.CUTLASS_SCHEDULES:
        _check_mlp_gemm_bias_act(*_inputs((M, K), N, dtype), activation, schedule)


@needs_c
def test_mlp_gemm_bias_act_opcheck():
    """Schema (what the op mutates), fake implementation and dispatch agree (torch.library.opcheck)."""
    x, w, b = _inputs((5, 8), 16, torch.float16)
    for pre in (torch.empty(5, 16, dtype=torch.float16), torch.empty(0, dtype=torch.float16)):
        torch.library.opcheck(torch.ops.internvideo_fast.mlp_gemm_bias_act.default,
                              (x, w, b, "gelu", "pingpong", torch.empty(5, 16, dtype=torch.float16), pre))


@needs_c
def test_mlp_gemm_bias_act_stores_no_pre_when_given_an_empty_one():
    x, w, b = _inputs((37, 40), 104, torch.float16)
    y, pre = torch.full((37, 104), float("nan"), dtype=torch.float16), torch.empty(0, dtype=torch.float16)
    torch.ops.internvideo_fast.mlp_gemm_bias_act(x, w, b, "quick_gelu", "pingpong", y, pre)
    pre64 = F.linear(x.double(), w.double(), b.double())
    assert_close_to_reference(y, apply_activation_ref(pre64, "quick_gelu"),
                              apply_activation_ref(F.linear(x, w, b), "quick_gelu"), name="y")
    assert pre.shape == (0,)


@needs_c
def test_mlp_gemm_bias_act_names_bad_arguments():
    ops = torch.ops.internvideo_fast
    x, w, b = _inputs((5, 8), 16, torch.float32)
    y, pre = torch.empty(5, 16), torch.empty(5, 16)
    cases = [
        (lambda: ops.mlp_gemm_bias_act(x, w[:, :4].contiguous(), b, "gelu", "cooperative", y, pre), "weight"),
        (lambda: ops.mlp_gemm_bias_act(x, w, b[:3], "gelu", "cooperative", y, pre), "bias"),
        (lambda: ops.mlp_gemm_bias_act(x, w, b, "relu", "cooperative", y, pre), "activation"),
        (lambda: ops.mlp_gemm_bias_act(x.long(), w, b, "gelu", "cooperative", y, pre), "x"),
        (lambda: ops.mlp_gemm_bias_act(x, w, b, "gelu", "cooperative", y[:, :4], pre), "y"),
        (lambda: ops.mlp_gemm_bias_act(x, w, b, "gelu", "cooperative", y, pre.half()), "pre"),
        (lambda: ops.mlp_gemm_bias_act(x, w, b, "gelu", "cooperative", y, y), "pre"),
        (lambda: ops.mlp_gemm_bias_act(x, w, b, "gelu", "split_k", y, pre), "schedule"),
    ]
    for call, argument in cases:
        with pytest.raises(ValueError, match=argument):
            call()


@needs_triton
def test_cutlass_plans_need_the_sm90_build():
    """No "cutlass" plan on the CPU or under the interpreter, whatever the tensors."""
    x, w, b = _inputs((8, 64), 32, torch.float16)
    y = torch.empty(8, 32, dtype=torch.float16)
    plans = la_launch._fwd_plans(x, w, b, None, y, y, "gelu", True, 0.0, True, True)
    labels = [label for label, _ in plans]
    assert not [label for label in labels if label.startswith("cutlass")], labels
    assert not la_launch._cutlass_ok(x, w, y)


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("in_features, hidden", [(768, 3072), (1024, 4096)], ids=["vit_b", "vit_l"])
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_gpu_matches_reference_flash_attn_rule(in_features, hidden, dtype, activation):
    """ViT-B / ViT-L MLP widths, 2 x 1568 tokens (fc1 with the activation, then fc2 without): kernel error
    <= 2x (outputs) / 3x (grads) PyTorch's own error at the same dtype, both against float64."""
    for fan_in, fan_out, act in [(in_features, hidden, activation), (hidden, in_features, "none")]:
        shape = (2, 1568, fan_in)
        x, w, b = _inputs(shape, fan_out, dtype, device="cuda")
        dy = torch.randn(*shape[:-1], fan_out, device="cuda", dtype=torch.float64)
        with use_backend("triton", OP_NAME), poisoned_outputs():
            actual, actual_grads = _forward_backward(lambda *a: linear_act(*a, act), *_leaves(x, w, b), dy)
        expected, expected_grads = _forward_backward(
            lambda *a: linear_act_ref(*a, act, upcast=True), *_leaves(x, w, b), dy
        )
        baseline, baseline_grads = _forward_backward(
            lambda *a: linear_act_ref(*a, act), *_leaves(x, w, b), dy
        )
        assert_close_to_reference(actual, expected, baseline, name=f"y ({act})")
        for name, a, e, base in zip(("dx", "dweight", "dbias"), actual_grads, expected_grads, baseline_grads):
            assert_close_to_reference(a, e, base, factor=3.0, name=f"{name} ({act})")


@pytest.mark.gpu
def test_gpu_fused_mlp_matches_eager_bf16():
    mlp = FusedMLP(768, 3072).cuda().to(torch.bfloat16)
    eager = nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768)).cuda().to(torch.bfloat16)
    eager[0].load_state_dict(mlp.fc1.state_dict())
    eager[2].load_state_dict(mlp.fc2.state_dict())
    reference = nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768)).cuda().double()
    reference.load_state_dict(eager.state_dict())
    x = torch.randn(4, 1568, 768, device="cuda", dtype=torch.bfloat16)
    assert_close_to_reference(mlp(x), reference(x.double()), eager(x), name="FusedMLP")


@pytest.mark.gpu
@pytest.mark.parametrize("in_features, hidden", [(768, 3072), (1024, 4096)], ids=["vit_b", "vit_l"])
def test_gpu_dropout_and_fused_mlp_bf16_flash_attn_rule(in_features, hidden):
    """bf16 at ViT-B / ViT-L widths: linear_act with dropout (fc1: gelu, fc2: none) and the fused_mlp op,
    outputs and gradients within 2x / 3x PyTorch's own bf16 error against float64, the same masks."""
    dtype, p, seed = torch.bfloat16, 0.1, 2024
    shape = (2, 1568, in_features)
    for fan_in, fan_out, act in [(in_features, hidden, "gelu"), (hidden, in_features, "none")]:
        x, w, b = _inputs((*shape[:-1], fan_in), fan_out, dtype, device="cuda")
        dy = torch.randn(*shape[:-1], fan_out, device="cuda", dtype=torch.float64)
        keep = dropout_keep_mask(seed, dy.shape, p, device="cuda", elements_per_draw=8)
        with use_backend("triton", OP_NAME), poisoned_outputs():
            actual, actual_grads = _forward_backward(
                lambda *a: linear_act(*a, act, p, seed), *_leaves(x, w, b), dy
            )
        expected, expected_grads = _forward_backward(
            lambda *a: linear_act_ref(*a, act, upcast=True, keep_mask=keep, dropout_p=p),
            *_leaves(x, w, b), dy,
        )
        baseline, baseline_grads = _forward_backward(
            lambda *a: linear_act_ref(*a, act, keep_mask=keep, dropout_p=p), *_leaves(x, w, b), dy
        )
        assert_close_to_reference(actual, expected, baseline, name=f"y ({act}, dropout)")
        for name, a, e, base in zip(("dx", "dweight", "dbias"), actual_grads, expected_grads, baseline_grads):
            assert_close_to_reference(a, e, base, factor=3.0, name=f"{name} ({act}, dropout)")

    x, w1, b1 = _inputs(shape, hidden, dtype, device="cuda")
    _, w2, b2 = _inputs((1, hidden), in_features, dtype, device="cuda")
    leaves = (x, w1, b1, w2, b2)
    dy = torch.randn(*shape[:-1], in_features, device="cuda", dtype=torch.float64)

    def run(fn):
        ts = _leaves(*leaves)
        out = fn(*ts)
        return out, torch.autograd.grad((out.double() * dy).sum(), ts)

    with use_backend("triton", OP_NAME), poisoned_outputs():
        actual, actual_grads = run(lambda *a: fused_mlp(*a, "gelu", p, seed))
    expected, expected_grads = run(lambda *a: fused_mlp_ref(*a, "gelu", p, seed, upcast=True))
    baseline, baseline_grads = run(lambda *a: fused_mlp_ref(*a, "gelu", p, seed))
    assert_close_to_reference(actual, expected, baseline, name="fused_mlp y")
    names = ("dx", "dw1", "db1", "dw2", "db2")
    for name, a, e, base in zip(names, actual_grads, expected_grads, baseline_grads):
        assert_close_to_reference(a, e, base, factor=3.0, name=f"fused_mlp {name}")


@pytest.mark.gpu
def test_gpu_fused_mlp_saves_activation_memory():
    """ViT-B pretraining block (64 x 160 tokens, 768 -> 3072, bf16, dropout 0.1): FusedMLP saves at least
    the [rows, 3072] activation less than eager, counted and in peak memory."""
    rows, D, hidden = 64 * 160, 768, 3072
    mlp = FusedMLP(D, hidden, drop=0.1).cuda().to(torch.bfloat16)
    eager = nn.Sequential(
        nn.Linear(D, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, D), nn.Dropout(0.1)
    ).cuda().to(torch.bfloat16)
    x = torch.randn(64, 160, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with use_backend("triton", OP_NAME):
        fused_bytes, _ = _saved_bytes(lambda: mlp(x))
    eager_bytes, _ = _saved_bytes(lambda: eager(x))
    assert eager_bytes - fused_bytes >= rows * hidden * 2


@pytest.mark.gpu
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_gpu_every_forward_plan_matches_reference(dropout_p):
    """Each candidate the run-time tuner may pick (pointer kernel, TMA and persistent TMA kernels at every
    registered tile, cuBLAS + the elementwise kernel), forced one by one at ViT-B's fc1 in bf16: flash-attn's
    rule against float64, and the same dropout mask."""
    dtype, seed = torch.bfloat16, 11
    x, w, b = _inputs((1568 + 5, 768), 3072, dtype, device="cuda")
    keep = (dropout_keep_mask(seed, (x.shape[0], 3072), dropout_p, device="cuda", elements_per_draw=8)
            if dropout_p else None)
    expected = linear_act_ref(x, w, b, "gelu", upcast=True, keep_mask=keep, dropout_p=dropout_p)
    baseline = linear_act_ref(x, w, b, "gelu", keep_mask=keep, dropout_p=dropout_p)
    seen = 0
    for label, y, _ in _run_plan("", x, w, b, "gelu", seed if dropout_p else None, dropout_p, False):
        assert_close_to_reference(y, expected, baseline, name=label)
        seen += 1
    tma_plans = len(la_plans._FWD_TMA_CONFIGS) + len(la_plans._FWD_PERSISTENT_CONFIGS)
    cutlass_offered = dropout_p == 0.0 and la_launch._cutlass_ok(x, w)
    cutlass = len(la_reference.CUTLASS_SCHEDULES) if cutlass_offered else 0
    assert seen == 1 + tma_plans + cutlass + 1


@pytest.mark.gpu
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_gpu_every_backward_plan_matches_reference(monkeypatch, dropout_p):
    """Each tile / programs-per-SM plan of the backward's elementwise kernel, and the fused dh GEMM at each
    tile, forced one by one: fused_mlp's gradients in bf16 at ViT-B's widths within 3x PyTorch's own error
    against float64."""
    dtype, seed = torch.bfloat16, 5
    x, w1, b1 = _inputs((2, 1568 + 3, 768), 3072, dtype, device="cuda")
    _, w2, b2 = _inputs((1, 3072), 768, dtype, device="cuda")
    dy = torch.randn(2, 1568 + 3, 768, device="cuda", dtype=torch.float64)

    def grads(fn):
        leaves = _leaves(x, w1, b1, w2, b2)
        out = fn(*leaves)
        return torch.autograd.grad((out.double() * dy).sum(), leaves)

    expected = grads(lambda *a: fused_mlp_ref(*a, "gelu", dropout_p, seed, upcast=True))
    baseline = grads(lambda *a: fused_mlp_ref(*a, "gelu", dropout_p, seed))
    with force_plan("fused_mlp_dh", "unfused"):
        for plan in range(len(la_plans._BWD_GPU_PLANS)):
            with force_plan(OP_NAME + "_bwd", plan), use_backend("triton", OP_NAME):
                actual = grads(lambda *a: fused_mlp(*a, "gelu", dropout_p, seed))
            for name, a, e, base in zip(("dx", "dw1", "db1", "dw2", "db2"), actual, expected, baseline):
                assert_close_to_reference(a, e, base, factor=3.0, name=f"{name} (plan {plan})")
    # The fused dh GEMM + elementwise kernel at each of its tiles.
    for index in range(len(la_fused._DH_TMA_CONFIGS)):
        monkeypatch.setattr(la_fused, "_DH_TMA_CONFIGS", la_fused._DH_TMA_CONFIGS[index:])
        with force_plan("fused_mlp_dh", "fused"), use_backend("triton", OP_NAME):
            actual = grads(lambda *a: fused_mlp(*a, "gelu", dropout_p, seed))
        for name, a, e, base in zip(("dx", "dw1", "db1", "dw2", "db2"), actual, expected, baseline):
            assert_close_to_reference(a, e, base, factor=3.0, name=f"{name} (fused dh, tile {index})")
    # Its persistent form at each of its tiles.
    for index in range(len(la_fused._DH_PERSISTENT_CONFIGS)):
        monkeypatch.setattr(la_fused, "_DH_PERSISTENT_CONFIGS",
                            la_fused._DH_PERSISTENT_CONFIGS[index:])
        with force_plan("fused_mlp_dh", "fused_persistent"), use_backend("triton", OP_NAME):
            actual = grads(lambda *a: fused_mlp(*a, "gelu", dropout_p, seed))
        for name, a, e, base in zip(("dx", "dw1", "db1", "dw2", "db2"), actual, expected, baseline):
            assert_close_to_reference(a, e, base, factor=3.0, name=f"{name} (persistent dh, tile {index})")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "quick_gelu"])
@pytest.mark.parametrize(
    "M, K, N", [(64 * 160 + 8, 768, 3072), (1568 + 8, 1024, 4096), (40, 64, 200)],
    ids=["vit_b", "vit_l", "small"],
)
def test_gpu_cutlass_mlp_gemm_bias_act_flash_attn_rule(M, K, N, dtype, activation):
    """The sm_90a CUTLASS kernels against float64 as their CPU twin is (tile tails in M and N included)."""
    case = _inputs((M, K), N, dtype, device="cuda")
    if not la_launch._cutlass_ok(*case[:2]):
        pytest.skip("needs an sm_90 GPU and a _C built with CUTLASS for sm_90a")
    for schedule in la_reference.CUTLASS_SCHEDULES:
        _check_mlp_gemm_bias_act(*case, activation, schedule)
