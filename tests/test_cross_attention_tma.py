"""cross_attention's TMA kernels, forced on the CPU (the interpreter runs host descriptors over CPU
tensors): the forward against float64 (split keys, NaN in padded keys, its dropout mask bitwise the PyTorch
mask, a fuzz), the backward against float64 with NaN in padded keys, where each is offered, and their
place among the tuner's candidates."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import poisoned_outputs, needs_triton
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.cross_attention import OP_NAME, cross_attention, cross_attention_ref
from internvideo_fast.ops.dropout_add_layer_norm import dropout_keep_mask
from internvideo_fast.ops.framework.autotuning import force_plan
from cross_attention_cases import (  # noqa: F401, F811  (launched: a fixture)
    TOLERANCE,
    ca_kernels_fwd,
    ca_launch,
    ca_plans,
    launched,
    _assert_close,
    _poison_padded_keys,
    _qkv,
    _run,
)


# The TMA forward (_cross_attention_fwd_tma_kernel), forced with force_plan("cross_attention_fwd*", "tma"):
# the interpreter runs its host descriptors over CPU tensors (16-bit only, fp16 since the interpreter's bf16
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
