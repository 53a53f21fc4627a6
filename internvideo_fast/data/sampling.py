"""Frame index sampling: dense clips (VideoMAE on Kinetics) and TSN segments (SSv2, UniFormerV2).

Both work on frame numbers ``0 .. num_video_frames-1`` (the exact counts of :mod:`.decode`) and return the
int64 indices they chose, so the loaders (torch and DALI) can report them with each sample.

Dense (``num_frames`` frames ``stride`` apart, span ``(num_frames - 1) * stride + 1``):

- training: one clip, start uniform in ``[0, L - span]`` -> ``[num_frames]``;
- testing: ``test_clips`` clips with starts evenly spaced over ``[0, L - span]`` (the first at 0, the last
  at ``L - span``; one clip: the centred one) -> ``[test_clips, num_frames]``.

Segment (TSN): the video is cut into ``num_segments`` equal segments of length ``L / num_segments``; one
frame per segment, at a uniform random offset (training) or the middle (testing) -> ``[num_segments]``
(testing with ``test_clips > 1``: clip ``k`` takes offset ``(k + 0.5) / test_clips`` of every segment).

Short videos (``L < span`` for dense, ``L < num_segments`` for segments), ``short_video``:

- ``"loop"``: indices wrap around (``i mod L``);
- ``"pad"``: indices past the end repeat the last frame (``min(i, L - 1)``);
- ``"error"``: raise :class:`ShortVideoError` (the dataset then treats the file as bad).

Randomness comes only from the ``generator`` argument (a ``torch.Generator``), so a sample's indices are a
function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ShortVideoError", "dense_indices", "segment_indices", "DenseSampler", "SegmentSampler",
           "SHORT_VIDEO_MODES"]

SHORT_VIDEO_MODES = ("loop", "pad", "error")


class ShortVideoError(ValueError):
    """A video shorter than the clip span when ``short_video="error"``."""


def _check(num_video_frames: int, short_video: str) -> None:
    if num_video_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    if short_video not in SHORT_VIDEO_MODES:
        raise ValueError(f"short_video must be one of {SHORT_VIDEO_MODES}, got {short_video!r}")


def _fit(indices: torch.Tensor, num_video_frames: int, short_video: str) -> torch.Tensor:
    if short_video == "loop":
        return indices.remainder(num_video_frames)
    return indices.clamp(max=num_video_frames - 1)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (1,), generator=generator).item())


def dense_indices(num_video_frames: int, num_frames: int = 16, stride: int = 4, train: bool = True,
                  test_clips: int = 1, short_video: str = "loop",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Dense clip indices: int64 ``[num_frames]`` (training) or ``[test_clips, num_frames]`` (testing)."""
    _check(num_video_frames, short_video)
    if num_frames < 1 or stride < 1 or test_clips < 1:
        raise ValueError(f"num_frames, stride and test_clips must be >= 1, got {num_frames}, {stride}, {test_clips}")
    span = (num_frames - 1) * stride + 1
    offsets = torch.arange(num_frames, dtype=torch.int64) * stride
    slack = num_video_frames - span
    if slack < 0:
        if short_video == "error":
            raise ShortVideoError(f"video has {num_video_frames} frames, the clip spans {span}")
        starts = torch.zeros(1 if train else test_clips, dtype=torch.int64)
    elif train:
        starts = torch.tensor([_randint(slack, generator)], dtype=torch.int64)
    elif test_clips == 1:
        starts = torch.tensor([slack // 2], dtype=torch.int64)
    else:
        starts = torch.tensor([(k * slack) // (test_clips - 1) for k in range(test_clips)], dtype=torch.int64)
    indices = _fit(starts[:, None] + offsets[None, :], num_video_frames, short_video)
    return indices[0] if train else indices


def segment_indices(num_video_frames: int, num_segments: int = 8, train: bool = True, test_clips: int = 1,
                    short_video: str = "loop", generator: torch.Generator | None = None) -> torch.Tensor:
    """TSN segment indices: int64 ``[num_segments]`` (training, or testing with one clip) or
    ``[test_clips, num_segments]`` (testing with several clips)."""
    _check(num_video_frames, short_video)
    if num_segments < 1 or test_clips < 1:
        raise ValueError(f"num_segments and test_clips must be >= 1, got {num_segments}, {test_clips}")
    if num_video_frames < num_segments:
        if short_video == "error":
            raise ShortVideoError(f"video has {num_video_frames} frames, fewer than {num_segments} segments")
        base = _fit(torch.arange(num_segments, dtype=torch.int64), num_video_frames, short_video)
        return base if train or test_clips == 1 else base.expand(test_clips, -1).clone()
    length = num_video_frames / num_segments
    starts = torch.arange(num_segments, dtype=torch.float64) * length
    if train:
        offsets = torch.rand(num_segments, generator=generator, dtype=torch.float64) * length
        indices = (starts + offsets).floor().to(torch.int64)
    else:
        fractions = (torch.arange(test_clips, dtype=torch.float64) + 0.5) / test_clips
        indices = (starts[None, :] + fractions[:, None] * length).floor().to(torch.int64)
        if test_clips == 1:
            indices = indices[0]
    return indices.clamp(0, num_video_frames - 1)


@dataclass
class DenseSampler:
    """``sampler(num_video_frames, generator)`` -> indices (see :func:`dense_indices`)."""

    num_frames: int = 16
    stride: int = 4
    train: bool = True
    test_clips: int = 1
    short_video: str = "loop"

    @property
    def clip_len(self) -> int:
        return self.num_frames

    @property
    def num_clips(self) -> int:
        return 1 if self.train else self.test_clips

    def __call__(self, num_video_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return dense_indices(num_video_frames, self.num_frames, self.stride, self.train, self.test_clips,
                             self.short_video, generator)


@dataclass
class SegmentSampler:
    """``sampler(num_video_frames, generator)`` -> indices (see :func:`segment_indices`)."""

    num_segments: int = 8
    train: bool = True
    test_clips: int = 1
    short_video: str = "loop"

    @property
    def clip_len(self) -> int:
        return self.num_segments

    @property
    def num_clips(self) -> int:
        return 1 if self.train else self.test_clips

    def __call__(self, num_video_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return segment_indices(num_video_frames, self.num_segments, self.train, self.test_clips,
                               self.short_video, generator)
