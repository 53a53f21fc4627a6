"""Transforms: output layout and sizes for every crop mode, normalization values, flips, the multi-scale
crop's sizes, three-crop positions, repeated augmentation and determinism under a seeded generator."""

from __future__ import annotations

import pytest
import torch

from internvideo_fast.data import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, build_transform
from internvideo_fast.data.transforms import (
    Box, center_crop, hflip, multi_scale_crop_box, normalize, random_resized_crop_box, resize_short_side,
    three_crop, three_crop_boxes,
)


def clip(t=4, h=61, w=97, dtype=torch.uint8):
    return torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8).to(dtype)


@pytest.mark.parametrize("crop", ["multiscale", "random_resized", "center"])
@pytest.mark.parametrize("short_side", [None, 40])
def test_train_shapes(crop, short_side):
    transform = build_transform(train=True, img_size=32, short_side=short_side, crop=crop, flip=True, num_sample=2)
    out = transform(clip(), torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 4, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("crops", [1, 3])
def test_test_shapes(crops):
    transform = build_transform(train=False, img_size=32, short_side=36, test_crops=crops)
    out = transform(clip(h=50, w=90))
    assert out.shape == (crops, 3, 4, 32, 32)


def test_normalization_values():
    frames = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    for mean, std, name in ((IMAGENET_MEAN, IMAGENET_STD, "imagenet"), (CLIP_MEAN, CLIP_STD, "clip")):
        out = build_transform(train=False, img_size=8, normalization=name)(frames)[0]
        expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
        torch.testing.assert_close(out[:, 0, 0, 0], expected.float(), rtol=1e-6, atol=1e-6)
        assert out.shape == (3, 2, 8, 8)
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073) and CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_normalize_layout():
    x = clip(t=3, h=5, w=6)
    out = normalize(x, (0, 0, 0), (1, 1, 1))
    torch.testing.assert_close(out * 255, x.permute(1, 0, 2, 3).float())


def test_flip_matches_hflip():
    x = clip(h=40, w=40)
    plain = build_transform(train=True, img_size=40, crop="center", flip=False)
    flipping = build_transform(train=True, img_size=40, crop="center", flip=True, num_sample=16)
    base = plain(x)[0]
    views = flipping(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(v, base.flip(-1)) for v in views]
    same = [torch.equal(v, base) for v in views]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    assert torch.equal(hflip(x), x.flip(-1))


def test_multiscale_crop_sizes():
    allowed = {int(60 * s) for s in (1, 0.875, 0.75, 0.66)}
    seen = set()
    for seed in range(200):
        box = multi_scale_crop_box(60, 80, 224, generator=torch.Generator().manual_seed(seed))
        assert box.height in allowed and box.width in allowed
        assert abs(sorted(allowed).index(box.height) - sorted(allowed).index(box.width)) <= 1
        assert 0 <= box.top <= 60 - box.height and 0 <= box.left <= 80 - box.width
        seen.add((box.height, box.width))
    assert len(seen) == 10  # 4 + 2 * 3 pairs at most one scale step apart
    snapped = multi_scale_crop_box(256, 340, 224, scales=(0.875,), generator=torch.Generator().manual_seed(0))
    assert snapped.height == 224 and snapped.width == 224  # int(256 * .875) = 224


def test_random_resized_crop_box():
    for seed in range(100):
        box = random_resized_crop_box(50, 70, generator=torch.Generator().manual_seed(seed))
        assert 0 < box.height <= 50 and 0 < box.width <= 70
        assert box.top + box.height <= 50 and box.left + box.width <= 70


def test_three_crop_and_center():
    assert three_crop_boxes(40, 100, 40) == [Box(0, 0, 40, 40), Box(0, 30, 40, 40), Box(0, 60, 40, 40)]
    assert three_crop_boxes(100, 40, 40) == [Box(0, 0, 40, 40), Box(30, 0, 40, 40), Box(60, 0, 40, 40)]
    x = clip(h=40, w=100)
    assert [c.shape[-1] for c in three_crop(x, 40)] == [40, 40, 40]
    assert torch.equal(center_crop(x, 40), x[..., 30:70])


def test_resize_short_side():
    assert resize_short_side(clip(h=61, w=97), 32).shape[-2:] == (32, 51)
    assert resize_short_side(clip(h=97, w=61), 32).shape[-2:] == (51, 32)
    assert resize_short_side(clip(h=61, w=97), 32).dtype == torch.uint8


def test_deterministic_and_float_input():
    x = clip()
    transform = build_transform(train=True, img_size=32, crop="random_resized", flip=True, num_sample=3)
    a = transform(x, torch.Generator().manual_seed(5))
    b = transform(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # independent views
    test = build_transform(train=False, img_size=32)
    torch.testing.assert_close(test(x), test(x.float()), atol=0.05, rtol=0)  # uint8 rounding only


def test_bad_arguments():
    with pytest.raises(ValueError):
        build_transform(crop="ten_crop")
    with pytest.raises(ValueError):
        build_transform(test_crops=5)
    with pytest.raises(ValueError):
        build_transform()(torch.zeros(3, 4, 8, 8))


@pytest.mark.parametrize("train,crop,test_crops", [(True, "multiscale", 1), (True, "random_resized", 1),
                                                  (False, "center", 3)])
def test_unnormalized_views_normalize_to_the_same_values(train, crop, test_crops):
    """normalize=False leaves uint8 views; normalize_video of them is the normalized transform's output,
    bit for bit (the GPU feed of ivf-train relies on it)."""
    from internvideo_fast.data.transforms import normalize_video

    clip = torch.randint(0, 256, (5, 3, 37, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    kwargs = dict(train=train, img_size=28, crop=crop, flip=True, num_sample=2, test_crops=test_crops,
                  short_side=32)
    normalized = build_transform(**kwargs)(clip, torch.Generator().manual_seed(7))
    raw = build_transform(**kwargs, normalize=False)(clip, torch.Generator().manual_seed(7))
    assert raw.dtype == torch.uint8
    assert torch.equal(normalize_video(raw, IMAGENET_MEAN, IMAGENET_STD), normalized)
    with pytest.raises(ValueError, match="normalize=False takes uint8 clips"):
        build_transform(**kwargs, normalize=False)(clip.float())
