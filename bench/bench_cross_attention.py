"""cross_attention: our Triton kernels against torch's scaled_dot_product_attention with the flash
(FlashAttention-2, the baseline) and the memory-efficient backends, bf16, forward alone and forward +
backward, on InternVideo's shapes (CMA both directions, the UniFormerV2 UniBlock query, the caption
decoder) and, unless quick, flash-attn's grid (Sq = Sk in 512..16k, D in {64, 128}, B * S = 16k, 2048
channels). FLOPs: forward ``4 * B * H * Sq * Sk * D``, backward 2.5x that (forward + backward 3.5x)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import Case
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.backend import triton_runs_on
from internvideo_fast.ops.cross_attention import OP_NAME, cross_attention

# (name, B, H, D, Sq, Sk)
SHAPES = [
    ("cma-mm->mae", 8, 16, 64, 2056, 1568),
    ("cma-mae->mm", 8, 16, 64, 1568, 2056),
    ("uniblock-query", 64, 12, 64, 1, 1576),
    ("caption", 64, 8, 64, 32, 1576),
]
FLASH_GRID = [
    (f"grid-s{seqlen}-d{head_dim}", 16384 // seqlen, 2048 // head_dim, head_dim, seqlen, seqlen)
    for head_dim in (64, 128) for seqlen in (512, 1024, 2048, 4096, 8192, 16384)
]
CPU_SHAPES = [("tiny", 2, 2, 32, 17, 64)]


def _ours(provider):
    def run(q, k, v):  # [B, S, H, D]
        with use_backend(provider, OP_NAME):
            return cross_attention(q, k, v)

    return run


def _sdpa(backend):
    def run(q, k, v):  # [B, S, H, D] -> SDPA's [B, H, S, D] through transposed views
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    return run


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    on_gpu = device.type == "cuda"
    if on_gpu:
        shapes = SHAPES[:1] + SHAPES[2:3] if quick else SHAPES + FLASH_GRID
        providers = {"sdpa-flash": _sdpa(SDPBackend.FLASH_ATTENTION),
                     "sdpa-efficient": _sdpa(SDPBackend.EFFICIENT_ATTENTION)}
        if triton_runs_on(device):
            providers["triton"] = _ours("triton")
        baseline_name = "sdpa-flash"
        dtype = torch.bfloat16
    else:
        # On CPU the Triton interpreter is a test tool, not a backend to time: the reference against SDPA's
        # math backend, so the bench script itself is exercised.
        shapes = CPU_SHAPES
        providers = {"sdpa-math": _sdpa(SDPBackend.MATH), "reference": _ours("reference")}
        baseline_name = "sdpa-math"
        dtype = torch.float32
    out = []
    for name, B, H, D, Sq, Sk in shapes:
        size = f"{name},B={B},H={H},D={D},{Sq}x{Sk},{str(dtype)[6:]}"
        q = torch.randn(B, Sq, H, D, device=device, dtype=dtype)
        k = torch.randn(B, Sk, H, D, device=device, dtype=dtype)
        v = torch.randn(B, Sk, H, D, device=device, dtype=dtype)
        grad = torch.randn(B, Sq, H, D, device=device, dtype=dtype)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        flops = 4 * B * H * Sq * Sk * D
        for provider, fn in providers.items():
            def forward(fn=fn):
                return fn(q, k, v)

            def forward_backward(fn=fn):
                result = fn(*leaves)
                # SDPA returns [B, H, Sq, D] views of [B, Sq, H, D] memory; ours returns [B, Sq, H, D].
                result.backward(grad if result.shape == grad.shape else grad.transpose(1, 2))

            baseline = provider == baseline_name
            out.append(Case("cross_attention_fwd", size, provider, forward, baseline=baseline, flops=flops))
            out.append(Case("cross_attention_fwd_bwd", size, provider, forward_backward, baseline=baseline,
                            flops=int(3.5 * flops)))
    return out


CPU_CASES = cases(torch.device("cpu"))


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.size}-{c.provider}" for c in CPU_CASES])
def test_cross_attention(benchmark, case):
    benchmark.group = case.group
    benchmark(case.fn)
