"""tube_mask: our kernels against the PyTorch reference and the official numpy TubeMaskingGenerator
(a shuffle per sample in the data loader, then a host-to-device copy on GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common import Case
from internvideo_fast.ops import tube_mask, use_backend
from internvideo_fast.ops.framework.backend import available_backends
from internvideo_fast.ops.tube_mask import tube_mask_official_numpy

SIZES = [(64, 8, 14, 14, 0.9), (256, 8, 14, 14, 0.9), (32, 8, 32, 32, 0.9)]


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    sizes = SIZES[:1] if quick else SIZES
    available = available_backends("tube_mask", device)
    if device.type == "cpu":
        available.discard("triton")  # the interpreter is a test tool, not a backend to time
    out = []
    for batch, frames, height, width, ratio in sizes:
        size = f"B={batch},{frames}x{height}x{width},r={ratio}"
        seed = torch.tensor(0, device=device)
        rng = np.random.default_rng(0)

        def official(batch=batch, frames=frames, height=height, width=width, ratio=ratio, rng=rng):
            return tube_mask_official_numpy(batch, frames, height, width, ratio, rng).to(device)

        out.append(Case("tube_mask", size, "official-numpy", official, baseline=True))
        for provider in sorted(available):
            def ours(provider=provider, batch=batch, frames=frames, height=height, width=width, ratio=ratio):
                with use_backend(provider, "tube_mask"):
                    return tube_mask(batch, frames, height, width, ratio, seed=seed)

            out.append(Case("tube_mask", size, provider, ours))
    return out


CPU_CASES = cases(torch.device("cpu"))


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.size}-{c.provider}" for c in CPU_CASES])
def test_tube_mask(benchmark, case):
    benchmark.group = case.group
    benchmark(case.fn)
