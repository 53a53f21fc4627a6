"""Sampling: dense clips and TSN segments, properties over video lengths (hypothesis), short videos."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from internvideo_fast.data import dense_indices, segment_indices
from internvideo_fast.data.sampling import DenseSampler, SegmentSampler, ShortVideoError


@given(length=st.integers(1, 400), num_frames=st.integers(1, 20), stride=st.integers(1, 6),
       mode=st.sampled_from(["loop", "pad"]), seed=st.integers(0, 2**31))
def test_dense_train(length, num_frames, stride, mode, seed):
    generator = torch.Generator().manual_seed(seed)
    idx = dense_indices(length, num_frames, stride, train=True, short_video=mode, generator=generator)
    assert idx.dtype == torch.int64 and idx.shape == (num_frames,)
    assert int(idx.min()) >= 0 and int(idx.max()) < length
    span = (num_frames - 1) * stride + 1
    if length >= span:
        assert torch.all(idx.diff() == stride)
    elif mode == "pad":
        assert torch.all(idx.diff() >= 0) and int(idx[-1]) == length - 1
    else:
        assert torch.equal(idx, (torch.arange(num_frames) * stride) % length)
    again = dense_indices(length, num_frames, stride, train=True, short_video=mode,
                          generator=torch.Generator().manual_seed(seed))
    assert torch.equal(idx, again)


@given(length=st.integers(1, 400), clips=st.integers(1, 7), num_frames=st.integers(1, 16), stride=st.integers(1, 4))
def test_dense_test_clips(length, clips, num_frames, stride):
    idx = dense_indices(length, num_frames, stride, train=False, test_clips=clips)
    assert idx.shape == (clips, num_frames) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < length
    span = (num_frames - 1) * stride + 1
    if length >= span:
        starts = idx[:, 0]
        assert torch.all(starts.diff() >= 0)
        if clips > 1:
            assert int(starts[0]) == 0 and int(starts[-1]) == length - span  # evenly spread over the video
        else:
            assert int(starts[0]) == (length - span) // 2


def test_dense_start_covers_range():
    starts = {int(dense_indices(20, 4, 4, generator=torch.Generator().manual_seed(s))[0]) for s in range(300)}
    assert starts == set(range(20 - 13 + 1))


@given(length=st.integers(1, 500), segments=st.integers(1, 16), train=st.booleans(), seed=st.integers(0, 2**31),
       mode=st.sampled_from(["loop", "pad"]))
def test_segment(length, segments, train, seed, mode):
    generator = torch.Generator().manual_seed(seed)
    idx = segment_indices(length, segments, train=train, short_video=mode, generator=generator)
    assert idx.shape == (segments,) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < length
    if length >= segments:
        seg = length / segments
        lower = torch.floor(torch.arange(segments) * seg).long()
        upper = torch.ceil((torch.arange(segments) + 1) * seg).long()
        assert torch.all(idx >= lower) and torch.all(idx < upper)
        assert torch.all(idx.diff() >= 0)
        if length % segments == 0:
            assert torch.all(idx.diff() > 0)


def test_segment_test_middle_and_clips():
    assert segment_indices(80, 8, train=False).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    multi = segment_indices(80, 8, train=False, test_clips=2)
    assert multi.shape == (2, 8) and multi[:, 0].tolist() == [2, 7]


def test_short_video_modes():
    assert dense_indices(5, 4, 2, short_video="loop", train=False).tolist() == [[0, 2, 4, 1]]
    assert dense_indices(5, 4, 2, short_video="pad", train=False).tolist() == [[0, 2, 4, 4]]
    with pytest.raises(ShortVideoError):
        dense_indices(5, 4, 2, short_video="error")
    assert segment_indices(3, 5, short_video="loop").tolist() == [0, 1, 2, 0, 1]
    assert segment_indices(3, 5, short_video="pad").tolist() == [0, 1, 2, 2, 2]
    with pytest.raises(ShortVideoError):
        segment_indices(3, 5, short_video="error")
    with pytest.raises(ValueError):
        dense_indices(0, 4, 2)
    with pytest.raises(ValueError):
        dense_indices(10, 4, 2, short_video="wrap")


def test_sampler_objects():
    assert DenseSampler(8, 2, train=False, test_clips=3)(100).shape == (3, 8)
    assert SegmentSampler(8, train=True)(100, torch.Generator().manual_seed(0)).shape == (8,)
    assert DenseSampler(8, 2).clip_len == 8 and SegmentSampler(6).clip_len == 6
