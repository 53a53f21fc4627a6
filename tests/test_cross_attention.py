"""cross_attention: the Triton kernels against a float64 reference (forward, lse, backward) over query / key
lengths, head dims, dtypes, key lengths and strided layouts; the split-key (flash-decoding) forward; no NaN
with one key; bitwise-deterministic gradients (deterministic=True: default plan, no tuner); the atomic-dQ
backward; the TMA forward (forced: float64, split keys, NaN in padded keys, its dropout mask, eligibility,
its place among the candidates); the TMA backward (forced: float64 with NaN in padded keys; offered only
where TMA can load); every tuning candidate registered for the AOT check; the dropout mask; bad
input; opcheck; torch.compile; fuzzes; and MultiHeadCrossAttention against nn.MultiheadAttention."""

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CPU_TRITON, assert_close_to_reference, describe_difference, poisoned_outputs, needs_triton
from internvideo_fast.layers.attention import MultiHeadCrossAttention
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.cross_attention import OP_NAME, cross_attention, cross_attention_ref
from internvideo_fast.ops.dropout_add_layer_norm import dropout_keep_mask
from internvideo_fast.ops.framework.autotuning import force_plan

# The modules whose plans, launchers and kernels the tests inspect, force or spy on.
ca_plans = importlib.import_module("internvideo_fast.ops.cross_attention.plans")
ca_launch = importlib.import_module("internvideo_fast.ops.cross_attention.launch")
ca_kernels_fwd = importlib.import_module("internvideo_fast.ops.cross_attention.kernels.forward")
ca_kernels_bwd = importlib.import_module("internvideo_fast.ops.cross_attention.kernels.backward")

# Max abs error against float64, relative to (1 + the largest expected magnitude): (outputs, gradients).
TOLERANCE = {torch.float32: (2e-5, 1e-4), torch.float16: (3e-3, 1e-2)}


def _qkv(B, Sq, Sk, H, D, dtype, layout="bshd", device="cpu"):
    """Leaves (what gradients land on) and the [B, S, H, D] inputs: the leaves themselves, or transposed
    views of [B, H, S, D] leaves (`layout="bhsd"`)."""
    leaves, inputs = [], []
    for S in (Sq, Sk, Sk):
        if layout == "bhsd":
            leaf = torch.randn(B, H, S, D, device=device).to(dtype).requires_grad_()
            inputs.append(leaf.transpose(1, 2))
        else:
            leaf = torch.randn(B, S, H, D, device=device).to(dtype).requires_grad_()
            inputs.append(leaf)
        leaves.append(leaf)
    return leaves, inputs


def _assert_close(actual, expected, tol, name):
    assert actual.shape == expected.shape, f"{name}: {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{name}: NaN; " + describe_difference(actual, expected)
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tol * (1 + expected.double().abs().max().item()), (
        f"{name}: " + describe_difference(actual, expected)
    )


def _run(fn, leaves, inputs, dout):
    out = fn(*inputs)
    if isinstance(out, tuple):
        out, lse = out
    else:
        lse = None
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return out, lse, grads


def _check(B, Sq, Sk, H, D, dtype, lengths=None, layout="bshd", dropout_p=0.0, seed=5):
    leaves, inputs = _qkv(B, Sq, Sk, H, D, dtype, layout)
    kv_lengths = None if lengths is None else torch.tensor(lengths, dtype=torch.int32)
    dout = torch.randn(B, Sq, H, D, dtype=torch.float64)
    keep = dropout_keep_mask(seed, (B, H, Sq, Sk), dropout_p) if dropout_p > 0 else None

    def kernel(q, k, v):
        return cross_attention(
            q, k, v, kv_lengths=kv_lengths, dropout_p=dropout_p, seed=seed, return_lse=True
        )

    with use_backend("triton", OP_NAME), poisoned_outputs():
        out, lse, grads = _run(kernel, leaves, inputs, dout)
    ref_leaves = [leaf.detach().double().requires_grad_() for leaf in leaves]
    ref_inputs = [t.transpose(1, 2) if layout == "bhsd" else t for t in ref_leaves]

    def reference(q, k, v):
        return cross_attention_ref(q, k, v, None, kv_lengths, keep, dropout_p, return_lse=True)

    ref_out, ref_lse, ref_grads = _run(reference, ref_leaves, ref_inputs, dout)
    out_tol, grad_tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.shape == (B, Sq, H, D) and lse.dtype == torch.float32
    _assert_close(out, ref_out, out_tol, "out")
    _assert_close(lse, ref_lse, 2e-5, "lse")
    for name, grad, ref_grad in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert grad.dtype == dtype, name
        _assert_close(grad, ref_grad, grad_tol, name)
    return out, grads


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


@pytest.fixture
def launched(monkeypatch):
    """Records (tuner, candidate labels) of every launch, then runs it as the op would."""
    calls = []
    run = ca_launch._run_candidates

    def recording(tuner, key, candidates, device, outputs):
        calls.append((tuner, [label for label, _ in candidates]))
        return run(tuner, key, candidates, device, outputs)

    monkeypatch.setattr(ca_launch, "_run_candidates", recording)
    return calls


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


# The TMA forward (_cross_attention_fwd_tma_kernel), forced with force_plan("cross_attention_fwd*", "tma"): the
# interpreter runs its host descriptors over CPU tensors (16-bit only, fp16 since the interpreter's bf16
# dot is broken). (B, Sq, Sk, H, D, kv_lengths, layout, dropout_p): Sq {1, 17, 64} x Sk {1, 31, 150} x
# D {32, 40, 80} corners; Sq = 1 against 150 keys takes the split-key path; padded keys are NaN.
TMA_CASES = [
    (2, 1, 1, 2, 32, None, "bshd", 0.0),
    (2, 17, 31, 2, 40, [31, 5], "bhsd", 0.0),
    (1, 64, 150, 2, 80, None, "bshd", 0.0),
    (2, 1, 150, 2, 80, [150, 70], "bshd", 0.0),
    (2, 17, 150, 1, 32, [150, 70], "bhsd", 0.3),
    (1, 64, 31, 2, 40, [9], "bshd", 0.2),
    (2, 1, 150, 1, 40, None, "bhsd", 0.25),
]


def _poison_padded_keys(k, v, lengths):
    """NaN in every key / value row at or past the sample's length (in place)."""
    for b, length in enumerate(lengths or []):
        k[b, length:] = float("nan")
        v[b, length:] = float("nan")


def _check_tma_forward(B, Sq, Sk, H, D, lengths=None, layout="bshd", dropout_p=0.0, seed=13):
    """Forced TMA forward against float64 (and against the pointer kernel with the same seed: a different
    dropout mask would move outputs by ~1 / (Sk (1 - p)), far above the tolerance); returns the label
    launched."""
    _, (q, k, v) = _qkv(B, Sq, Sk, H, D, torch.float16, layout)
    q, k, v = (t.detach() for t in (q, k, v))
    kv_lengths = None if lengths is None else torch.tensor(lengths, dtype=torch.int32)
    keep = dropout_keep_mask(seed, (B, H, Sq, Sk), dropout_p) if dropout_p > 0 else None
    ref_out, ref_lse = cross_attention_ref(q, k, v, None, kv_lengths, keep, dropout_p, return_lse=True)
    with use_backend("triton", OP_NAME), poisoned_outputs():
        pointer_out = cross_attention(q, k, v, kv_lengths=kv_lengths, dropout_p=dropout_p, seed=seed)
        _poison_padded_keys(k, v, lengths)
        calls = []
        run = ca_launch._run_candidates

        def recording(tuner, key, candidates, device, outputs):
            calls.append([label for label, _ in candidates])
            return run(tuner, key, candidates, device, outputs)

        previous = ca_launch._run_candidates
        ca_launch._run_candidates = recording
        try:  # (not monkeypatch: hypothesis runs examples without function-scoped fixtures)
            with force_plan("cross_attention_fwd*", "tma"):
                out, lse = cross_attention(
                    q, k, v, kv_lengths=kv_lengths, dropout_p=dropout_p, seed=seed, return_lse=True
                )
        finally:
            ca_launch._run_candidates = previous
    assert calls and all(len(labels) == 1 and labels[0].startswith("tma:") for labels in calls), calls
    assert out.dtype == torch.float16 and out.shape == (B, Sq, H, D) and lse.dtype == torch.float32
    _assert_close(out, ref_out, TOLERANCE[torch.float16][0], "tma out")
    _assert_close(lse, ref_lse, 2e-5, "tma lse")
    torch.testing.assert_close(out, pointer_out, rtol=0, atol=1e-3)
    return calls[0][0]


@needs_triton
@pytest.mark.parametrize(
    "B, Sq, Sk, H, D, lengths, layout, dropout_p", TMA_CASES,
    ids=[f"b{c[0]}-sq{c[1]}-sk{c[2]}-h{c[3]}-d{c[4]}-{'len' if c[5] else 'full'}-{c[6]}-p{c[7]}"
         for c in TMA_CASES],
)
def test_tma_forward_matches_float64_reference(B, Sq, Sk, H, D, lengths, layout, dropout_p):
    _check_tma_forward(B, Sq, Sk, H, D, lengths, layout, dropout_p)


@needs_triton
def test_tma_forward_split_keys_ignore_nan_in_padded_rows():
    """Sq = 1 against 150 keys: the split-key TMA forward (fp32 partials + combine); the short sample's
    tail block holds NaN rows 70..127 (real rows past its length), its last split is empty."""
    assert ca_launch._num_splits(2, 1, 150, ca_launch._split_block_n(80, torch.float16),
                                 torch.device("cpu")) > 1
    label = _check_tma_forward(2, 1, 150, 1, 80, [150, 70])
    assert label == ca_plans._tma_label(ca_plans._FWD_TMA_TUNE["fwd_split"][128][0])


@needs_triton
@pytest.mark.parametrize("Sq, Sk, D", [(17, 31, 40), (1, 100, 128)], ids=["one-split", "split-keys"])
def test_tma_forward_dropout_mask_is_bitwise_the_pytorch_mask(monkeypatch, Sq, Sk, D):
    """q = 0 (uniform probabilities 1 / Sk) and v = the identity (v_j = e_j, Sk <= D) put the mask itself in
    the output: out[b, i, h, j] = Z[b, h, i, j] / (Sk (1 - p)), so out != 0 must equal dropout_keep_mask."""
    B, H, p, seed = 2, 2, 0.3, 77
    q = torch.zeros(B, Sq, H, D).half()
    k = torch.randn(B, Sk, H, D).half()
    v = torch.eye(Sk, D).reshape(1, Sk, 1, D).expand(B, Sk, H, D).contiguous().half()
    assert ca_launch._tma_layout_ok((9, 0), q, k, v)  # so the forced TMA kernel runs
    with force_plan("cross_attention_fwd*", "tma"):
        with use_backend("triton", OP_NAME):
            out = cross_attention(q, k, v, dropout_p=p, seed=seed)
        kept = (out[..., :Sk] != 0).permute(0, 2, 1, 3)  # [B, H, Sq, Sk]
        assert torch.equal(kept, dropout_keep_mask(seed, (B, H, Sq, Sk), p))
        kept_values = out[..., :Sk][out[..., :Sk] != 0].float()
        expected = torch.full_like(kept_values, 1 / (Sk * (1 - p)))
        torch.testing.assert_close(kept_values, expected, rtol=1e-3, atol=0)


# The TMA backward (the split_tma plan: _cross_attention_bwd_dkdv_tma_kernel, then
# _cross_attention_bwd_dq_tma_kernel), forced with force_plan("cross_attention_bwd", "split_tma"): fp16 under the
# interpreter, gradients against float64 while the padded keys hold NaN (B, Sq, Sk, H, D, kv_lengths,
# layout, dropout_p): query and key blocks with tails, several key blocks per dq row (Sk = 150), one query
# row, fewer keys than one block, head dims padded to the block (40, 80), both layouts, dropout.
TMA_BWD_CASES = [
    (2, 17, 31, 2, 40, [31, 5], "bhsd", 0.0),
    (1, 64, 150, 2, 80, None, "bshd", 0.0),
    (2, 33, 150, 1, 32, [150, 70], "bshd", 0.2),
    (1, 1, 70, 2, 64, [9], "bhsd", 0.0),
    (2, 70, 9, 1, 128, None, "bshd", 0.1),
]


@needs_triton
@pytest.mark.parametrize(
    "B, Sq, Sk, H, D, lengths, layout, dropout_p", TMA_BWD_CASES,
    ids=[f"b{c[0]}-sq{c[1]}-sk{c[2]}-h{c[3]}-d{c[4]}-{'len' if c[5] else 'full'}-{c[6]}-p{c[7]}"
         for c in TMA_BWD_CASES],
)
def test_tma_backward_matches_float64_reference(monkeypatch, launched, B, Sq, Sk, H, D, lengths, layout,
                                                dropout_p):
    seed = 31
    leaves, inputs = _qkv(B, Sq, Sk, H, D, torch.float16, layout)
    kv_lengths = None if lengths is None else torch.tensor(lengths, dtype=torch.int32)
    dout = torch.randn(B, Sq, H, D, dtype=torch.float64)
    keep = dropout_keep_mask(seed, (B, H, Sq, Sk), dropout_p) if dropout_p > 0 else None
    ref_leaves = [leaf.detach().double().requires_grad_() for leaf in leaves]
    ref_inputs = [t.transpose(1, 2) if layout == "bhsd" else t for t in ref_leaves]
    _, _, ref_grads = _run(
        lambda q, k, v: cross_attention_ref(q, k, v, None, kv_lengths, keep, dropout_p, return_lse=True),
        ref_leaves, ref_inputs, dout,
    )
    with torch.no_grad():
        _poison_padded_keys(inputs[1], inputs[2], lengths)
    with force_plan("cross_attention_bwd", "split_tma"):
        with use_backend("triton", OP_NAME), poisoned_outputs():
            _, _, grads = _run(
                lambda q, k, v: cross_attention(q, k, v, kv_lengths=kv_lengths, dropout_p=dropout_p, seed=seed),
                leaves, inputs, dout,
            )
        for name, grad, ref_grad in zip(("dq", "dk", "dv"), grads, ref_grads):
            assert grad.dtype == torch.float16, name
            _assert_close(grad, ref_grad, TOLERANCE[torch.float16][1], name)
        backward = [labels for tuner, labels in launched if tuner == "cross_attention_bwd"]
        assert len(backward) == 1 and len(backward[0]) == 1 and backward[0][0].startswith("split_tma:"), launched


@needs_triton
def test_tma_backward_plans_need_a_tma_layout(launched):
    """Without the force the interpreter's launches are not TMA-eligible (no CUDA device): the split_tma
    plans are not offered, and the tuning key says so."""
    leaves, inputs = _qkv(1, 5, 9, 2, 64, torch.float16)
    with use_backend("triton", OP_NAME):
        out = cross_attention(*inputs)
        torch.autograd.grad(out.float().sum(), leaves)
    backward = [labels for tuner, labels in launched if tuner == "cross_attention_bwd"]
    assert backward and not any(label.startswith("split_tma:") for label in backward[0])


def _tma_tensor(shape=(2, 5, 2, 32), dtype=torch.float16):
    return torch.randn(shape).to(dtype)


def test_tma_eligibility():
    """TMA needs sm_90+, 16-bit, a 16-byte aligned base and every stride but the last a positive multiple of
    16 bytes; CPU tensors (the interpreter included) are never eligible."""
    good = _tma_tensor()
    bhsd_view = good.transpose(1, 2).contiguous().transpose(1, 2)
    assert ca_launch._tma_layout_ok((9, 0), good, good.bfloat16(), bhsd_view)
    assert ca_launch._tma_layout_ok((10, 0), good)
    assert not ca_launch._tma_layout_ok(None, good)
    assert not ca_launch._tma_layout_ok((8, 9), good)
    assert not ca_launch._tma_layout_ok((9, 0), good, good.float())
    assert not ca_launch._tma_layout_ok((9, 0), _tma_tensor((2, 5, 2, 36))[..., :32])  # 72-byte head stride
    assert not ca_launch._tma_layout_ok((9, 0), _tma_tensor((641,))[1:].view(2, 5, 2, 32))  # 2-byte base
    assert not ca_launch._tma_layout_ok((9, 0), _tma_tensor((1, 5, 2, 32)).expand(3, 5, 2, 32))  # stride 0
    assert not ca_launch._tma_eligible(good, good, good)


def test_tma_candidates_follow_the_pointer_tiles_and_are_registered(monkeypatch):
    """Where TMA is eligible, the forward tuner gets the pointer kernel's tiles (the default first), then the
    TMA tiles; deterministic=True and fp32 get none. Every TMA tile is registered for the AOT check in the
    aligned specialization."""
    from internvideo_fast.ops.framework.kernel_registry import triton_kernels

    launched = []
    monkeypatch.setattr(ca_launch, "_tma_eligible", lambda *tensors: True)
    monkeypatch.setattr(ca_launch, "_run_candidates", lambda tuner, key, candidates, *_: launched.append(
        (tuner, [label for label, _ in candidates])))  # records, launches nothing
    for Sq, kernel in ((33, "fwd"), (1, "fwd_split")):
        for D in (32, 40, 64, 80, 128):
            q, k, v = (t.detach() for t in _qkv(2, Sq, 300, 2, D, torch.float16)[1])
            launched.clear()
            ca_launch._cross_attention_fwd_impl(q, k, v, None, None, 0.1, 0.0, False)
            ca_launch._cross_attention_fwd_impl(q, k, v, None, None, 0.1, 0.0, True)
            ca_launch._cross_attention_fwd_impl(q.float(), k.float(), v.float(), None, None, 0.1, 0.0, False)
            block_d = ca_launch._block_d(D)
            aligned = ca_launch._aligned16(q, k, v)
            pointer = [ca_plans._tile_label(t)
                       for t in ca_plans._forward_tiles("16bit", kernel, block_d, aligned)]
            tma = [ca_plans._tma_label(t) for t in ca_plans._FWD_TMA_TUNE[kernel][block_d]]
            assert launched[0] == (f"cross_attention_{kernel}", pointer + tma), (D, launched[0])
            assert launched[1][1] == pointer[:1]
            assert not any(label.startswith("tma:") for label in launched[2][1])
    tma_kernel = ca_kernels_fwd._cross_attention_fwd_tma_kernel
    registered = {spec.name: spec for spec in triton_kernels() if spec.kernel is tma_kernel}
    for kernel, by_block_d in ca_plans._FWD_TMA_TUNE.items():
        spec = registered[f"cross_attention_{kernel}_tma"]
        assert spec.aligned_only and spec.multiplies_matrices
        for block_d, tiles in by_block_d.items():
            for tile in tiles:
                config = ca_plans._tma_config(block_d, tile, **ca_plans._FEATURES)
                assert config in spec.configs, (kernel, block_d, tile)


@needs_triton
@settings(max_examples=5, deadline=None)
@given(
    B=st.integers(1, 2),
    Sq=st.integers(1, 40),
    Sk=st.integers(1, 140),
    D=st.sampled_from([32, 40, 64, 80, 96, 128]),
    masked=st.booleans(),
    dropout_p=st.sampled_from([0.0, 0.2]),
)
def test_fuzz_shapes_tma_forward(B, Sq, Sk, D, masked, dropout_p):
    """The forced TMA forward (full key blocks, a masked tail, the split path for Sq <= 16) over random
    shapes, NaN in the padded key rows."""
    lengths = torch.randint(1, Sk + 1, (B,), dtype=torch.int32).tolist() if masked else None
    _check_tma_forward(B, Sq, Sk, 1, D, lengths, dropout_p=dropout_p)


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


# ---------------------------------------------------------------------------------------------------- GPU
GPU_SHAPES = [(113, 203), (1, 1576), (32, 1576), (1023, 1024), (1568, 2056), (2056, 1568)]


def _gpu_rule(B, Sq, Sk, H, D, dtype, lengths=None, dropout_p=0.0, device="cuda"):
    leaves, inputs = _qkv(B, Sq, Sk, H, D, dtype, device=device)
    kv_lengths = None if lengths is None else torch.tensor(lengths, dtype=torch.int32, device=device)
    dout = torch.randn(B, Sq, H, D, device=device)
    seed = 17
    keep = dropout_keep_mask(seed, (B, H, Sq, Sk), dropout_p, device) if dropout_p > 0 else None
    with use_backend("triton", OP_NAME), poisoned_outputs():
        out, _, grads = _run(
            lambda q, k, v: cross_attention(q, k, v, kv_lengths=kv_lengths, dropout_p=dropout_p, seed=seed),
            leaves, inputs, dout,
        )

    def reference(upcast):
        ref_leaves = [leaf.detach().float().requires_grad_() if upcast else leaf.detach().requires_grad_()
                      for leaf in leaves]
        return _run(
            lambda q, k, v: cross_attention_ref(q, k, v, None, kv_lengths, keep, dropout_p, upcast=False),
            ref_leaves, ref_leaves, dout,
        )

    expected, baseline = reference(True), reference(False)
    assert_close_to_reference(out, expected[0], baseline[0], name="out")
    for name, grad, ref, base in zip(("dq", "dk", "dv"), grads, expected[2], baseline[2]):
        assert_close_to_reference(grad, ref, base, factor=3.0, name=name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [32, 40, 64, 80, 96, 128])
@pytest.mark.parametrize("Sq, Sk", GPU_SHAPES[:3])
def test_gpu_flash_attn_rule(Sq, Sk, D, dtype):
    _gpu_rule(2, Sq, Sk, 4, D, dtype, lengths=[Sk, max(1, Sk // 3)])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Sq, Sk", GPU_SHAPES[3:])
def test_gpu_flash_attn_rule_long(Sq, Sk, D, dtype):
    _gpu_rule(1, Sq, Sk, 2, D, dtype)


@pytest.mark.gpu
def test_gpu_kv_lengths_capture_in_a_cuda_graph():
    """kv_lengths' range check reads them on the host, which a CUDA graph capture forbids: it is skipped
    while capturing (the kernels clamp to Sk), and the replay follows the lengths' new values."""
    leaves, (q, k, v) = _qkv(3, 33, 200, 2, 64, torch.bfloat16, device="cuda")
    lengths = torch.tensor([200, 7, 150], dtype=torch.int32, device="cuda")
    dout = torch.randn(3, 33, 2, 64, device="cuda", dtype=torch.bfloat16)

    def step():
        out = cross_attention(q, k, v, kv_lengths=lengths)
        return (out.detach(), *torch.autograd.grad(out, leaves, dout))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # the tuners choose outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    lengths.copy_(torch.tensor([1, 200, 64], dtype=torch.int32))
    graph.replay()
    torch.cuda.synchronize()
    expected = step()
    for index, (actual, wanted) in enumerate(zip(captured, expected)):
        torch.testing.assert_close(actual, wanted, msg=lambda m: f"output {index}: {m}")


@pytest.mark.gpu
def test_gpu_dropout_and_determinism():
    _gpu_rule(2, 113, 203, 4, 64, torch.bfloat16, dropout_p=0.1)
    leaves, inputs = _qkv(2, 1568, 2056, 4, 64, torch.bfloat16, device="cuda")
    dout = torch.randn(2, 1568, 4, 64, device="cuda", dtype=torch.bfloat16)
    runs = [
        torch.autograd.grad(cross_attention(*inputs, deterministic=True, dropout_p=0.1, seed=1), leaves, dout)
        for _ in range(2)
    ]
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [32, 40, 64, 128])
@pytest.mark.parametrize("Sq, Sk", [(113, 203), (1, 1576)])
def test_gpu_every_tuning_candidate_flash_attn_rule(monkeypatch, Sq, Sk, D):
    """Each forward tile (the TMA kernel's included) and backward plan the GPU tuner may pick, forced one by
    one (candidate i of every tuned launch; lists shorter than i repeat their last): flash-attn's rule in
    bf16, as the tuned call."""
    lengths = [Sk, max(1, Sk // 3)]
    counts = {}

    def record(tuner, key, candidates, device, outputs):
        counts[tuner] = len(candidates)
        return candidates[0][1]()

    monkeypatch.setattr(ca_launch, "_run_candidates", record)
    _gpu_rule(2, Sq, Sk, 4, D, torch.bfloat16, lengths=lengths)
    assert counts, "no tuned launch was seen"
    for index in range(1, max(counts.values())):
        def pick(tuner, key, candidates, device, outputs, index=index):
            return candidates[min(index, len(candidates) - 1)][1]()

        monkeypatch.setattr(ca_launch, "_run_candidates", pick)
        _gpu_rule(2, Sq, Sk, 4, D, torch.bfloat16, lengths=lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("Sq, Sk", [(113, 203), (1, 1576), (2056, 1568)])
def test_gpu_tma_forward_ignores_nan_in_padded_keys(monkeypatch, Sq, Sk, layout):
    """The TMA forward, forced, in bf16 with NaN in the key / value rows past kv_lengths: flash-attn's rule
    against the clean inputs' reference."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs sm_90+")
    with force_plan("cross_attention_fwd*", "tma"):
        B, H, D = 2, 4, 64
        lengths = [Sk, max(1, Sk // 3)]
        _, (q, k, v) = _qkv(B, Sq, Sk, H, D, torch.bfloat16, layout, device="cuda")
        q, k, v = (t.detach() for t in (q, k, v))
        kv_lengths = torch.tensor(lengths, dtype=torch.int32, device="cuda")
        expected = cross_attention_ref(q.float(), k.float(), v.float(), None, kv_lengths, upcast=False)
        baseline = cross_attention_ref(q, k, v, None, kv_lengths, upcast=False)
        _poison_padded_keys(k, v, lengths)
        with use_backend("triton", OP_NAME), poisoned_outputs():
            out = cross_attention(q, k, v, kv_lengths=kv_lengths)
        assert_close_to_reference(out, expected, baseline, name="out")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("Sq, Sk, D", [(113, 203, 64), (1, 1576, 64), (2056, 1568, 64), (113, 203, 128)])
def test_gpu_tma_backward_ignores_nan_in_padded_keys(monkeypatch, Sq, Sk, D, layout):
    """The TMA backward (split_tma plan), forced, in bf16 with NaN in the key / value rows past
    kv_lengths: flash-attn's rule (3x for gradients) against the clean inputs' references."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs sm_90+")
    B, H = 2, 4
    lengths = [Sk, max(1, Sk // 3)]
    leaves, inputs = _qkv(B, Sq, Sk, H, D, torch.bfloat16, layout, device="cuda")
    kv_lengths = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    dout = torch.randn(B, Sq, H, D, device="cuda")

    def reference(upcast):
        ref_leaves = [leaf.detach().float().requires_grad_() if upcast else leaf.detach().requires_grad_()
                      for leaf in leaves]
        ref_inputs = [t.transpose(1, 2) if layout == "bhsd" else t for t in ref_leaves]
        return _run(lambda q, k, v: cross_attention_ref(q, k, v, None, kv_lengths, upcast=False),
                    ref_leaves, ref_inputs, dout)

    expected, baseline = reference(True), reference(False)
    with torch.no_grad():
        _poison_padded_keys(inputs[1], inputs[2], lengths)
    with force_plan("cross_attention_bwd", "split_tma"):
        with use_backend("triton", OP_NAME), poisoned_outputs():
            _, _, grads = _run(lambda q, k, v: cross_attention(q, k, v, kv_lengths=kv_lengths),
                               leaves, inputs, dout)
        for name, grad, ref, base in zip(("dq", "dk", "dv"), grads, expected[2], baseline[2]):
            assert_close_to_reference(grad, ref, base, factor=3.0, name=name)
