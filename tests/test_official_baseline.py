"""The benchmark's official-code baseline (bench/official_videomae.py) computes what our VideoMAE pretraining
model computes: the same loss and gradients for the same weights, clips and tube mask."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from internvideo_fast.models import create_model
from internvideo_fast.ops.tube_mask import TubeMask, tube_mask_official_numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from official_videomae import (  # noqa: E402
    OfficialPretrainStep, get_sinusoid_encoding_table, official_from, official_loss,
)


def _masks(bool_mask: torch.Tensor) -> TubeMask:
    B = bool_mask.shape[0]
    positions = torch.arange(bool_mask.shape[1]).expand(B, -1)
    ids_keep = positions[~bool_mask].reshape(B, -1)
    ids_masked = positions[bool_mask].reshape(B, -1)
    return TubeMask(ids_keep, ids_masked, bool_mask)


@pytest.mark.parametrize("size, frames, ratio", [(32, 4, 0.75), (48, 6, 0.9)])
def test_official_loss_and_gradients_equal_ours(size, frames, ratio):
    torch.manual_seed(0)
    ours = create_model("videomae_pretrain_vit_micro_patch16", img_size=size, num_frames=frames)
    official = official_from(ours)
    video = torch.randn(3, 3, frames, size, size)
    T, H, W = ours.encoder.grid
    bool_mask = tube_mask_official_numpy(3, T, H, W, ratio, np.random.default_rng(1))
    assert 0 < bool_mask.sum() < bool_mask.numel()

    loss = ours(video, masks=_masks(bool_mask))["loss"]
    reference = official_loss(official, video, bool_mask)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    loss.backward()
    reference.backward()
    grads = {name: p.grad for name, p in official.named_parameters()}
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_the_sinusoid_table_is_the_models():
    from internvideo_fast.layers.embedding import sinusoid_position_table

    torch.testing.assert_close(get_sinusoid_encoding_table(50, 24), sinusoid_position_table(50, 24))


def test_the_official_step_trains_with_a_new_host_mask_each_step():
    torch.manual_seed(0)
    official = official_from(create_model("videomae_pretrain_vit_micro_patch16", img_size=32, num_frames=4))
    optimizer = torch.optim.AdamW(official.parameters(), lr=1e-3)
    step = OfficialPretrainStep(official, optimizer, mask_ratio=0.75, clip_grad=1.0)
    video = torch.randn(2, 3, 4, 32, 32)
    before = official.decoder.head.weight.detach().clone()
    losses = [step(video) for _ in range(3)]
    assert all(isinstance(loss, float) and np.isfinite(loss) for loss in losses)
    assert len(set(losses)) == 3  # same clip, new masks and weights each step
    assert not torch.equal(official.decoder.head.weight, before)
