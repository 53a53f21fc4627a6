"""The transformer FFN (fc1 + GELU + fc2), forward + backward: FusedMLP (Triton matmul with the bias and GELU
in its epilogue, Triton dGELU + dbias pass, cuBLAS backward GEMMs) against eager PyTorch (nn.Linear +
F.gelu + nn.Linear, the baseline) and torch.compile of the same eager MLP (default mode), in bf16 at the
ViT-B pretraining (64 clips x 160 visible tokens, 768 -> 3072) and ViT-L fine-tuning (8 x 1568 tokens,
1024 -> 4096) sizes. FLOPs: two GEMMs of 2 * rows * D * hidden each, x3 for forward + backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import Case
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.linear_act import OP_NAME
from internvideo_fast.ops.mlp_modules import FusedMLP

SIZES = [(64 * 160, 768, 3072), (8 * 1568, 1024, 4096)]  # (rows, D, hidden)
CPU_SIZES = [(2 * 160, 64, 256)]  # the CPU cases only prove the cases run


class EagerMLP(nn.Module):
    """timm's / VideoMAE's Mlp without dropout: nn.Linear, F.gelu, nn.Linear."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _fused_with(provider: str, mlp: FusedMLP):
    def run(x):
        with use_backend(provider, OP_NAME):
            return mlp(x)

    return run


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    on_gpu = device.type == "cuda"
    sizes = SIZES if on_gpu else CPU_SIZES
    if quick:
        sizes = sizes[:1]
    dtype = torch.bfloat16 if on_gpu else torch.float32
    out = []
    for rows, D, hidden in sizes:
        size = f"rows={rows},D={D},hidden={hidden},{str(dtype).removeprefix('torch.')}"
        eager = EagerMLP(D, hidden).to(device=device, dtype=dtype)
        fused = FusedMLP(D, hidden, activation="gelu").to(device=device, dtype=dtype)
        fused.load_state_dict(eager.state_dict())
        providers = {"eager": eager}
        if on_gpu:
            # Triton (FusedMLP through linear_act) and torch.compile of the eager MLP. On CPU the Triton
            # interpreter is a test tool, not a backend to time.
            providers["triton"] = _fused_with("triton", fused)
            providers["compiled"] = torch.compile(eager)
        else:
            providers["reference"] = _fused_with("reference", fused)
        x = torch.randn(rows, D, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(rows, D, device=device, dtype=dtype)
        flops = 2 * rows * D * hidden * 2  # forward: fc1 and fc2
        # Forward + backward only (training is what the FFN costs us; a forward-only case would double
        # torch.compile's compile time inside gpu-check's bench budget).
        for name, fn in providers.items():
            def forward_backward(fn=fn, x=x, dy=dy):
                fn(x).backward(dy)

            out.append(
                Case("ffn+bwd", size, name, forward_backward, baseline=name == "eager", flops=3 * flops)
            )
    return out


CPU_CASES = cases(torch.device("cpu"))


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.size}-{c.provider}" for c in CPU_CASES])
def test_linear_act(benchmark, case):
    benchmark.group = case.group
    benchmark(case.fn)
