"""The device's two ceilings, measured in the same run as the kernels they judge.

- copy: a device-to-device copy of a large tensor; its GB/s counts bytes read plus bytes written, the
  yardstick for memory-bound ops (dropout + residual + LayerNorm's goal is 85% of it);
- matmul: a large bf16 matrix product through cuBLAS; its TFLOP/s is the yardstick for matrix-bound ops
  (cross-attention's forward goal is 60% of it).

Random data, never zeros (zeros run faster on the tensor cores). On CPU the same cases run at small sizes
so the script itself is exercised.
"""

from __future__ import annotations

import pytest
import torch

from common import Case

GPU_COPY_BYTES = 2 << 30  # 2 GiB: far larger than any L2
GPU_MATMUL = 8192
CPU_COPY_BYTES = 64 << 20
CPU_MATMUL = 512


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    on_gpu = device.type == "cuda"
    copy_bytes = GPU_COPY_BYTES if on_gpu else CPU_COPY_BYTES
    n = GPU_MATMUL if on_gpu else CPU_MATMUL
    if quick:
        copy_bytes, n = copy_bytes // 8, n // 2
    dtype = torch.bfloat16 if on_gpu else torch.float32
    source = torch.randn(copy_bytes // 4, device=device)
    target = torch.empty_like(source)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    product = torch.empty(n, n, device=device, dtype=dtype)
    return [
        Case("ceiling copy", f"{copy_bytes >> 20} MiB", "torch", lambda: target.copy_(source), baseline=True,
             bytes_moved=2 * copy_bytes),
        Case("ceiling matmul", f"{n}^3,{str(dtype).removeprefix('torch.')}", "torch",
             lambda: torch.matmul(a, b, out=product), baseline=True, flops=2 * n**3),
    ]


CPU_CASES = cases(torch.device("cpu"), quick=True)


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.size}" for c in CPU_CASES])
def test_ceilings(benchmark, case):
    benchmark.group = case.group
    benchmark(case.fn)
