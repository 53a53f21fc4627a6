"""The synthetic sample dataset: lists readable and balanced, clips decodable with the right size and
length, deterministic for a seed, idempotent, the VP9 variant."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from internvideo_fast.data import make_sample_dataset, open_video, read_video_list
from internvideo_fast.data.sample_data import render_clip

SMALL = dict(num_classes=3, clips_per_class=2, val_per_class=1, num_frames=12, size=(32, 48), fps=8, seed=4)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("sample_a"), vp9=True, **SMALL)


def test_lists_and_files(small):
    train, val = read_video_list(small.train_list), read_video_list(small.val_list)
    assert len(train) == 6 and len(val) == 3
    assert sorted(r.label for r in train) == [0, 0, 1, 1, 2, 2]
    for record in train + val:
        reader = open_video(record.full_path(small.root))
        assert reader.num_frames == 12 and reader.fps == 8
        assert reader.get_frames([0, 11]).shape == (2, 3, 32, 48)
    vp9_train, _ = small.lists["vp9"]
    assert [r.path.replace(".webm", ".mp4") for r in read_video_list(vp9_train)] == [r.path for r in train]
    assert all(r.path.endswith(".webm") for r in read_video_list(vp9_train))


def test_deterministic_and_idempotent(small, tmp_path):
    other = make_sample_dataset(tmp_path / "b", vp9=True, **SMALL)
    for name in ("train.txt", "val.txt", "train_vp9.txt"):
        assert (small.root / name).read_text() == (other.root / name).read_text()
    for record in read_video_list(small.train_list):
        a = open_video(record.full_path(small.root)).get_frames(range(12))
        b = open_video(record.full_path(other.root)).get_frames(range(12))
        assert torch.equal(a, b)
    stamp = small.train_list.stat().st_mtime_ns
    start = time.perf_counter()
    again = make_sample_dataset(small.root, vp9=True, **SMALL)
    assert time.perf_counter() - start < 0.5 and again.train_list == small.train_list
    assert small.train_list.stat().st_mtime_ns == stamp
    different = make_sample_dataset(tmp_path / "c", **{**SMALL, "seed": 5})
    assert not torch.equal(
        open_video(other.root / "videos/train/c0_000.mp4").get_frames([0]),
        open_video(different.root / "videos/train/c0_000.mp4").get_frames([0]),
    )


def test_render_clip_deterministic_and_moving():
    for label in range(4):
        frames = render_clip(label, 4, 24, (64, 64), np.random.default_rng([0, label]))
        again = render_clip(label, 4, 24, (64, 64), np.random.default_rng([0, label]))
        assert np.array_equal(frames, again) and frames.shape == (24, 64, 64, 3) and frames.dtype == np.uint8
        assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 10  # things move


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_sample_dataset(tmp_path, codecs=("theora",))
    with pytest.raises(ValueError):
        make_sample_dataset(tmp_path, num_classes=1)
