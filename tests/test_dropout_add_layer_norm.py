"""dropout_add_layer_norm and its RMSNorm variant (dropout_add_rms_norm): the Triton kernel against a float64
reference (forward and backward), the dropout mask (rate, seeding, forward/backward agreement, bitwise equal
to the PyTorch reproduction), bad input, torch.compile, opcheck."""

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CPU_TRITON, assert_close_to_reference, describe_difference, poisoned_outputs, needs_triton
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.framework.autotuning import force_plan
from internvideo_fast.ops.dropout_add_layer_norm import (
    OP_NAME,
    dropout_add_layer_norm,
    dropout_add_layer_norm_ref,
    dropout_add_rms_norm,
    dropout_add_rms_norm_ref,
    dropout_keep_mask,
    dropout_threshold,
)

# The modules whose launch plans and launchers the tests force or spy on.
ln_plans = importlib.import_module("internvideo_fast.ops.dropout_add_layer_norm.plans")
ln_launch = importlib.import_module("internvideo_fast.ops.dropout_add_layer_norm.launch")

# Tolerances of the CPU tests against float64: (outputs, gradients) per dtype.
TOLERANCE = {torch.float32: (2e-5, 1e-4), torch.float16: (4e-3, 2e-2)}


def _inputs(shape, dtype, device="cpu", residual=True, weight=True, bias=True, drop_path=False):
    D = shape[-1]
    x = torch.randn(shape, device=device).to(dtype)
    res = torch.randn(shape, device=device).to(dtype) if residual else None
    w = (1 + 0.5 * torch.randn(D, device=device)).to(dtype) if weight else None
    b = (0.5 * torch.randn(D, device=device)).to(dtype) if bias else None
    scale = None
    if drop_path:
        scale = (torch.rand(shape[0], device=device) > 0.5).to(dtype) / 0.75
    return x, res, w, b, scale


def _leaves(*tensors):
    return [t.detach().requires_grad_() if t is not None else None for t in tensors]


def _forward_backward(fn, x, res, w, b, dy, dr):
    """Outputs and the grads of (x, residual, weight, bias) for upstream grads dy (of normed) and dr (of
    new_residual)."""
    normed, new_residual = fn(x, res, w, b)
    loss = (normed.double() * dy).sum() + (new_residual.double() * dr).sum()
    wanted = [t for t in (x, res, w, b) if t is not None]
    grads = iter(torch.autograd.grad(loss, wanted))
    return normed, new_residual, [next(grads) if t is not None else None for t in (x, res, w, b)]


def _assert_close(actual, expected, tol, name):
    assert actual.shape == expected.shape, name
    assert torch.allclose(actual.double(), expected.double(), rtol=tol, atol=tol), (
        f"{name}: " + describe_difference(actual, expected)
    )


# (public op, its reference) per norm.
NORMS = {"layer": (dropout_add_layer_norm, dropout_add_layer_norm_ref),
         "rms": (dropout_add_rms_norm, dropout_add_rms_norm_ref)}


def _check_against_reference(shape, dtype, dropout_p=0.0, eps=1e-6, seed=7, norm="layer", **features):
    x, res, w, b, scale = _inputs(shape, dtype, **features)
    dy, dr = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    keep = dropout_keep_mask(seed, shape, dropout_p, elements_per_draw=8) if dropout_p > 0 else None
    op, op_ref = NORMS[norm]

    def kernel(*args):
        return op(*args, dropout_p=dropout_p, eps=eps, drop_path_scale=scale, seed=seed)

    def reference(*args):
        return op_ref(*args, keep, dropout_p, eps, scale, upcast=True)

    with use_backend("triton", OP_NAME), poisoned_outputs():
        actual = _forward_backward(kernel, *_leaves(x, res, w, b), dy, dr)
    expected = _forward_backward(reference, *_leaves(x, res, w, b), dy, dr)
    out_tol, grad_tol = TOLERANCE[dtype]
    assert actual[0].dtype == dtype and actual[1].dtype == dtype
    _assert_close(actual[0], expected[0], out_tol, "normed")
    _assert_close(actual[1], expected[1], out_tol, "new_residual")
    for name, a, e in zip(("dx", "dresidual", "dweight", "dbias"), actual[2], expected[2]):
        assert (a is None) == (e is None), name
        if a is not None:
            assert a.dtype == dtype, name
            _assert_close(a, e, grad_tol * (4 if name in ("dweight", "dbias") else 1), name)


# ---------------------------------------------------------------------------------------------------- CPU
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 40), (3, 100), (37, 40), (2, 3, 100)], ids=str)
def test_forward_backward_match_float64_reference(shape, dtype):
    _check_against_reference(shape, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 40), (37, 40), (2, 3, 100)], ids=str)
def test_rms_norm_forward_backward_match_float64_reference(shape, dtype):
    _check_against_reference(shape, dtype, norm="rms", bias=False)
    _check_against_reference(shape, dtype, norm="rms", dropout_p=0.2, seed=5, drop_path=True)  # with a bias


def test_rms_norm_reference_is_the_formula():
    """The RMSNorm reference (F.rms_norm after the shared residual part) against the formula in float64,
    with a bias and a drop-path scale."""
    x, res, w, b, scale = _inputs((3, 5, 40), torch.float64, drop_path=True)
    normed, new_residual = dropout_add_rms_norm_ref(x, res, w, b, eps=1e-5, drop_path_scale=scale)
    h = res + x * scale[:, None, None]
    expected = h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-5) * w + b
    torch.testing.assert_close(new_residual, h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(normed, expected, rtol=1e-12, atol=1e-12)


@needs_triton
@pytest.mark.parametrize(
    "features",
    [
        dict(residual=False),
        dict(weight=False),
        dict(bias=False),
        dict(weight=False, bias=False, residual=False),
        dict(drop_path=True),
    ],
    ids=str,
)
def test_optional_inputs(features):
    _check_against_reference((4, 3, 40), torch.float32, eps=1e-5, **features)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dropout_and_drop_path_match_reference_with_the_same_mask(dtype):
    _check_against_reference((4, 5, 100), dtype, dropout_p=0.3, seed=123, drop_path=True)
    # D not a multiple of 8: each element draws its group of eight (the per-element path of the same rule).
    _check_against_reference((3, 7, 37), dtype, dropout_p=0.3, seed=-5, drop_path=True)


@needs_triton
@pytest.mark.parametrize("dropout_p, drop_path, shared", [(0.0, False, True), (0.3, False, False),
                                                          (0.0, True, False)])
def test_dx_is_dresidual_when_nothing_scales_the_branch(monkeypatch, dropout_p, drop_path, shared):
    """Without dropout and drop path dx = dresidual: the backward stores it once and hands both inputs the
    same buffer (one [rows, D] pass fewer); otherwise two buffers. Each grad equals the reference's."""
    stored = []
    original = ln_launch._dropout_add_layer_norm_bwd

    def spy(*args):
        dx, dresidual, dparams = original(*args)
        stored.append(dresidual.numel())
        return dx, dresidual, dparams

    monkeypatch.setattr(ln_launch, "_dropout_add_layer_norm_bwd", spy)
    x, res, w, b, scale = _inputs((4, 6, 40), torch.float32, drop_path=drop_path)
    # Non-leaf inputs, as in a network: their grads are what the backward returned, not copies.
    x_leaf, res_leaf = _leaves(x, res)
    x_in, res_in = x_leaf * 1.0, res_leaf * 1.0
    grads = {}
    x_in.register_hook(lambda g: grads.__setitem__("x", g))
    res_in.register_hook(lambda g: grads.__setitem__("residual", g))
    with use_backend("triton", OP_NAME):
        normed, new_residual = dropout_add_layer_norm(x_in, res_in, w, b, dropout_p, drop_path_scale=scale,
                                                      seed=11)
    dy, dr = torch.randn_like(normed), torch.randn_like(new_residual)
    torch.autograd.backward([normed, new_residual], [dy, dr])
    assert stored == [0 if shared else x.numel()]
    assert (grads["x"].data_ptr() == grads["residual"].data_ptr()) == shared  # views of one buffer
    keep = dropout_keep_mask(11, x.shape, dropout_p, elements_per_draw=8) if dropout_p else None
    expected = _forward_backward(
        lambda *args: dropout_add_layer_norm_ref(*args, keep, dropout_p, 1e-6, scale, upcast=True),
        *_leaves(x, res, w, b), dy.double(), dr.double())[2]
    _assert_close(grads["x"], expected[0], TOLERANCE[torch.float32][1], "dx")
    _assert_close(grads["residual"], expected[1], TOLERANCE[torch.float32][1], "dresidual")


@needs_triton
def test_mixed_precision_parameters():
    """fp16 activations with fp32 LayerNorm parameters (their grads come back in fp32)."""
    x, res, _, _, _ = _inputs((5, 40), torch.float16)
    w, b = 1 + torch.randn(40), torch.randn(40)
    x, res, w, b = _leaves(x, res, w, b)
    with use_backend("triton", OP_NAME):
        normed, _ = dropout_add_layer_norm(x, res, w, b)
    normed.float().sum().backward()
    expected, _ = dropout_add_layer_norm_ref(x, res, w, b, upcast=True)
    _assert_close(normed, expected, 4e-3, "normed")
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32


@needs_triton
def test_dropout_rate_and_kernel_mask_equals_pytorch_reproduction():
    """Kept fraction within 0.01 of 1 - p over 1e5 elements, and exactly the mask dropout_keep_mask gives,
    with whole 8-element groups per row (D = 400) and without (D = 100: each element draws its group)."""
    for p, shape in ((0.25, (250, 400)), (0.1, (300, 100))):
        x = torch.ones(shape)
        with use_backend("triton", OP_NAME):
            _, new_residual = dropout_add_layer_norm(x, None, None, None, dropout_p=p, seed=2024)
        kept = new_residual != 0
        assert abs(kept.double().mean().item() - (1 - p)) < 0.01
        assert torch.equal(kept, dropout_keep_mask(2024, shape, p, elements_per_draw=8))
        assert torch.equal(new_residual[kept], torch.full_like(new_residual[kept], 1 / (1 - p)))


@needs_triton
def test_same_seed_same_mask_and_backward_uses_the_forward_mask():
    shape, p = (6, 2, 100), 0.5
    x0, _, w, b, _ = _inputs(shape, torch.float32)
    res = None  # then new_residual is 0 exactly where x was dropped
    with use_backend("triton", OP_NAME):
        masks = []
        for seed in (5, 5, 6):
            x = x0.clone().requires_grad_()
            normed, new_residual = dropout_add_layer_norm(x, res, w, b, dropout_p=p, seed=seed)
            (normed.sum() + new_residual.sum()).backward()
            dropped = new_residual == 0
            assert torch.equal(x.grad == 0, dropped), f"seed {seed}: backward drops other elements"
            masks.append(dropped)
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    # A seed tensor and the same int agree; eval mode and p = 0 drop nothing.
    with use_backend("triton", OP_NAME):
        by_tensor = dropout_add_layer_norm(x0, res, w, b, dropout_p=p, seed=torch.tensor(5))[1]
        assert torch.equal(by_tensor == 0, masks[0])
        evaluated = dropout_add_layer_norm(x0, res, w, b, dropout_p=p, seed=5, training=False)[1]
        assert torch.equal(evaluated, dropout_add_layer_norm(x0, res, w, b)[1])


def test_reference_backend_draws_the_kernels_mask():
    """The default CPU backend (the reference) drops the elements dropout_keep_mask names."""
    x = torch.ones(3, 4, 40)
    _, new_residual = dropout_add_layer_norm(x, None, None, None, dropout_p=0.4, seed=-3)
    assert torch.equal(new_residual != 0, dropout_keep_mask(-3, x.shape, 0.4, elements_per_draw=8))


def test_eight_element_mask_rule_from_the_philox_words():
    """dropout_keep_mask(elements_per_draw=8), element by element from the Philox words: element i keeps
    when half i % 2 of word (i // 2) % 4 of counter i // 8 reaches the 16-bit threshold."""
    from internvideo_fast.ops.tube_mask import philox4x32_10_reference

    seed, p, numel = 2**40 + 12345, 0.3, 77  # a seed past 32 bits; a partial last group
    threshold = dropout_threshold(p)
    assert threshold == round(p * 65536)
    mask = dropout_keep_mask(seed, (7, 11), p, elements_per_draw=8).reshape(-1)
    for i in range(numel):
        counter = torch.tensor([i // 8])
        zero = torch.zeros_like(counter)
        words = philox4x32_10_reference(counter, zero, zero, zero, torch.tensor(seed & 0xFFFFFFFF),
                                        torch.tensor(seed >> 32))
        word = int(words[(i // 2) % 4])
        half = (word >> 16) if i % 2 else (word & 0xFFFF)
        assert bool(mask[i]) == (half >= threshold), i
    # The threshold's ends: p below 2**-17 drops nothing; p just under 1 still keeps the draws of 0xFFFF.
    assert dropout_threshold(0.0) == 0 and dropout_threshold(2.0**-18) == 0
    assert dropout_threshold(1 - 2.0**-20) == 65535
    assert dropout_keep_mask(3, (64,), 2.0**-18, elements_per_draw=8).all()
    with pytest.raises(ValueError, match="elements_per_draw"):
        dropout_keep_mask(3, (64,), 0.1, elements_per_draw=4)


def test_unseeded_calls_differ():
    x = torch.ones(8, 40)
    a = dropout_add_layer_norm(x, None, None, None, dropout_p=0.5)[1]
    b = dropout_add_layer_norm(x, None, None, None, dropout_p=0.5)[1]
    assert not torch.equal(a, b)


def _bad(**kwargs):
    x = torch.randn(2, 3, 8)
    call = dict(
        x=x, residual=torch.randn(2, 3, 8), weight=torch.ones(8), bias=torch.zeros(8), dropout_p=0.1, seed=0
    )
    return call | kwargs


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(dropout_p=-0.1), "dropout_p"),
        (dict(dropout_p="0.1"), "dropout_p"),
        (dict(residual=torch.randn(2, 3, 9)), "residual"),
        (dict(residual=torch.randn(2, 3, 8, dtype=torch.float64)), "residual"),
        (dict(residual=torch.randn(2, 3, 8, device="meta")), "residual"),
        (dict(weight=torch.ones(9)), "weight"),
        (dict(weight=torch.ones(8, dtype=torch.int32)), "weight"),
        (dict(weight=torch.ones(8, device="meta")), "weight"),
        (dict(bias=torch.zeros(2, 8)), "bias"),
        (dict(bias=torch.zeros(8, device="meta")), "bias"),
        (dict(drop_path_scale=torch.ones(3)), "drop_path_scale"),
        (dict(drop_path_scale=torch.ones(2, device="meta")), "drop_path_scale"),
        (dict(x=torch.randn(2, 3, 8, dtype=torch.float64), residual=None), "x"),
        (dict(x=torch.ones(2, 3, 8, dtype=torch.int64), residual=None), "x"),
        (dict(eps=0.0), "eps"),
        (dict(seed="7"), "seed"),
        (dict(seed=torch.tensor([1, 2])), "seed"),
        (dict(seed=torch.tensor(1, device="meta")), "seed"),
    ],
)
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_bad_input_names_the_argument(kwargs, argument, norm):
    with pytest.raises(ValueError, match=argument):
        NORMS[norm][0](**_bad(**kwargs))


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_residual_of_a_wider_dtype_promotes_like_an_add(backend):
    """Under autocast the branch output is 16-bit while the residual stream stays fp32."""
    x, res, w, b, _ = _inputs((3, 5, 40), torch.float16)
    res = torch.randn(3, 5, 40)
    with use_backend(backend, OP_NAME):
        normed, new_residual = dropout_add_layer_norm(x, res, w, b, 0.1, 1e-6, seed=3)
        expected = dropout_add_layer_norm(x.float(), res, w, b, 0.1, 1e-6, seed=3)
    assert normed.dtype == new_residual.dtype == torch.float32
    torch.testing.assert_close(normed, expected[0])
    torch.testing.assert_close(new_residual, expected[1])


def test_backend_choice_is_explicit():
    with use_backend("cuda", OP_NAME), pytest.raises(ValueError, match="cuda"):
        dropout_add_layer_norm(*_inputs((2, 40), torch.float32)[:4])


@pytest.mark.parametrize("dropout_p", [0.2, 0.0], ids=["dropout", "shared_dx"])  # 0: dx is dresidual
@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if CPU_TRITON else []))
def test_torch_compile_fullgraph(backend, norm, dropout_p):
    def block(x, residual, weight, bias):
        normed, new_residual = NORMS[norm][0](x, residual, weight, bias, dropout_p=dropout_p, seed=3)
        return normed * 2 + new_residual

    x, res, w, b, _ = _inputs((3, 2, 40), torch.float32)
    torch._dynamo.reset()
    with use_backend(backend, OP_NAME):
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        leaves_c, leaves_e = _leaves(x, res, w, b), _leaves(x, res, w, b)
        out_c, out_e = compiled(*leaves_c), block(*leaves_e)
        torch.testing.assert_close(out_c, out_e)
        out_c.sum().backward()
        out_e.sum().backward()
        for c, e in zip(leaves_c, leaves_e):
            torch.testing.assert_close(c.grad, e.grad)


@needs_triton
def test_opcheck():
    """torch.library's own checks of the forward op: schema, fake, autograd registration, AOT dispatch."""
    x, res, w, b, scale = _inputs((4, 40), torch.float32, drop_path=True)
    seed = torch.tensor(9)
    for args in [
        (x, res, w, b, scale, seed, 0.25, 1e-6, False),
        (x.requires_grad_(), None, w.requires_grad_(), None, None, None, 0.0, 1e-5, False),
        (x, res, w, None, scale, seed, 0.25, 1e-6, True),
    ]:
        torch.library.opcheck(torch.ops.internvideo_fast.dropout_add_layer_norm_fwd.default, args)


@needs_triton
@settings(max_examples=10)
@given(
    rows=st.integers(0, 6),
    D=st.integers(1, 70),
    residual=st.booleans(),
    affine=st.booleans(),
    norm=st.sampled_from(sorted(NORMS)),
)
def test_fuzz_shapes_no_dropout(rows, D, residual, affine, norm):
    x, res, w, b, _ = _inputs((rows, D), torch.float32, residual=residual, weight=affine, bias=affine)
    op, op_ref = NORMS[norm]
    with use_backend("triton", OP_NAME), poisoned_outputs():
        actual = op(x, res, w, b)
    expected = op_ref(x, res, w, b, upcast=True)
    for name, a, e in zip(("normed", "new_residual"), actual, expected):
        _assert_close(a, e, 5e-5, name)



@needs_triton
def test_every_backward_plan_matches_float64_reference(monkeypatch):
    """Each (warps, programs per SM, load stages) plan the GPU tuner may pick, forced one by one: 4 or 8
    programs here, so rows split differently over programs (and over dweight / dbias partial rows); the
    interpreter runs the pipelined row loop as a plain loop (the GPU test covers the pipelining). D = 608
    also gets the plans with fewer warps than the width's default (BLOCK_D 512 to 4096 only), the one-warp
    plans among them (16-byte aligned rows only), and D = 599 the per-element mask (no load stages there)."""
    plans = {D: ln_plans._labelled_backward_plans(D, ln_plans._rows_aligned16(D))
             for D in (100, 600, 608, 599)}
    assert len(plans[608]) == len(plans[600]) + 2 > len(plans[100])  # 600 * 2 bytes: rows not 16-aligned
    assert len(plans[600]) > len(plans[599]) > 1
    assert {config.constexprs["LOAD_STAGES"] for _, config, _ in plans[599]} == {1}
    assert plans[608][-1][0] == "w1_8per_sm_ld3"
    for index in range(len(ln_plans._BWD_PLAN_SHAPES)):
        with force_plan(OP_NAME + "_bwd", index):
            for D in (100, 608, 599):
                _check_against_reference((37, D), torch.float32, dropout_p=0.2, seed=3, drop_path=True)
            _check_against_reference((37, 608), torch.float32, dropout_p=0.2, seed=3, norm="rms")


def test_rows_are_aligned_only_with_aligned_bases_and_widths():
    """The one-warp backward plans spill on rows that are not 16-byte aligned, so they are offered only
    where every base address and the width allow 16-byte aligned rows."""
    x = torch.randn(4 * 64 + 8)
    assert ln_plans._rows_aligned16(64, x[:256], None)
    assert not ln_plans._rows_aligned16(64, x[1:257])  # 4 bytes past an aligned base
    assert not ln_plans._rows_aligned16(40, x[:160])  # D = 40: Triton does not specialize D as aligned


@needs_triton
def test_every_forward_plan_matches_float64_reference(monkeypatch):
    """Each forward plan the GPU tuner may pick, forced one by one: the one-row-per-program default and the
    row-loop kernel's plans (4 or 8 programs here: 37 rows in uneven blocks), with dropout, drop path and
    every optional input, at D = 600 (8-element mask groups) and 599 (per-element mask) and without the
    optional inputs at D = 300; widths outside the loop plans' blocks (D = 100) keep the default only."""
    assert len(ln_plans._labelled_forward_plans(100)) == 1
    assert len(ln_plans._labelled_forward_plans(600)) == 1 + len(ln_plans._FWD_LOOP_PLAN_SHAPES)
    unaligned = ln_plans._labelled_forward_plans(599)
    stages = [config.constexprs.get("LOAD_STAGES", 1) for _, config, _ in unaligned]
    assert stages == [1, 1]  # the default and the one loop plan without load stages
    for index in range(len(ln_plans._labelled_forward_plans(600))):
        with force_plan(OP_NAME + "_fwd", index):
            for D in (600, 599):
                _check_against_reference((37, D), torch.float32, dropout_p=0.2, seed=3, drop_path=True)
            _check_against_reference((5, 7, 300), torch.float16, residual=False, weight=False, bias=False)
            _check_against_reference((37, 600), torch.float32, dropout_p=0.2, seed=3, norm="rms")


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, D, dropout_p, norm", [
    *((dtype, D, p, "layer")
      for dtype in (torch.bfloat16, torch.float16) for D in (768, 1024) for p in (0.0, 0.1)),
    (torch.bfloat16, 768, 0.1, "rms"), (torch.float16, 1024, 0.0, "rms"),
], ids=str)
def test_gpu_matches_reference_flash_attn_rule(D, dtype, dropout_p, norm):
    """ViT-B / ViT-L widths, 2 x 1568 tokens: kernel error <= 2x (outputs) / 3x (grads) PyTorch's own error
    at the same dtype, both against float64 with the same dropout mask."""
    op, op_ref = NORMS[norm]
    shape, seed = (2, 1568, D), 11
    x, res, w, b, scale = _inputs(shape, dtype, device="cuda", drop_path=True)
    dy = torch.randn(shape, device="cuda", dtype=torch.float64)
    dr = torch.randn(shape, device="cuda", dtype=torch.float64)
    keep = None
    if dropout_p > 0:
        keep = dropout_keep_mask(seed, shape, dropout_p, device="cuda", elements_per_draw=8)

    def kernel(*args):
        return op(*args, dropout_p=dropout_p, drop_path_scale=scale, seed=seed)

    with use_backend("triton", OP_NAME), poisoned_outputs():
        actual = _forward_backward(kernel, *_leaves(x, res, w, b), dy, dr)

    def reference(*args, upcast):
        return op_ref(*args, keep, dropout_p, 1e-6, scale, upcast=upcast)

    expected = _forward_backward(lambda *a: reference(*a, upcast=True), *_leaves(x, res, w, b), dy, dr)
    baseline = _forward_backward(lambda *a: reference(*a, upcast=False), *_leaves(x, res, w, b), dy, dr)
    for index, name in enumerate(("normed", "new_residual")):
        assert_close_to_reference(actual[index], expected[index], baseline[index], name=name)
    for name, a, e, base in zip(("dx", "dresidual", "dweight", "dbias"), actual[2], expected[2], baseline[2]):
        assert_close_to_reference(a, e, base, factor=3.0, name=name)


@pytest.mark.gpu
def test_gpu_mask_equals_pytorch_reproduction_and_backward_is_deterministic():
    shape = (8, 1568, 768)
    ones = torch.ones(shape, device="cuda", dtype=torch.bfloat16)
    _, dropped_ones = dropout_add_layer_norm(ones, None, None, None, dropout_p=0.1, seed=77)
    assert torch.equal(dropped_ones != 0, dropout_keep_mask(77, shape, 0.1, "cuda", elements_per_draw=8))
    tiny = 1.2e-5  # a threshold of 1: Triton launches an integer argument equal to 1 as a constant
    assert dropout_threshold(tiny) == 1
    _, dropped_ones = dropout_add_layer_norm(ones, None, None, None, dropout_p=tiny, seed=78)
    assert torch.equal(dropped_ones != 0, dropout_keep_mask(78, shape, tiny, "cuda", elements_per_draw=8))
    x, res, w, b, _ = _inputs(shape, torch.bfloat16, device="cuda")
    x.requires_grad_()
    w.requires_grad_()
    grads = []
    for _ in range(2):
        normed, _ = dropout_add_layer_norm(x, res, w, b, dropout_p=0.1, seed=77)
        grads.append(torch.autograd.grad(normed.float().sum(), (x, w)))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.gpu
@pytest.mark.parametrize("D", [768, 1024])
def test_gpu_every_backward_plan_flash_attn_rule(monkeypatch, D):
    """Each backward plan the tuner may pick, forced one by one, in bf16 with dropout: flash-attn's rule."""
    shape, seed, dtype = (2, 1568, D), 11, torch.bfloat16
    x, res, w, b, scale = _inputs(shape, dtype, device="cuda", drop_path=True)
    dy = torch.randn(shape, device="cuda", dtype=torch.float64)
    dr = torch.randn(shape, device="cuda", dtype=torch.float64)
    keep = dropout_keep_mask(seed, shape, 0.1, device="cuda", elements_per_draw=8)

    def reference(*args, upcast):
        return dropout_add_layer_norm_ref(*args, keep, 0.1, 1e-6, scale, upcast=upcast)

    expected = _forward_backward(lambda *a: reference(*a, upcast=True), *_leaves(x, res, w, b), dy, dr)
    baseline = _forward_backward(lambda *a: reference(*a, upcast=False), *_leaves(x, res, w, b), dy, dr)
    for index in range(len(ln_plans._BWD_PLAN_SHAPES)):
        with force_plan(OP_NAME + "_bwd", index):
            with use_backend("triton", OP_NAME), poisoned_outputs():
                actual = _forward_backward(
                    lambda *a: dropout_add_layer_norm(*a, dropout_p=0.1, drop_path_scale=scale, seed=seed),
                    *_leaves(x, res, w, b), dy, dr,
                )
            names = ("dx", "dresidual", "dweight", "dbias")
            for name, a, e, base in zip(names, actual[2], expected[2], baseline[2]):
                assert_close_to_reference(a, e, base, factor=3.0, name=f"{name} (plan {index})")


@pytest.mark.gpu
@pytest.mark.parametrize("D", [384, 768, 1024])
def test_gpu_every_forward_plan_flash_attn_rule(monkeypatch, D):
    """Each forward plan the tuner may pick, forced one by one, in bf16 with dropout and drop path: the
    outputs under flash-attn's rule, and the statistics the backward reads equal to the default's within
    fp32 rounding (plans with more warps sum in another order)."""
    shape, seed, dtype = (2, 1568, D), 11, torch.bfloat16
    x, res, w, b, scale = _inputs(shape, dtype, device="cuda", drop_path=True)
    keep = dropout_keep_mask(seed, shape, 0.1, device="cuda", elements_per_draw=8)
    expected = dropout_add_layer_norm_ref(x, res, w, b, keep, 0.1, 1e-6, scale, upcast=True)
    baseline = dropout_add_layer_norm_ref(x, res, w, b, keep, 0.1, 1e-6, scale, upcast=False)
    plans = ln_plans._labelled_forward_plans(D)
    assert len(plans) > 1
    flat = [t.reshape(-1, D) if t is not None and t.dim() > 1 else t for t in (x, res, w, b)]
    statistics = []
    for index in range(len(plans)):
        with force_plan(OP_NAME + "_fwd", index):
            with use_backend("triton", OP_NAME), poisoned_outputs():
                actual = dropout_add_layer_norm(x, res, w, b, dropout_p=0.1, drop_path_scale=scale, seed=seed)
                outputs = ln_launch._dropout_add_layer_norm_fwd_impl(
                    *flat, scale, torch.tensor(seed, device="cuda"), 0.1, 1e-6, False)
            for name, a, e, base in zip(("normed", "new_residual"), actual, expected, baseline):
                assert_close_to_reference(a, e, base, name=f"{name} ({plans[index][0]})")
            statistics.append(outputs[2:])
    for label, (mean, rstd) in zip((plan[0] for plan in plans[1:]), statistics[1:]):
        torch.testing.assert_close(mean, statistics[0][0], rtol=1e-6, atol=1e-6, msg=label)
        torch.testing.assert_close(rstd, statistics[0][1], rtol=1e-6, atol=1e-6, msg=label)


@pytest.mark.gpu
def test_gpu_seed_none_draws_anew_on_every_cuda_graph_replay():
    """seed=None draws the seed on the device: a captured call gets a new dropout mask at every replay
    (a seed drawn on the host would be frozen into the graph)."""
    x = torch.randn(4, 1024, device="cuda") + 3.0  # no zeros of its own: a zero is a dropped element

    def dropped():
        return dropout_add_layer_norm(x, None, None, None, 0.5, 1e-6)[1]

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        dropped()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dropped()
    masks = []
    for _ in range(3):
        graph.replay()
        masks.append(out == 0)
    torch.cuda.synchronize()
    assert all(0.4 < mask.float().mean() < 0.6 for mask in masks)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if CPU_TRITON else []))
def test_torch_compile_with_seed_none_draws_a_new_mask_per_call(backend):
    """seed=None is drawn as a tensor on x's device (not a Python int, which torch.compile could only get
    through a data-dependent host read): the graph compiles whole and each call draws anew."""
    x, residual = torch.randn(8, 64) + 3.0, torch.zeros(8, 64)  # x has no zeros: a zero is a dropped element
    with use_backend(backend, OP_NAME):
        dropped = torch.compile(lambda x, r: dropout_add_layer_norm(x, r, None, None, 0.25, 1e-6)[1],
                                fullgraph=True)
        first, second = dropped(x, residual), dropped(x, residual)
    assert 0.1 < (first == 0).float().mean() < 0.4 and not torch.equal(first == 0, second == 0)
