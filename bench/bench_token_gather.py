"""gather_tokens / scatter_tokens: our kernels against the official boolean index (`x[~mask]`, which syncs
with the host), torch.gather / scatter, and a plain device copy of the same bytes (the bandwidth ceiling)."""

from __future__ import annotations

import pytest
import torch

from common import Case
from internvideo_fast.ops import gather_tokens, scatter_tokens, tube_mask, use_backend
from internvideo_fast.ops.framework.backend import available_backends


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    on_gpu = device.type == "cuda"
    batch = 64 if on_gpu else (2 if quick else 8)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    frames, height, width, dim, ratio = 8, 14, 14, 768, 0.9
    num_tokens = frames * height * width
    ids_keep, _, mask = tube_mask(batch, frames, height, width, ratio, seed=0, device=device)
    tokens = torch.randn(batch, num_tokens, dim, device=device, dtype=dtype)
    visible = tokens[~mask].reshape(batch, -1, dim)
    moved = visible.numel() * visible.element_size()
    size = f"B={batch},N={num_tokens},n={visible.shape[1]},D={dim},{str(dtype)[6:]}"
    out = [
        Case("gather_tokens", size, "official-bool-index", lambda: tokens[~mask].reshape(batch, -1, dim), baseline=True,
             bytes_moved=2 * moved),
        Case("gather_tokens", size, "device-copy", lambda: visible.clone(), bytes_moved=2 * moved),
        Case("scatter_tokens", size, "reference", lambda: torch.zeros_like(tokens).scatter(
            1, ids_keep[..., None].expand(-1, -1, dim), visible), baseline=True, bytes_moved=2 * moved),
    ]
    for provider in sorted(available_backends("gather_tokens", device, has_triton=False)):
        def gather(provider=provider):
            with use_backend(provider, "token_gather"):
                return gather_tokens(tokens, ids_keep, check_ids=False)

        def scatter(provider=provider):
            with use_backend(provider, "token_gather"):
                return scatter_tokens(visible, ids_keep, num_tokens, check_ids=False)

        out.append(Case("gather_tokens", size, provider, gather, bytes_moved=2 * moved))
        if provider != "reference":
            out.append(Case("scatter_tokens", size, provider, scatter, bytes_moved=2 * moved))
    return out


CPU_CASES = cases(torch.device("cpu"))


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.provider}" for c in CPU_CASES])
def test_token_gather(benchmark, case):
    benchmark.group = case.group
    benchmark(case.fn)
