"""cross_attention on the GPU: flash-attn's rule over long and odd lengths, kv_lengths in a CUDA graph,
dropout and determinism, every tuning candidate forced, and the TMA kernels with NaN in padded keys."""

import pytest
import torch

from helpers import assert_close_to_reference, poisoned_outputs
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.cross_attention import OP_NAME, cross_attention, cross_attention_ref
from internvideo_fast.ops.framework.autotuning import force_plan
from cross_attention_cases import ca_launch, _gpu_rule, _poison_padded_keys, _qkv, _run


# ---------------------------------------------------------------------------------------------------- GPU
GPU_SHAPES = [(113, 203), (1, 1576), (32, 1576), (1023, 1024), (1568, 2056), (2056, 1568)]


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
