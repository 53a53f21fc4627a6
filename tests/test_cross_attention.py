"""cross_attention: the Triton kernels against a float64 reference (forward, lse, backward) over query / key
lengths, head dims, dtypes, key lengths and strided layouts; the split-key (flash-decoding) forward; no NaN
with one key; bitwise-deterministic gradients (deterministic=True: default plan, no tuner); the atomic-dQ
backward; every tuning candidate registered for the AOT check; the dropout mask; bad input; opcheck;
torch.compile; fuzzes; and MultiHeadCrossAttention against nn.MultiheadAttention. The TMA kernels:
test_cross_attention_tma.py; the GPU: test_cross_attention_gpu.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CPU_TRITON, poisoned_outputs, needs_triton
from internvideo_fast.layers.attention import MultiHeadCrossAttention
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.cross_attention import OP_NAME, cross_attention, cross_attention_ref
from internvideo_fast.ops.dropout_add_layer_norm import dropout_keep_mask
from internvideo_fast.ops.framework.autotuning import force_plan
from cross_attention_cases import (  # noqa: F401, F811  (launched: a fixture)
    ca_kernels_bwd,
    ca_launch,
    ca_plans,
    launched,
    _assert_close,
    _check,
    _gpu_rule,
    _qkv,
)


# ---------------------------------------------------------------------------------------------------- CPU
# (B, Sq, Sk, H, D, dtype, kv_lengths, layout): representative corners of Sq {1, 17, 64} x Sk {1, 31, 128}
# x D {32, 40, 64, 80}, not the full product (the interpreter is slow).
CASES = [
    (2, 1, 1, 2, 32, torch.float32, None, "bshd"),
    (2, 17, 31, 2, 80, torch.float32, [31, 5], "bhsd"),
    (1, 64, 128, 2, 64, torch.float32, None, "bshd"),
    (2, 1, 128, 2, 64, torch.float16, [128, 50], "bshd"),
    (2, 17, 128, 1, 32, torch.float16, None, "bhsd"),
    (2, 64, 31, 1, 80, torch.float16, [1, 31], "bshd"),
    (1, 17, 1, 3, 64, torch.float32, None, "bhsd"),
    (2, 64, 128, 1, 32, torch.float32, [100, 128], "bhsd"),
    (1, 1, 31, 2, 80, torch.float16, None, "bhsd"),
    (2, 17, 31, 2, 40, torch.float32, [7, 31], "bshd"),
]


@needs_triton
@pytest.mark.parametrize(
    "B, Sq, Sk, H, D, dtype, lengths, layout", CASES,
    ids=[f"b{c[0]}-sq{c[1]}-sk{c[2]}-h{c[3]}-d{c[4]}-{str(c[5])[6:]}-{'len' if c[6] else 'full'}-{c[7]}"
         for c in CASES],
)
def test_forward_backward_match_float64_reference(B, Sq, Sk, H, D, dtype, lengths, layout):
    _check(B, Sq, Sk, H, D, dtype, lengths, layout)


@needs_triton
def test_split_keys_path_is_taken_and_matches_one_program(monkeypatch):
    """Sq = 1 against 256 keys splits the keys over programs (one split empty for the short sample) and
    gives the single-program result."""
    B, Sq, Sk, H, D = 2, 1, 256, 1, 64
    block_n = ca_launch._split_block_n(D, torch.float32)
    assert ca_launch._num_splits(B * H, Sq, Sk, block_n, torch.device("cpu")) > 1
    leaves, inputs = _qkv(B, Sq, Sk, H, D, torch.float32)
    lengths = torch.tensor([70, 256], dtype=torch.int32)
    with use_backend("triton", OP_NAME), poisoned_outputs():
        split_out, split_lse = cross_attention(*inputs, kv_lengths=lengths, return_lse=True)
        monkeypatch.setattr(ca_launch, "_num_splits", lambda *args: 1)
        one_out, one_lse = cross_attention(*inputs, kv_lengths=lengths, return_lse=True)
    ref_out, ref_lse = cross_attention_ref(*inputs, None, lengths, return_lse=True)
    _assert_close(split_out, ref_out, 2e-5, "split out")
    _assert_close(split_lse, ref_lse, 2e-5, "split lse")
    torch.testing.assert_close(split_out, one_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split_lse, one_lse, rtol=1e-5, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("Sk, lengths", [(1, None), (40, [1, 1]), (130, [1, 130])])
def test_no_nan_with_a_single_key(Sk, lengths):
    """One key (Sk = 1, or every key masked but the first): out equals v's first row, gradients finite."""
    leaves, inputs = _qkv(2, 3, Sk, 2, 32, torch.float32)
    q, k, v = inputs
    k_lengths = None if lengths is None else torch.tensor(lengths, dtype=torch.int32)
    with use_backend("triton", OP_NAME), poisoned_outputs():
        out = cross_attention(q, k, v, kv_lengths=k_lengths)
        grads = torch.autograd.grad(out.sum(), leaves)
    if lengths is None or lengths[0] == 1:
        torch.testing.assert_close(out[0], v[0, :1].expand(3, 2, 32).detach())
    for grad in grads:
        assert torch.isfinite(grad).all()
    if k_lengths is not None:
        assert torch.equal(grads[1][0, 1:], torch.zeros_like(grads[1][0, 1:])), "masked keys get no dk"
        assert torch.equal(grads[2][0, 1:], torch.zeros_like(grads[2][0, 1:])), "masked keys get no dv"


@needs_triton
def test_gradients_are_bitwise_deterministic(monkeypatch, launched):
    """deterministic=True launches the default tiles and the default backward plan alone, without the
    tuner (it would fail here) and whatever plan a test forces: bitwise the same run to run."""
    with force_plan("cross_attention_bwd", "atomic"):
        monkeypatch.setattr(ca_launch, "launch_tuner", lambda name: pytest.fail(f"tuner {name} used"))
        leaves, inputs = _qkv(2, 33, 70, 2, 64, torch.float16)
        dout = torch.randn(2, 33, 2, 64).half()
        runs = []
        with use_backend("triton", OP_NAME):
            for _ in range(2):
                out = cross_attention(*inputs, deterministic=True, dropout_p=0.2, seed=3)
                runs.append((out, *torch.autograd.grad(out, leaves, dout)))
        for first, second in zip(*runs):
            assert torch.equal(first, second)
        aligned = ca_launch._aligned16(*inputs)
        plan = ("split", ca_plans._default_tile("16bit", "bwd_dkdv", 64, aligned),
                ca_plans._default_tile("16bit", "bwd_dq", 64, aligned))
        assert launched == 2 * [("cross_attention_fwd", ["M128_N64_w8_s3"]),
                                ("cross_attention_bwd", [ca_plans._plan_label(plan)])]


# (B, Sq, Sk, H, D, dtype, kv_lengths, dropout_p): the atomic-dQ backward over odd lengths, D 32 / 80,
# several key blocks adding into one dq row (Sk = 150 > BLOCK_N), kv_lengths and dropout.
ATOMIC_CASES = [
    (2, 17, 31, 2, 32, torch.float32, [31, 5], 0.0),
    (2, 17, 31, 2, 80, torch.float16, None, 0.0),
    (1, 17, 31, 2, 80, torch.float32, [20], 0.3),
    (2, 17, 150, 1, 32, torch.float16, [150, 70], 0.2),
    (1, 33, 150, 2, 32, torch.float32, None, 0.0),
]


@needs_triton
@pytest.mark.parametrize(
    "B, Sq, Sk, H, D, dtype, lengths, dropout_p", ATOMIC_CASES,
    ids=[f"b{c[0]}-sq{c[1]}-sk{c[2]}-h{c[3]}-d{c[4]}-{str(c[5])[6:]}-{'len' if c[6] else 'full'}-p{c[7]}"
         for c in ATOMIC_CASES],
)
def test_atomic_dq_backward_matches_float64_reference(monkeypatch, launched, B, Sq, Sk, H, D, dtype, lengths,
                                                      dropout_p):
    with force_plan("cross_attention_bwd", "atomic"):
        _check(B, Sq, Sk, H, D, dtype, lengths, dropout_p=dropout_p, seed=9)
        backward = [labels for tuner, labels in launched if tuner == "cross_attention_bwd"]
        assert len(backward) == 1 and len(backward[0]) == 1 and backward[0][0].startswith("atomic:"), launched


@needs_triton
def test_nondeterministic_backward_offers_the_tuner_every_plan(launched):
    """deterministic=False (the default) hands the tuner the default plan first, then the alternatives,
    atomic dQ included; on CPU the tuner runs the default."""
    leaves, inputs = _qkv(1, 5, 9, 2, 64, torch.float16)
    with use_backend("triton", OP_NAME):
        out = cross_attention(*inputs)
        torch.autograd.grad(out.float().sum(), leaves)
    (fwd_tuner, fwd_labels), (bwd_tuner, bwd_labels) = launched
    assert fwd_tuner == "cross_attention_fwd" and len(fwd_labels) >= 3  # 9 keys: one key block, no split
    assert fwd_labels[0] == ca_plans._tile_label(ca_plans._CONFIGS["16bit"]["fwd"][64])
    assert bwd_tuner == "cross_attention_bwd" and bwd_labels[0].startswith("split:")
    assert any(label.startswith("atomic:") for label in bwd_labels[1:])


def _registered_configs(kernel_fn, aligned_only_allowed):
    from internvideo_fast.ops.framework.kernel_registry import triton_kernels

    return [
        config for spec in triton_kernels()
        if spec.kernel is kernel_fn and spec.name.startswith("cross_attention_")
        and (aligned_only_allowed or not spec.aligned_only)
        for config in spec.configs
    ]


@pytest.mark.parametrize("kind", ["16bit", "fp32"])
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
def test_every_candidate_is_registered_for_the_aot_check_and_the_default_is_first(kind, aligned):
    """Every tile the launchers (tuning included) may use is in the kernel registry, in a spec the AOT
    check compiles in the launch's specialization; the first candidate is the fixed default."""
    for block_d in ca_plans._BLOCK_DS:
        for kernel, tiles in ca_plans._candidate_tiles(kind, block_d, aligned).items():
            registered = _registered_configs(ca_plans._ATTENTION_KERNELS[kernel], aligned)
            for tile in tiles:
                config = ca_plans._tile_config(kind, kernel, block_d, tile, **ca_plans._FEATURES)
                assert config in registered, (kind, kernel, block_d, aligned, tile)
        for kernel in ("fwd", "fwd_split"):
            tiles = ca_plans._forward_tiles(kind, kernel, block_d, aligned)
            assert tiles[0] == ca_plans._CONFIGS[kind][kernel][block_d]
            assert len(tiles) >= (3 if kind == "16bit" else 1)
            assert ca_plans._forward_tiles(kind, kernel, block_d, aligned, tune=False) == tiles[:1]
        plans = ca_plans._backward_plans(kind, block_d, aligned, deterministic=False)
        assert ca_plans._backward_plans(kind, block_d, aligned, deterministic=True) == plans[:1]
        assert plans[0] == ("split", ca_plans._default_tile(kind, "bwd_dkdv", block_d, aligned),
                            ca_plans._default_tile(kind, "bwd_dq", block_d, aligned))
        if kind == "fp32" or aligned or block_d < 128:  # no atomic tile fits D = 128 unaligned
            assert any(plan[0] == "atomic" for plan in plans)
    # Today's fixed configs stay the defaults (a spot check of the tables the defaults read).
    assert ca_plans._backward_plans("16bit", 64, True, True) == [("split", (32, 64, 4, 2), (128, 64, 8, 3))]
    assert ca_plans._backward_plans("16bit", 128, False, True) == [("split", (16, 64, 8, 2), (64, 32, 4, 2))]
    assert ca_plans._forward_tiles("16bit", "fwd", 128, True)[0] == (128, 32, 8, 3)


def test_every_tma_backward_tile_is_registered_for_the_aot_check():
    """The split_tma plans' dK/dV and dQ tiles, at every head-dim block, are in the TMA backward kernels'
    AOT specs (compiled 16-aligned only: TMA launches always are)."""
    kernels = (ca_kernels_bwd._cross_attention_bwd_dkdv_tma_kernel, ca_kernels_bwd._cross_attention_bwd_dq_tma_kernel)
    for block_d in ca_plans._BLOCK_DS:
        plans = ca_plans._BWD_TMA_TUNE[block_d]
        assert plans and all(plan[0] == "split_tma" for plan in plans)
        for plan in plans:
            for tile, kernel in zip(plan[1:], kernels):
                config = ca_plans._tma_bwd_config(block_d, tile, **ca_plans._FEATURES)
                assert config in _registered_configs(kernel, aligned_only_allowed=True), (block_d, plan)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dropout_matches_reference_with_the_same_mask(dtype):
    _check(2, 17, 70, 2, 32, dtype, [70, 20], "bshd", dropout_p=0.3, seed=11)


@needs_triton
def test_dropout_kept_fraction_and_kernel_mask_equals_pytorch_reproduction():
    """With dout = identity rows (Sq = D), dv[b, j, h, i] = P[i, j] * Z[i, j] / (1 - p) exposes the
    kernel's mask Z over 1 x 2 x 32 x 1600 = 102400 probabilities: kept fraction within 0.01 of 1 - p and
    bitwise the mask dropout_keep_mask gives."""
    B, Sq, Sk, H, D, p, seed = 1, 32, 1600, 2, 32, 0.25, 2024
    q = torch.zeros(B, Sq, H, D)
    k = torch.randn(B, Sk, H, D)
    v = torch.randn(B, Sk, H, D, requires_grad=True)
    dout = torch.eye(D).reshape(1, Sq, 1, D).expand(B, Sq, H, D).contiguous()
    with use_backend("triton", OP_NAME):
        out = cross_attention(q, k, v, dropout_p=p, seed=seed)
        (dv,) = torch.autograd.grad(out, (v,), dout)
    kept = (dv != 0).permute(0, 2, 3, 1)  # [B, H, Sq(i), Sk(j)]
    assert abs(kept.double().mean().item() - (1 - p)) < 0.01
    assert torch.equal(kept, dropout_keep_mask(seed, (B, H, Sq, Sk), p))
    # q = 0: uniform probabilities 1 / Sk, so every kept entry is 1 / (Sk (1 - p)).
    torch.testing.assert_close(dv[dv != 0], torch.full_like(dv[dv != 0], 1 / (Sk * (1 - p))))


def _expanded(S):
    return torch.randn(1, S, 1, 32).expand(65536, S, 1, 32)


@needs_triton
@pytest.mark.parametrize(
    "B, Sq, Sk, H, D, lengths",
    [(2, 17, 45, 2, 40, [45, 10]), (1, 1, 300, 2, 64, None), (1, 33, 70, 1, 128, None)],
)
def test_flash_attn_rule_fp16(B, Sq, Sk, H, D, lengths):
    """The GPU tests' rule on the interpreter in fp16 (its bf16 tl.dot is broken, so bf16 is GPU-only)."""
    _gpu_rule(B, Sq, Sk, H, D, torch.float16, lengths, dropout_p=0.1 if lengths else 0.0, device="cpu")


def _bad(**kwargs):
    call = dict(
        q=torch.randn(2, 5, 2, 32), k=torch.randn(2, 7, 2, 32), v=torch.randn(2, 7, 2, 32),
        kv_lengths=torch.tensor([3, 7], dtype=torch.int32),
    )
    return call | kwargs


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(k=torch.randn(3, 7, 2, 32)), "k"),
        (dict(v=torch.randn(2, 7, 3, 32)), "v"),
        (dict(k=torch.randn(2, 7, 2, 64)), "k"),
        (dict(v=torch.randn(2, 6, 2, 32)), "v"),
        (dict(q=torch.randn(2, 5, 2, 48), k=torch.randn(2, 7, 2, 48), v=torch.randn(2, 7, 2, 48)), "q"),
        (dict(q=torch.randn(2, 5, 1, 512), k=torch.randn(2, 7, 1, 512), v=torch.randn(2, 7, 1, 512)), "q"),
        (dict(q=torch.randn(2, 5, 2, 64)[..., ::2]), "q"),
        (dict(k=torch.randn(2, 7, 2, 32).half()), "k"),
        (dict(q=torch.randn(2, 5, 2, 32).double()), "q"),
        (dict(q=torch.randn(2, 5, 32)), "q"),
        (dict(v=torch.randn(2, 7, 2, 32, device="meta")), "v"),
        (dict(kv_lengths=torch.tensor([3, 7])), "kv_lengths"),
        (dict(kv_lengths=torch.tensor([3, 7, 7], dtype=torch.int32)), "kv_lengths"),
        (dict(kv_lengths=torch.tensor([0, 7], dtype=torch.int32)), "kv_lengths"),
        (dict(kv_lengths=torch.tensor([3, 8], dtype=torch.int32)), "kv_lengths"),
        (dict(kv_lengths=[3, 7]), "kv_lengths"),
        (dict(softmax_scale=0.0), "softmax_scale"),
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(dropout_p=0.1, seed="1"), "seed"),
        (dict(deterministic="yes"), "deterministic"),
        (dict(q=_expanded(5), k=_expanded(7), v=_expanded(7), kv_lengths=None), "q"),  # B * H > 65535
    ],
)
def test_bad_input_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cross_attention(**_bad(**kwargs))


def test_backend_choice_is_explicit():
    with use_backend("cuda", OP_NAME), pytest.raises(ValueError, match="cuda"):
        cross_attention(**_bad())


def test_reference_backend_matches_float64():
    q, k, v = (torch.randn(2, S, 2, 32).half() for S in (5, 7, 7))
    with use_backend("reference", OP_NAME):
        out = cross_attention(q, k, v)
    assert out.dtype == torch.float16
    _assert_close(out, cross_attention_ref(q, k, v), 3e-3, "out")


@needs_triton
def test_opcheck():
    """torch.library's own checks of the forward op: schema, fake, autograd registration, AOT dispatch."""
    q, k, v = torch.randn(2, 5, 2, 32), torch.randn(2, 9, 2, 32), torch.randn(2, 9, 2, 32)
    lengths = torch.tensor([4, 9], dtype=torch.int32)
    for args in [
        (q, k, v, None, None, 0.2, 0.0),
        (q, k, v, None, None, 0.2, 0.0, True),
        (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), lengths, torch.tensor(3), 0.2, 0.25),
        (q, k, v, lengths, torch.tensor(3), 0.2, 0.25, True),
    ]:
        torch.library.opcheck(torch.ops.internvideo_fast.cross_attention_fwd.default, args)


@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if CPU_TRITON else []))
def test_torch_compile_fullgraph(backend):
    def block(q, k, v, lengths):
        return cross_attention(q, k, v, kv_lengths=lengths) * 2

    lengths = torch.tensor([9, 4], dtype=torch.int32)
    leaves_c, inputs_c = _qkv(2, 5, 9, 2, 32, torch.float32)
    leaves_e = [t.detach().clone().requires_grad_() for t in leaves_c]
    torch._dynamo.reset()
    with use_backend(backend, OP_NAME):
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        out_c, out_e = compiled(*inputs_c, lengths), block(*leaves_e, lengths)
        torch.testing.assert_close(out_c, out_e)
        out_c.sum().backward()
        out_e.sum().backward()
    for c, e in zip(leaves_c, leaves_e):
        torch.testing.assert_close(c.grad, e.grad)


@needs_triton
@settings(max_examples=8)
@given(
    B=st.integers(1, 2),
    Sq=st.integers(1, 20),
    Sk=st.integers(1, 40),
    H=st.integers(1, 2),
    D=st.sampled_from([32, 40, 64, 80, 96, 128]),
    masked=st.booleans(),
)
def test_fuzz_shapes(B, Sq, Sk, H, D, masked):
    lengths = torch.randint(1, Sk + 1, (B,), dtype=torch.int32) if masked else None
    _check(B, Sq, Sk, H, D, torch.float32, None if lengths is None else lengths.tolist())


@needs_triton
@settings(max_examples=6, deadline=None)
@given(
    B=st.integers(1, 2),
    Sq=st.integers(1, 40),
    Sk=st.integers(1, 70),
    D=st.sampled_from([32, 40, 64, 80, 96, 128]),
    masked=st.booleans(),
)
def test_fuzz_shapes_atomic_dq_plan(B, Sq, Sk, D, masked):
    """The atomic-dQ backward (several key blocks adding into one dq row) over random shapes."""
    lengths = torch.randint(1, Sk + 1, (B,), dtype=torch.int32).tolist() if masked else None
    with force_plan("cross_attention_bwd", "atomic"):
        _check(B, Sq, Sk, 1, D, torch.float32, lengths)


# The TMA forward (_cross_attention_fwd_tma_kernel), forced with force_plan("cross_attention_fwd*", "tma"):
# the interpreter runs its host descriptors over CPU tensors (16-bit only, fp16 since the interpreter's bf16
# dot is broken). (B, Sq, Sk, H, D, kv_lengths, layout, dropout_p): Sq {1, 17, 64} x Sk {1, 31, 150} x
@pytest.mark.parametrize("backend", ["reference"] + (["triton"] if CPU_TRITON else []))
def test_module_matches_nn_multihead_attention(backend):
    dim, heads, B, Sq, Sk = 64, 2, 2, 3, 11
    torch_attention = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
    torch.nn.init.normal_(torch_attention.in_proj_bias)
    module = MultiHeadCrossAttention(dim, dim, heads)
    module.load_in_proj(torch_attention)
    assert set(module.state_dict()) == {
        "q_proj.weight", "q_proj.bias", "kv_proj.weight", "kv_proj.bias", "out_proj.weight", "out_proj.bias"
    }
    x_q, x_kv = torch.randn(B, Sq, dim), torch.randn(B, Sk, dim)
    lengths = torch.tensor([11, 6], dtype=torch.int32)
    padding = torch.arange(Sk)[None, :] >= lengths[:, None]
    expected, _ = torch_attention(x_q, x_kv, x_kv, key_padding_mask=padding, need_weights=False)
    with use_backend(backend, OP_NAME):
        actual = module(x_q, x_kv, kv_lengths=lengths)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True])
def test_module_passes_deterministic_through(monkeypatch, deterministic):
    import internvideo_fast.layers.attention as attention_modules

    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["deterministic"])
        return cross_attention(*args, **kwargs)

    monkeypatch.setattr(attention_modules, "cross_attention", recording)
    module = MultiHeadCrossAttention(64, 32, 2, deterministic=deterministic)
    with use_backend("reference", OP_NAME):
        module(torch.randn(2, 3, 64), torch.randn(2, 5, 32))
    assert seen == [deterministic]


def test_module_rejects_unsupported_head_dims():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadCrossAttention(64, 32, 3)
    with pytest.raises(ValueError, match="dim_q"):
        MultiHeadCrossAttention(96, 32, 4)  # head dim 24
