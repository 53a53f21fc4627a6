"""``VideoDataset``: list records -> decoded, sampled and augmented clips, robust to bad files.

``dataset[i]`` returns a dict:

- ``video``: float32 ``[C, T, H, W]``; with several views (repeated augmentation when training, test clips
  x test crops when testing) ``[V, C, T, H, W]``, clip-major (view ``v`` is clip ``v // crops``, crop
  ``v % crops``);
- ``label``: int64 scalar, ``index``: int64 scalar (the record actually returned, see below);
- ``frame_indices``: int64 ``[T]`` (or ``[V, T]``), the frame numbers decoded;
- video-text records: ``caption`` (str) and, with ``max_text_len``, ``tokens`` (int64 ``[max_text_len]``,
  CLIP ids, zero padding) and ``caption_cut`` (the caption was longer and is cut to ``max_text_len``);
- ``bad_videos``: a list of ``(path, reason)`` for files found bad while producing this sample (usually
  empty); the loader collects these from every worker into one summary and removes the key from batches.

Bad files (missing, empty, unreadable, truncated, too short with ``short_video="error"``, decode timeout)
never crash an epoch. ``on_error``:

- ``"replace"`` (training default): another record is drawn, deterministically from
  ``(seed, epoch, index, attempt)``, up to ``max_retries`` decode attempts; the returned ``index`` and
  ``label`` are those of the replacement;
- ``"skip"`` (evaluation default): ``dataset[i]`` returns a skip marker, ``{"skipped": True, "index",
  "bad_videos"}`` (:func:`is_skipped`), which the loader's collate drops after taking its report and
  index, so the loader counts and names every skipped video;
- ``"raise"``: a :class:`~internvideo_fast.data.decode.DecodeError` naming the file.

Each bad file is logged once (``logging.warning``) per process and remembered, so it is never decoded
again in that process. With DataLoader workers each worker keeps its own memory and counts (a worker may
meet a file another worker already found bad); the loader merges the per-sample reports in the main
process, so ``VideoLoader.bad_videos()`` is exact and logs each file once, while
``VideoDataset.bad_videos()`` / ``summary()`` describe only the calling process (exact with
``num_workers=0``).

All randomness (frame indices, crops, flips, replacements) comes from a generator seeded per sample from
``(seed, epoch, index)``, so a sample is the same whichever worker makes it, and a resumed run sees the
samples of the uninterrupted one.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import torch

from internvideo_fast.data.decode import DecodeError, read_clip
from internvideo_fast.data.lists import VideoRecord
from internvideo_fast.data.sampling import ShortVideoError

__all__ = ["VideoDataset", "ON_ERROR_MODES", "is_skipped", "sample_seed"]

logger = logging.getLogger(__name__)
ON_ERROR_MODES = ("replace", "skip", "raise")
_MASK = (1 << 63) - 1
_U64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int, attempt: int = 0) -> int:
    """A 63-bit seed for one sample draw (splitmix64 of the packed arguments)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + attempt) & _U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
    return (x ^ (x >> 31)) & _MASK


def is_skipped(sample) -> bool:
    """Whether ``dataset[i]`` is the marker of a skipped (bad) video rather than a sample."""
    return isinstance(sample, dict) and sample.get("skipped", False) is True


class VideoDataset(torch.utils.data.Dataset):
    """See the module docstring. ``sampler(num_video_frames, generator) -> int64 [T] or [clips, T]``
    (:class:`~internvideo_fast.data.sampling.DenseSampler` / ``SegmentSampler``); ``transform(clip [T, C, H,
    W] uint8, generator) -> float32 [V, C, T, H, W]`` (:class:`~internvideo_fast.data.transforms.VideoTransform`)."""

    def __init__(self, records: Sequence[VideoRecord], root: str | os.PathLike | None,
                 sampler: Callable, transform: Callable, reader: str = "auto", on_error: str = "replace",
                 max_retries: int = 10, decode_timeout_s: float | None = 60.0, seed: int = 0,
                 log_bad: bool = True, max_text_len: int | None = None):
        if on_error not in ON_ERROR_MODES:
            raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
        self.records = list(records)
        self.root = None if root is None else os.fspath(root)
        self.sampler = sampler
        self.transform = transform
        self.reader = reader
        self.on_error = on_error
        self.max_retries = int(max_retries)
        self.decode_timeout_s = decode_timeout_s
        self.seed = int(seed)
        self.epoch = 0
        self.log_bad = log_bad
        self.max_text_len = max_text_len
        self._bad: dict[str, str] = {}
        self._replaced = 0
        self._skipped = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- bookkeeping ---------------------------------------------------------------------------------
    def bad_videos(self) -> dict[str, str]:
        """path -> reason for every bad file this process has met."""
        return dict(self._bad)

    def summary(self) -> dict:
        return {"bad_videos": len(self._bad), "replaced": self._replaced, "skipped": self._skipped,
                "files": dict(self._bad)}

    def remember_bad(self, bad: dict[str, str]) -> None:
        """Files known bad (an earlier epoch's loader met them): never decoded, never reported again."""
        self._bad.update(bad)

    def _mark_bad(self, path: str, error: BaseException) -> tuple[str, str]:
        reason = f"{type(error).__name__}: {error}"
        if path not in self._bad:
            self._bad[path] = reason
            if self.log_bad:
                logger.warning("bad video %s (%s); it will be %s", path, reason,
                               "replaced" if self.on_error == "replace" else "skipped")
        return path, reason

    # -- loading -------------------------------------------------------------------------------------
    def load(self, index: int, generator: torch.Generator) -> dict:
        """Decodes and transforms record ``index`` (raises on a bad file)."""
        record = self.records[index]
        path = record.full_path(self.root)
        frames, indices, _ = read_clip(path, lambda n: self.sampler(n, generator), backend=self.reader,
                                       timeout_s=self.decode_timeout_s)
        if indices.dim() == 1:
            frames, indices = frames[None], indices[None]
        views, view_indices = [], []
        for clip, clip_indices in zip(frames, indices):
            out = self.transform(clip, generator)
            if out.dim() == 4:
                out = out[None]
            views.append(out)
            view_indices.append(clip_indices.expand(out.shape[0], -1))
        video, frame_indices = torch.cat(views), torch.cat(view_indices)
        if video.shape[0] == 1:
            video, frame_indices = video[0], frame_indices[0]
        sample = {"video": video, "label": torch.tensor(record.label, dtype=torch.int64),
                  "index": torch.tensor(index, dtype=torch.int64), "frame_indices": frame_indices.to(torch.int64)}
        if hasattr(record, "caption"):  # video-text lists
            sample["caption"] = record.caption
            if self.max_text_len is not None:
                from internvideo_fast.models.tokenizer import tokenize_captions

                tokens, cut = tokenize_captions([record.caption], self.max_text_len)
                sample["tokens"], sample["caption_cut"] = tokens[0], bool(cut)
        return sample

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        reports: list[tuple[str, str]] = []
        candidate, attempts, draws = index, 0, 0
        while True:
            path = self.records[candidate].full_path(self.root)
            if path not in self._bad:
                generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index, draws))
                attempts += 1
                try:
                    sample = self.load(candidate, generator)
                    if candidate != index:
                        self._replaced += 1
                    sample["bad_videos"] = reports
                    return sample
                except (DecodeError, ShortVideoError, OSError, IndexError, ValueError, RuntimeError) as error:
                    reports.append(self._mark_bad(path, error))
                    if self.on_error == "raise":
                        raise DecodeError(f"bad video {path}: {type(error).__name__}: {error}") from error
            elif self.on_error == "raise":
                raise DecodeError(f"bad video {path}: {self._bad[path]}")
            if self.on_error == "skip":
                self._skipped += 1
                return {"skipped": True, "index": torch.tensor(index, dtype=torch.int64),
                        "bad_videos": reports}
            draws += 1
            if attempts > self.max_retries or draws > 100 * (self.max_retries + 1) or len(self._bad) >= len(self):
                raise RuntimeError(
                    f"no readable replacement for sample {index} after {attempts} decode attempts "
                    f"({len(self._bad)} of {len(self)} files bad so far; last: {path}: {self._bad.get(path)})"
                )
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index, 1_000_000 + draws))
            candidate = int(torch.randint(0, len(self), (1,), generator=generator).item())
