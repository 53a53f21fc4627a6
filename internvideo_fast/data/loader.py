"""``DataConfig``, the loader contract and the torch loader.

Every loader (``build_torch_loader`` here, the DALI loader of :mod:`.dali`; :func:`.build.build_loader`
picks one) is a :class:`VideoLoader`, an iterable of batches::

    video          float32 [B, C, T, H, W], normalized
    label          int64   [B]
    index          int64   [B]      record index in the list file (of the replacement, if one was used)
    frame_indices  int64   [B, T]   frame numbers decoded
    view           int64   [B]      view number within its video (0 unless several views)

Several views per video (``repeated_aug`` when training, ``test_clips x test_crops`` when testing) are
flattened into the batch dimension: a batch of ``batch_size`` videos has ``B = batch_size x views`` rows,
consecutive rows of one video sharing ``index`` (evaluation averages the rows of one ``index``).

Sharding (DistributedSampler-like): every epoch the record order is a permutation seeded by
``(seed, epoch)`` (training; identity when testing); rank ``r`` takes positions ``r, r + world_size, ...``.
Training pads the order by wrapping around so every rank has the same number of samples and drops the
last incomplete batch; testing neither pads nor drops, so the shards are disjoint and cover the list.

Exact resume: ``start_step=k`` skips the first ``k`` batches of the epoch without decoding them. Samples
depend only on ``(seed, epoch, index)`` (see :mod:`.dataset`), so the remaining batches equal those of an
uninterrupted pass. ``start_step`` applies to the next pass only; ``set_epoch`` or the end of a pass
resets it. ``len(loader)`` is the number of batches of a whole epoch.

``loader``: ``"torch"`` (torch DataLoader over :class:`~internvideo_fast.data.dataset.VideoDataset`);
``"dali"`` (NVIDIA DALI decoding, :mod:`.dali`: the same samples, GPU decoding on CUDA); ``"auto"``: see
:mod:`.build`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from internvideo_fast.data.dataset import VideoDataset, is_skipped
from internvideo_fast.data.lists import read_video_list, read_video_text_list
from internvideo_fast.data.sampling import DenseSampler, SegmentSampler
from internvideo_fast.data.transforms import build_transform, mean_std

__all__ = ["DataConfig", "VideoLoader", "build_torch_loader", "build_video_dataset", "collate_samples",
           "shard_indices"]

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Everything the loaders need; ``None`` fields take the train/test defaults noted beside them."""

    list_file: str = ""
    root: str | None = None  # None: the list file's directory
    train: bool = True
    sampling: str = "dense"  # dense | segment
    num_frames: int = 16  # dense: frames per clip
    stride: int = 4  # dense: frame stride
    num_segments: int | None = None  # segment: frames per clip (None: num_frames)
    short_video: str = "loop"  # loop | pad | error
    img_size: int = 224
    short_side: int | None = None  # None: no resize when training, img_size when testing
    crop: str | None = None  # multiscale | random_resized | center (None: multiscale when training)
    flip: bool = False  # random horizontal flip when training (not for SSv2-like direction labels)
    normalization: str = "imagenet"  # imagenet | clip (ignored where mean/std are given)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    batch_size: int = 8  # videos per rank and step
    num_workers: int = 0
    repeated_aug: int = 1  # views per video when training (VideoMAE num_sample)
    test_clips: int = 1
    test_crops: int = 1  # 1 | 3
    shuffle: bool | None = None  # None: train
    drop_last: bool | None = None  # None: train
    on_error: str | None = None  # replace | skip | raise (None: replace when training, skip when testing)
    max_retries: int = 10
    decode_timeout_s: float | None = 60.0
    reader: str = "auto"  # auto | torchcodec | pyav
    loader: str = "auto"  # auto | torch | dali
    pin_memory: bool | None = None  # None: pinned when ivf-train feeds a GPU, else not
    # the torch loader's video leaves the workers unnormalized (uint8, a quarter of the bytes to pin and copy)
    # and DevicePrefetcher(normalize=cfg.normalization_constants()) normalizes it on the GPU; ivf-train sets
    # it for its GPU feed (it is not a config key: a consumer without that prefetcher would get raw pixels)
    normalize_on_device: bool = False
    prefetch_factor: int = 2
    text: bool = False  # a video-text list (`path<TAB>caption`): batches carry `caption` (a list of str)
    # token ids per caption (SOT and EOT included) of a video-text list, tokenized by the loader (`tokens`
    # [B, max_text_len]); a longer caption is cut to it, as CLIP's truncate=True, and counted (`captions_cut`)
    max_text_len: int = 77
    extra: dict = field(default_factory=dict)  # room for loader-specific options (DALI)

    def __post_init__(self):
        if self.sampling not in ("dense", "segment"):
            raise ValueError(f"sampling must be 'dense' or 'segment', got {self.sampling!r}")
        if self.loader not in ("auto", "torch", "dali"):
            raise ValueError(f"loader must be 'auto', 'torch' or 'dali', got {self.loader!r}")
        if isinstance(self.max_text_len, bool) or not isinstance(self.max_text_len, int) or self.max_text_len < 2:
            raise ValueError(f"max_text_len must be an int >= 2 (SOT and EOT), got {self.max_text_len!r}")
        if self.mean is not None:
            self.mean = tuple(self.mean)
        if self.std is not None:
            self.std = tuple(self.std)

    @property
    def clip_len(self) -> int:
        return self.num_frames if self.sampling == "dense" else (self.num_segments or self.num_frames)

    def resolved_root(self) -> str:
        return self.root if self.root is not None else str(Path(self.list_file).resolve().parent)

    def build_sampler(self):
        if self.sampling == "dense":
            return DenseSampler(self.num_frames, self.stride, self.train, self.test_clips, self.short_video)
        return SegmentSampler(self.clip_len, self.train, self.test_clips, self.short_video)

    def normalization_constants(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` in [0, 1] units: ``mean`` / ``std`` when given, else ``normalization``'s."""
        mean, std = mean_std(self.normalization)
        return tuple(self.mean or mean), tuple(self.std or std)

    def build_transform(self):
        mean, std = self.normalization_constants()
        return build_transform(
            train=self.train, img_size=self.img_size, short_side=self.short_side,
            crop=self.crop or "multiscale", flip=self.flip, mean=mean, std=std,
            num_sample=self.repeated_aug, test_crops=self.test_crops, normalize=not self.normalize_on_device,
        )


def shard_indices(num_records: int, rank: int, world_size: int, shuffle: bool, pad: bool, seed: int,
                  epoch: int) -> list[int]:
    """This rank's record indices for ``epoch`` (see the module docstring)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if shuffle:
        generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
        order = torch.randperm(num_records, generator=generator).tolist()
    else:
        order = list(range(num_records))
    if pad and num_records > 0:
        total = math.ceil(num_records / world_size) * world_size
        order = (order * math.ceil(total / num_records))[:total]
    return order[rank::world_size]


def collate_samples(samples: list[dict | None]) -> dict:
    """Stacks samples, flattening views into the batch dimension; drops skipped samples (the dataset's skip
    markers, or ``None``), keeping their record indices under ``skipped`` and every sample's
    ``bad_videos`` reports under that key (a list of (path, reason)); ``empty`` when nothing is left."""
    reports, skipped = [], []
    kept = []
    for sample in samples:
        if sample is None:
            continue
        reports.extend(sample.get("bad_videos", ()))
        if is_skipped(sample):
            skipped.append(int(sample["index"]))
        else:
            kept.append(sample)
    if not kept:
        return {"bad_videos": reports, "skipped": skipped, "empty": True}
    videos, labels, indices, frames, views, captions, tokens, cut = [], [], [], [], [], [], [], []
    for sample in kept:
        video, frame_indices = sample["video"], sample["frame_indices"]
        if video.dim() == 4:
            video, frame_indices = video[None], frame_indices[None]
        count = video.shape[0]
        videos.append(video)
        frames.append(frame_indices)
        labels.append(sample["label"].expand(count))
        indices.append(sample["index"].expand(count))
        views.append(torch.arange(count, dtype=torch.int64))
        if "caption" in sample:
            captions.extend([sample["caption"]] * count)
        if "tokens" in sample:
            tokens.append(sample["tokens"].expand(count, -1))
            if sample["caption_cut"]:
                cut.append(int(sample["index"]))
    batch = {"video": torch.cat(videos), "label": torch.cat(labels), "index": torch.cat(indices),
             "frame_indices": torch.cat(frames), "view": torch.cat(views), "bad_videos": reports,
             "skipped": skipped}
    if captions:
        batch["caption"] = captions
    if tokens:
        batch["tokens"], batch["captions_cut"] = torch.cat(tokens), cut
    return batch


class _BatchList(torch.utils.data.Sampler):
    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class VideoLoader:
    """Iterable of batches (see the module docstring); ``bad_videos()`` / ``summary()`` after a pass."""

    def __init__(self, cfg: DataConfig, dataset: VideoDataset, rank: int, world_size: int, seed: int,
                 start_step: int = 0, split: str = "train"):
        self.cfg = cfg
        self.dataset = dataset
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.split = split
        self.epoch = 0
        self.start_step = int(start_step)
        self.shuffle = cfg.train if cfg.shuffle is None else cfg.shuffle
        self.drop_last = cfg.train if cfg.drop_last is None else cfg.drop_last
        self.pad = cfg.train
        self._bad: dict[str, str] = {}
        self._skipped: list[int] = []  # record indices skipped in this loader's passes
        self._batches_seen = 0

    # -- epoch plan -----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start_step = 0

    def indices(self) -> list[int]:
        """This rank's record indices for the current epoch, in order."""
        return shard_indices(len(self.dataset), self.rank, self.world_size, self.shuffle, self.pad, self.seed,
                             self.epoch)

    def batches(self) -> list[list[int]]:
        """This rank's batches of record indices for the current epoch (all of them, from step 0)."""
        order, size = self.indices(), self.cfg.batch_size
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return len(self.batches())

    # -- iteration ------------------------------------------------------------------------------------
    def _data_loader(self, batches):
        workers = self.cfg.num_workers
        options = {"prefetch_factor": self.cfg.prefetch_factor} if workers > 0 else {}
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_BatchList(batches), num_workers=workers, collate_fn=collate_samples,
            pin_memory=bool(self.cfg.pin_memory), **options,
        )

    def __iter__(self):
        batches = self.batches()[self.start_step:]
        self.dataset.set_epoch(self.epoch)
        self.dataset.log_bad = False  # reports are merged and logged here, once per file
        for batch in self._data_loader(batches):
            self._take_reports(batch)
            if batch.pop("empty", False):
                continue
            self._batches_seen += 1
            yield batch
        self.start_step = 0

    def _report(self, path: str, reason: str) -> None:
        """Log a bad file by name, once per loader (and never again after :meth:`remember_bad`)."""
        if path not in self._bad:
            self._bad[path] = reason
            logger.warning("bad video %s (%s); it is %s", path, reason,
                           "replaced" if self.dataset.on_error == "replace" else "skipped")

    def _take_reports(self, batch: dict) -> None:
        for path, reason in batch.pop("bad_videos", ()):
            self._report(path, reason)
        self._skipped.extend(batch.pop("skipped", ()))

    def remember_bad(self, bad: dict[str, str]) -> None:
        """Files an earlier loader (an earlier epoch) already reported: they are replaced or skipped without
        being decoded or reported again."""
        self._bad.update(bad)
        self.dataset.remember_bad(bad)

    def check_labels(self, num_classes: int) -> None:
        """Every record's label must lie in ``[0, num_classes)``: a
        :class:`~internvideo_fast.errors.UserError` naming the list file and line of the first that does
        not, before any batch is made."""
        from internvideo_fast.errors import UserError

        for record in self.dataset.records:
            if not 0 <= record.label < num_classes:
                where = getattr(record, "where", "") or f"{self.cfg.list_file}: {record.path}"
                raise UserError(f"{where}: label {record.label} is outside the model's {num_classes} classes "
                                f"[0, {num_classes})", hint="check the list file, or model_args.num_classes")

    def bad_videos(self) -> dict[str, str]:
        """path -> reason for every bad file met by this loader's passes (all workers)."""
        return dict(self._bad)

    def skipped(self) -> list[int]:
        """Record indices skipped (``on_error="skip"``) by this loader's passes, in the order met."""
        return list(self._skipped)

    def summary(self) -> dict:
        return {"split": self.split, "epoch": self.epoch, "rank": self.rank, "batches": self._batches_seen,
                "bad_videos": len(self._bad), "skipped": len(self._skipped), "files": dict(self._bad)}


def build_video_dataset(cfg: DataConfig, seed: int = 0) -> VideoDataset:
    """The bad-video-proof dataset of ``cfg``'s list file, which every loader plans its samples with."""
    records = read_video_text_list(cfg.list_file) if cfg.text else read_video_list(cfg.list_file)
    on_error = cfg.on_error or ("replace" if cfg.train else "skip")
    return VideoDataset(
        records, cfg.resolved_root(), cfg.build_sampler(), cfg.build_transform(), reader=cfg.reader,
        on_error=on_error, max_retries=cfg.max_retries, decode_timeout_s=cfg.decode_timeout_s, seed=seed,
        log_bad=False, max_text_len=cfg.max_text_len if cfg.text else None,
    )


def build_torch_loader(cfg: DataConfig, split: str = "train", rank: int = 0, world_size: int = 1, seed: int = 0,
                       start_step: int = 0) -> VideoLoader:
    """The torch loader for ``cfg``, whatever ``cfg.loader`` says (:func:`~internvideo_fast.data.build.build_loader`
    chooses between the loaders). ``split`` only names the loader in summaries; ``cfg.train`` selects
    training or testing behaviour."""
    return VideoLoader(cfg, build_video_dataset(cfg, seed), rank, world_size, seed, start_step=start_step,
                       split=split)
