"""dropout_add_layer_norm: our fused kernel against eager PyTorch (F.dropout, drop-path multiply, add,
F.layer_norm: four to five passes over the activations) and the reference, at the ViT-B and ViT-L widths
with 8 clips of 1568 tokens; forward alone and forward + backward. The RMSNorm variant
(dropout_add_rms_norm against F.rms_norm) and ``add_ln`` (no dropout, no drop path: VideoMAE pretraining's
blocks, whose backward stores dx = dresidual once) at the ViT-B width. On a GPU the ``graph`` rows replay
eager's and our calls from CUDA graphs: the kernels' bandwidth without the host's time."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from common import Case, cuda_graphed
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.framework.backend import triton_runs_on
from internvideo_fast.ops.dropout_add_layer_norm import OP_NAME, dropout_add_layer_norm, dropout_add_rms_norm

SIZES = [(8, 1568, 768), (8, 1568, 1024)]  # (clips, tokens, width)
DROPOUT_P = 0.1
EPS = 1e-6


def _eager(x, residual, weight, bias, drop_path_scale, rms=False, dropout_p=DROPOUT_P):
    dropped = F.dropout(x, dropout_p, training=True) if dropout_p else x
    if drop_path_scale is not None:
        dropped = dropped * drop_path_scale[:, None, None]
    new_residual = residual + dropped
    if rms:  # weight only, as RMSNorm layers have
        return F.rms_norm(new_residual, (x.shape[-1],), weight, EPS), new_residual
    return F.layer_norm(new_residual, (x.shape[-1],), weight, bias, EPS), new_residual


def _ours(provider, rms=False, dropout_p=DROPOUT_P):
    op = dropout_add_rms_norm if rms else dropout_add_layer_norm

    def run(x, residual, weight, bias, drop_path_scale):
        with use_backend(provider, OP_NAME):
            return op(x, residual, weight, None if rms else bias, dropout_p, EPS,
                      drop_path_scale=drop_path_scale, seed=0)

    return run


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    sizes = SIZES[:1] if quick else SIZES
    # "add_ln": no dropout and no drop path (VideoMAE pretraining's blocks), where dx is dresidual and the
    # backward stores it once.
    norms = {"dropout_add_ln": {"eager": _eager},
             "dropout_add_rms": {"eager": functools.partial(_eager, rms=True)},
             "add_ln": {"eager": functools.partial(_eager, dropout_p=0.0)}}
    # On CPU the Triton interpreter is a test tool, not a backend to time, and the reference rebuilds the
    # Philox dropout mask in int64 PyTorch (seconds a call): both are timed on GPU only.
    if device.type == "cuda":
        norms["dropout_add_ln"]["reference"] = _ours("reference")
        if triton_runs_on(device):
            norms["dropout_add_ln"]["triton"] = _ours("triton")
            norms["dropout_add_rms"]["triton"] = _ours("triton", rms=True)
            norms["add_ln"]["triton"] = _ours("triton", dropout_p=0.0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = []
    runs = [(size, "dropout_add_ln") for size in sizes]
    runs += [(SIZES[0], "dropout_add_rms"), (SIZES[0], "add_ln")]
    for (clips, tokens, width), norm in runs:
        providers = norms[norm]
        size = f"{clips}x{tokens}x{width},{str(dtype).removeprefix('torch.')}"
        shape = (clips, tokens, width)
        x = torch.randn(shape, device=device, dtype=dtype)
        residual = torch.randn(shape, device=device, dtype=dtype)
        weight = torch.ones(width, device=device, dtype=dtype)
        bias = torch.zeros(width, device=device, dtype=dtype)
        drop_path_scale = (torch.rand(clips, device=device) > 0.1).to(dtype) / 0.9
        if norm == "add_ln":
            drop_path_scale = None
        grads = (torch.randn_like(x), torch.randn_like(x))
        leaves = [t.detach().requires_grad_() for t in (x, residual, weight, bias)]
        activation_bytes = x.numel() * x.element_size()
        # Forward: read x, residual; write normed, new_residual. Backward: read d normed, d new_residual,
        # new_residual; write dx and dresidual (add_ln: one tensor, both).
        forward_bytes = 4 * activation_bytes
        backward_bytes = (4 if norm == "add_ln" else 5) * activation_bytes
        for name, fn in providers.items():
            def forward(fn=fn, x=x, residual=residual, weight=weight, bias=bias, scale=drop_path_scale):
                return fn(x, residual, weight, bias, scale)

            def forward_backward(fn=fn, leaves=leaves, scale=drop_path_scale, grads=grads):
                # autograd.grad: the op's own backward, without the += of dx and dresidual into the leaves'
                # .grad that .backward() adds (0.042 ms of ours' 0.156, bench/results/profile-*-run3.txt;
                # x and residual are activations in a network, not leaves).
                torch.autograd.grad(fn(*leaves, scale), leaves, grads, allow_unused=True)  # RMS: no bias

            baseline = name == "eager"
            out.append(
                Case(norm, size, name, forward, baseline=baseline, bytes_moved=forward_bytes)
            )
            out.append(
                Case(f"{norm}+bwd", size, name, forward_backward, baseline=baseline,
                     bytes_moved=forward_bytes + backward_bytes)
            )
            # Replayed from CUDA graphs: the kernels' bandwidth in wall time, without the host time that
            # bounds eager calls of ours (the goal compares against the copy ceiling).
            if device.type == "cuda" and name in ("eager", "triton"):
                out.append(Case(f"{norm} graph", size, name, cuda_graphed(forward),
                                baseline=baseline, bytes_moved=forward_bytes))
                out.append(Case(f"{norm}+bwd graph", size, name, cuda_graphed(forward_backward),
                                baseline=baseline, bytes_moved=forward_bytes + backward_bytes))
    return out


CPU_CASES = cases(torch.device("cpu"))


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.size}-{c.provider}" for c in CPU_CASES])
def test_dropout_add_layer_norm(benchmark, case):
    benchmark.group = case.group
    benchmark(case.fn)
