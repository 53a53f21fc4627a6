"""linear_act and FusedMLP: the Triton matmul + bias + activation epilogue against a float64 reference
(forward and backward, every activation, fp32 / fp16, with and without bias, any leading shape), each
activation against torch.nn.functional, bad input, opcheck, torch.compile, a shape fuzz, and the module's
parity with eager nn.Linear-GELU-nn.Linear and its state-dict names. Dropout and the fused_mlp op:
test_linear_act_dropout.py; the launch plans: test_linear_act_plans.py; the GPU: test_linear_act_gpu.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import CPU_TRITON, poisoned_outputs, needs_triton
from internvideo_fast.layers.mlp import FusedMLP, clip_mlp_key_map, remap_clip_mlp_keys
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.linear_act import (
    ACTIVATIONS,
    OP_NAME,
    apply_activation_ref,
    linear_act,
    linear_act_ref,
)
from linear_act_cases import (
    HIDDEN,
    IN,
    _assert_close,
    _check_against_reference,
    _forward_backward,
    _inputs,
    _leaves,
)


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
