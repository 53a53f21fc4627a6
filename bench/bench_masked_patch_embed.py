"""The masked encoder's input path, forward + backward: the official one (numpy tube mask in the loader,
Conv3d on every tube, position table, `x[~mask]`) against ours (`tube_mask` + `masked_patch_embed`), and
`mae_targets` against the official target (normalize every tube, then `x[mask]`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import Case
from internvideo_fast.layers.constants import IMAGENET_MEAN as MEAN
from internvideo_fast.layers.constants import IMAGENET_STD as STD
from internvideo_fast.layers.embedding import sinusoid_position_table
from internvideo_fast.ops import mae_targets, masked_patch_embed, tube_mask, use_backend
from internvideo_fast.ops.framework.backend import available_backends
from internvideo_fast.ops.mae_targets import mae_targets_ref
from internvideo_fast.ops.tube_mask import tube_mask_official_numpy



def cases(device: torch.device, quick: bool = False) -> list[Case]:
    on_gpu = device.type == "cuda"
    batch = 64 if on_gpu else (1 if quick else 2)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    frames, size, tubelet, patch, dim, ratio = 16, 224, 2, 16, 768, 0.9
    grid = (frames // tubelet, size // patch, size // patch)
    raw = torch.randint(0, 256, (batch, 3, frames, size, size), dtype=torch.uint8, device=device)
    video = ((raw.float() / 255 - torch.tensor(MEAN, device=device)[:, None, None, None])
             / torch.tensor(STD, device=device)[:, None, None, None]).to(dtype)
    weight = (torch.randn(dim, 3, tubelet, patch, patch, device=device) * 0.02).to(dtype).requires_grad_()
    bias = torch.zeros(dim, device=device, dtype=dtype, requires_grad=True)
    pos = sinusoid_position_table(int(np.prod(grid)), dim).to(device, dtype)
    rng = np.random.default_rng(0)
    seed = torch.tensor(0, device=device)
    size_label = f"B={batch},{frames}x{size}x{size},D={dim},r={ratio},{str(dtype)[6:]}"

    def official_embed():
        mask = tube_mask_official_numpy(batch, *grid, ratio, rng).to(device)
        tokens = F.conv3d(video, weight, bias, stride=(tubelet, patch, patch)).flatten(2).transpose(1, 2) + pos
        visible = tokens[~mask].reshape(batch, -1, dim)
        visible.float().square().mean().backward()

    def fused_embed(source, mean=None, std=None):
        def run():
            masks = tube_mask(batch, *grid, ratio, seed=seed)
            visible = masked_patch_embed(source, masks.ids_keep, weight, bias, pos, mean, std)
            visible.float().square().mean().backward()
        return run

    masks = tube_mask(batch, *grid, ratio, seed=1, device=device)
    out = [
        Case("masked_embed_fwd_bwd", size_label, "official", official_embed, baseline=True),
        Case("masked_embed_fwd_bwd", size_label, "fused", fused_embed(video)),
        Case("masked_embed_fwd_bwd", size_label, "fused-uint8", fused_embed(raw, MEAN, STD)),
        Case("mae_targets", size_label, "official", lambda: mae_targets_ref(video, masks.ids_masked, tubelet, patch, mean=MEAN, std=STD),
             baseline=True),
    ]
    targets_bytes = masks.ids_masked.numel() * 3 * tubelet * patch * patch * (video.element_size() + 4)
    for provider in sorted(available_backends("mae_targets", device, has_triton=False) - {"reference"}):
        def targets(provider=provider):
            with use_backend(provider, "mae_targets"):
                return mae_targets(video, masks.ids_masked, tubelet, patch, mean=MEAN, std=STD)

        out.append(Case("mae_targets", size_label, provider, targets, bytes_moved=targets_bytes))
    return out


CPU_CASES = cases(torch.device("cpu"))


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.provider}" for c in CPU_CASES])
def test_masked_patch_embed(benchmark, case):
    benchmark.group = case.group
    benchmark(case.fn)
