"""linear_act's and fused_mlp's launch plans forced one by one on the CPU: the TMA and persistent forward
plans, the cuBLAS plan, the fused dh plan and the in-place dpre pass against float64 and the pointer plan,
where each is offered; and the fc1 GEMM op of _C (CUTLASS on sm_90, ATen on the CPU)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CPU_TRITON, assert_close_to_reference, poisoned_outputs, needs_triton
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.dropout_add_layer_norm import dropout_keep_mask
from internvideo_fast.ops.linear_act import (
    ACTIVATIONS,
    OP_NAME,
    apply_activation_ref,
    fused_mlp,
    fused_mlp_ref,
    linear_act_ref,
)
from internvideo_fast.ops.framework.autotuning import force_plan
from internvideo_fast.ops.framework.seeds import seed_tensor
from linear_act_cases import (
    HIDDEN,
    IN,
    TOLERANCE,
    la_fused,
    la_launch,
    la_reference,
    needs_c,
    _assert_close,
    _check_mlp_gemm_bias_act,
    _inputs,
    _leaves,
    _run_plan,
)


# ------------------------------------------------------------------------------ TMA forward plan


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
