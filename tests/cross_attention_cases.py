"""Shared by the cross_attention tests: module handles, tolerances, inputs, the float64 check and the
`launched` fixture."""

import importlib

import pytest
import torch

from helpers import assert_close_to_reference, describe_difference, poisoned_outputs
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.cross_attention import OP_NAME, cross_attention, cross_attention_ref
from internvideo_fast.ops.dropout_add_layer_norm import dropout_keep_mask

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


def _poison_padded_keys(k, v, lengths):
    """NaN in every key / value row at or past the sample's length (in place)."""
    for b, length in enumerate(lengths or []):
        k[b, length:] = float("nan")
        v[b, length:] = float("nan")


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
