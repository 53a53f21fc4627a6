"""linear_act and fused_mlp on the GPU: flash-attn's rule against float64 in bf16 / fp16, every forward
and backward plan forced one by one, the activation memory fused_mlp saves, and the CUTLASS fc1 GEMM."""

import pytest
import torch
from torch import nn

from helpers import assert_close_to_reference, poisoned_outputs
from internvideo_fast.layers.mlp import FusedMLP
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.dropout_add_layer_norm import dropout_keep_mask
from internvideo_fast.ops.linear_act import OP_NAME, fused_mlp, fused_mlp_ref, linear_act, linear_act_ref
from internvideo_fast.ops.framework.autotuning import force_plan
from linear_act_cases import (
    la_fused,
    la_launch,
    la_plans,
    la_reference,
    _check_mlp_gemm_bias_act,
    _forward_backward,
    _inputs,
    _leaves,
    _run_plan,
    saved_bytes,
)


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
        fused_bytes, _ = saved_bytes(lambda: mlp(x))
    eager_bytes, _ = saved_bytes(lambda: eager(x))
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
