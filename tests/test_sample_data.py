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
        changed = np.abs(frames[-1].astype(int) - frames[0].astype(int)).max(axis=-1) > 20
        assert 0.05 < changed.mean() < 0.6, changed.mean()  # the objects move over a still background


def test_render_clip_is_smooth_away_from_edges():
    """What a masked autoencoder can learn: neighbouring pixels differ by a few levels except at the
    objects' edges (a noise texture differs by about ten everywhere)."""
    for label in range(4):
        frames = render_clip(label, 4, 16, (64, 64), np.random.default_rng([1, label]), speed=(2.5, 3.5),
                             target_side=(24, 32)).astype(int)
        across = np.abs(np.diff(frames, axis=2)).max(axis=-1)
        down = np.abs(np.diff(frames, axis=1)).max(axis=-1)
        assert np.median(across) <= 4 and np.median(down) <= 4
        assert (across > 40).mean() > 0.005  # and the edges are sharp


def test_the_target_moves_in_its_class_direction():
    """The outlined square (its dark outline: the darkest pixels of a frame) travels along angle
    2 pi label / num_classes in image axes (x right, y down)."""
    for label, (dy, dx) in enumerate([(0, 1), (1, 0), (0, -1), (-1, 0)]):
        frames = render_clip(label, 4, 16, (64, 64), np.random.default_rng([2, label]), speed=(2.5, 3.5),
                             target_side=(24, 32))
        def outline_centre(frame):
            ys, xs = np.nonzero(frame.max(axis=-1) == 0)
            return np.array([ys.mean(), xs.mean()])
        motion = outline_centre(frames[-1]) - outline_centre(frames[0])
        assert motion @ np.array([dy, dx]) > 0.8 * np.linalg.norm(motion) > 10, (label, motion)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_sample_dataset(tmp_path, codecs=("theora",))
    with pytest.raises(ValueError):
        make_sample_dataset(tmp_path, num_classes=1)
