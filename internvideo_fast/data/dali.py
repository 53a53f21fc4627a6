"""NVIDIA DALI loader: the same batches as the torch loader, decoded (and augmented) by DALI.

``build_dali_loader(cfg, split, rank, world_size, seed, start_step)`` returns a :class:`DaliVideoLoader`, a
:class:`~internvideo_fast.data.loader.VideoLoader` (same epoch plan, sharding, ``start_step`` resume,
``len``, ``bad_videos()``/``summary()``) whose batches follow the contract of :mod:`.loader`::

    video float32 [B, C, T, H, W] normalized (CUDA with a GPU pipeline, CPU with device_id=None)
    label, index, view int64 [B]; frame_indices int64 [B, T]   (CPU tensors, as the torch loader)
    video-text lists: caption (list of str), tokens int64 [B, max_text_len], captions_cut (record indices)

Two DALI decoders, chosen by ``cfg.extra["dali_decoder"]``:

- ``"frames"`` (default, dense and segment sampling, multi-clip / multi-crop testing): Python plans every
  sample exactly as :class:`~internvideo_fast.data.dataset.VideoDataset` does (the same per-sample
  generator seeded from ``(seed, epoch, index, attempt)``, the same samplers, the same crop boxes and flips,
  the same replacement of bad records), and feeds DALI through ``fn.external_source``: the encoded file,
  the frame numbers, the crop box and the flip of each output row. ``fn.decoders.video(frames=...)``
  decodes exactly those frames (``device="mixed"``: NVDEC; ``device="cpu"``: libavcodec, VP8/VP9/MJPEG only
  in DALI 2.4), ``fn.resize`` crops + resizes (antialiased linear, as the torch path) and
  ``fn.crop_mirror_normalize`` flips, normalizes and lays out ``CFHW``. Batches leave through
  ``DALIGenericIterator``. Frame numbers are explicit, so the returned ones are the requested ones (the
  decoder is built with ``pad_mode="none"``, so it raises on a frame it cannot produce: DALI 2.4's default,
  ``"constant"``, silently returns black frames past the end, even with ``frames=``); short videos are
  looped / padded by our samplers, as in the torch loader.
  One DALI sample is one output row (clip x crop / repeated view); rows of one video decode the file again.
- ``"reader"`` (GPU only, dense sampling, training): the legacy ``fn.readers.video`` (NVDEC, CFR and 4:2:0
  only) reading a DALI ``file_list`` (``path label`` lines, written from our list file after
  pre-validation), sharded with ``shard_id``/``num_shards``, ``pad_last_batch``, ``random_shuffle`` and
  ``seed``, ``pad_sequences=False`` (so no zero frames), ``enable_frame_num="sequence"``: the returned frame
  numbers are checked to be ``start + stride * arange(T)`` and reported as ``frame_indices``. Its clip
  starts come from DALI's own generator, so its samples are not those of the torch loader (same
  distribution, not the same draws); crops are ``fn.random_resized_crop`` (or multi-scale-like via
  ``fn.crop`` with random anchors), flips ``fn.random.coin_flip``.

Bad files. Before the first pass every listed file is probed once with our own decoders (open, count the
frames, decode the first and the last frame, bounded by ``decode_timeout_s``; on a CPU pipeline also the
codec must be one that DALI decodes on the CPU). Missing, empty, random-bytes, truncated or undecodable
files, and videos too short with ``short_video="error"``, are reported once by name (``logging.warning``
and ``bad_videos()``) and never reach DALI; they are replaced (training) or skipped (testing) exactly as
in the torch dataset; skipped record indices are kept (``skipped()``), so an evaluation counts and names
every video it could not score. If DALI still fails on a batch (a file NVDEC cannot decode, a frame past the
end), the loader logs one line naming the batch's files, DALI's operator and the cause (once per files and
cause; every event is kept in ``fallbacks``), decodes that batch with the torch dataset instead (same
samples; that dataset marks a culprit it cannot decode bad) and a new pipeline takes the rest of the pass,
so an epoch never crashes on a file.

Options in ``cfg.extra``: ``dali_decoder`` ("frames" | "reader"), ``dali_device`` ("gpu" | "cpu";
default gpu when CUDA is available), ``dali_threads`` (CPU threads, default 2), ``dali_prefetch``
(default 2), ``device_id`` (default: the current CUDA device).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import deque

import numpy as np
import torch

from internvideo_fast.data.dataset import VideoDataset, sample_seed
from internvideo_fast.data.decode import DecodeError, open_video, run_with_timeout
from internvideo_fast.data.loader import DataConfig, VideoLoader, build_video_dataset, collate_samples
from internvideo_fast.data.sampling import ShortVideoError
from internvideo_fast.models.tokenizer import tokenize_captions

__all__ = ["dali_available", "dali_import_error", "dali_error_summary", "build_dali_loader", "DaliVideoLoader", "probe_video", "write_dali_file_list",
           "CPU_CODECS"]

logger = logging.getLogger(__name__)
CPU_CODECS = ("vp8", "vp9", "mjpeg")
_PROBE_ERRORS = (DecodeError, ShortVideoError, OSError, IndexError, ValueError, RuntimeError)


def dali_import_error() -> str | None:
    """None when ``nvidia.dali`` imports, else why not in one line (not installed, or a broken install)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as error:  # ImportError, or a broken install (a missing library, a wrong Python)
        return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    return None


def dali_available() -> bool:
    return dali_import_error() is None


def _codec_name(path: str) -> str | None:
    try:
        import av
    except ImportError:
        return None
    with av.open(path) as container:
        return container.streams.video[0].codec_context.name


def probe_video(path: str, backend: str = "auto", timeout_s: float | None = 60.0,
                codecs: tuple[str, ...] | None = None) -> tuple[int, int, int]:
    """``(num_frames, height, width)`` of ``path`` after decoding its first and last frame; raises
    (``FileNotFoundError``, :class:`DecodeError`, ...) for a file DALI must not see. ``codecs``: the codec
    names allowed (None: any)."""

    def work():
        reader = open_video(path, backend=backend)
        try:
            n = reader.num_frames
            frames = reader.get_frames([0, n - 1] if n > 1 else [0])
        finally:
            reader.close()
        return n, int(frames.shape[-2]), int(frames.shape[-1])

    result = run_with_timeout(work, timeout_s, what=f"probe of {path}")
    if codecs is not None:
        codec = run_with_timeout(lambda: _codec_name(path), timeout_s, what=f"probe of {path}")
        if codec is not None and codec not in codecs:
            raise DecodeError(f"{path}: codec {codec!r} is not decoded by DALI on the CPU (only {', '.join(codecs)})")
    return result


def dali_error_summary(error: BaseException, limit: int = 300) -> str:
    """One line from a DALI pipeline error: the operator and what it met, without the pipeline-definition
    traceback DALI puts between them (file paths of the caller, whose length varies)."""
    text = " ".join(str(error).split())
    operator = re.search(r"Error in (\w+) operator `([\w.]+)`", text)
    cause = text.rsplit("encountered:", 1)[-1].strip() if "encountered:" in text else text
    cause = cause.split(" Stacktrace")[0].strip()
    where = f"{operator.group(2)} ({operator.group(1)}): " if operator else ""
    return f"{type(error).__name__}: {where}{cause}"[:limit]


def _stat_key(path: str) -> list | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _load_cache(cache_file, codecs) -> dict:
    if not cache_file or not os.path.exists(cache_file):
        return {}
    try:
        with open(cache_file) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data.get("files", {}) if data.get("codecs") == (list(codecs) if codecs else None) else {}


def _save_cache(cache_file, codecs, cache: dict) -> None:
    tmp = f"{cache_file}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump({"codecs": list(codecs) if codecs else None, "files": cache}, handle)
    os.replace(tmp, cache_file)


def write_dali_file_list(path: str | os.PathLike, entries) -> None:
    """Writes DALI ``file_list`` lines ``path label [start [end]]`` from ``(full_path, label[, start[, end]])``."""
    lines = []
    for entry in entries:
        if any(ch.isspace() for ch in str(entry[0])):
            raise ValueError(f"DALI file_list paths cannot contain whitespace: {entry[0]!r}")
        lines.append(" ".join(str(x) for x in entry) + "\n")
    with open(path, "w") as handle:
        handle.writelines(lines)


def _device_id(cfg: DataConfig):
    device = cfg.extra.get("dali_device") or ("gpu" if torch.cuda.is_available() else "cpu")
    if device not in ("gpu", "cpu"):
        raise ValueError(f"dali_device must be 'gpu' or 'cpu', got {device!r}")
    if device == "cpu":
        return None
    if not torch.cuda.is_available():
        raise RuntimeError("dali_device='gpu' needs a CUDA device; use extra={'dali_device': 'cpu'} (VP8/VP9/MJPEG)")
    return int(cfg.extra.get("device_id", torch.cuda.current_device()))


class _Source:
    """``fn.external_source`` callable (batch mode): one epoch of planned rows, StopIteration at the end."""

    def __init__(self):
        self.batches: list[list[dict]] = []
        self.position = 0
        self.meta: deque = deque()
        self._cache: dict[str, np.ndarray] = {}

    def start(self, batches: list[list[dict]]) -> None:
        self.batches, self.position = batches, 0
        self.meta.clear()

    def _encoded(self, path: str) -> np.ndarray:
        data = self._cache.get(path)
        if data is None:
            with open(path, "rb") as handle:
                data = np.frombuffer(handle.read(), dtype=np.uint8)
            self._cache = {path: data}  # rows of one video are consecutive: keep only the last file
        return data

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= len(self.batches):
            raise StopIteration
        rows = self.batches[self.position]
        self.position += 1
        self.meta.append(rows)
        return ([self._encoded(r["path"]) for r in rows],
                [np.asarray(r["frames"], dtype=np.int32) for r in rows],
                [np.asarray(r["roi_start"], dtype=np.float32) for r in rows],
                [np.asarray(r["roi_end"], dtype=np.float32) for r in rows],
                [np.asarray(r["mirror"], dtype=np.int32) for r in rows])


class DaliVideoLoader(VideoLoader):
    """DALI-decoded batches with the torch loader's plan and contract (see the module docstring)."""

    def __init__(self, cfg: DataConfig, dataset: VideoDataset, rank: int, world_size: int, seed: int,
                 start_step: int = 0, split: str = "train"):
        super().__init__(cfg, dataset, rank, world_size, seed, start_step=start_step, split=split)
        self.device_id = _device_id(cfg)
        self.decoder = cfg.extra.get("dali_decoder", "frames")
        if self.decoder not in ("frames", "reader"):
            raise ValueError(f"dali_decoder must be 'frames' or 'reader', got {self.decoder!r}")
        if self.decoder == "reader" and (self.device_id is None or cfg.sampling != "dense"):
            raise ValueError("dali_decoder='reader' (fn.readers.video) needs a GPU and dense sampling")
        self._info: dict[int, tuple[int, int, int]] | None = None
        self._pipe = None
        self._iterator = None
        self._source = _Source()
        self.fallback_batches = 0
        self.fallbacks: list[dict] = []  # {"paths", "error"} of each batch DALI failed on

    # -- pre-validation -----------------------------------------------------------------------------
    def probe(self) -> dict[int, tuple[int, int, int]]:
        """Probes every listed file once (see the module docstring): record index -> (frames, H, W).

        Files are probed by ``cfg.extra["dali_probe_workers"]`` threads (default 4; the decoders release
        the GIL). With ``cfg.extra["dali_probe_cache"]`` (a JSON file) results are kept per path, size and
        mtime, so later runs (and other ranks) skip the probe of unchanged files."""
        if self._info is not None:
            return self._info
        codecs = CPU_CODECS if self.device_id is None else None
        paths = list(dict.fromkeys(r.full_path(self.dataset.root) for r in self.dataset.records))
        cache_file = self.cfg.extra.get("dali_probe_cache")
        cache = _load_cache(cache_file, codecs)
        results: dict[str, tuple | str] = {}

        def one(path: str):
            key = _stat_key(path)
            if key is not None and cache.get(path, {}).get("key") == key:
                entry = cache[path]
                return path, tuple(entry["info"]) if entry.get("info") else entry["error"]
            try:
                result = probe_video(path, self.dataset.reader, self.cfg.decode_timeout_s, codecs)
            except _PROBE_ERRORS as error:
                result = f"{type(error).__name__}: {error}"
            if key is not None:
                cache[path] = {"key": key, **({"info": list(result)} if isinstance(result, tuple) else
                                              {"error": result})}
            return path, result

        workers = max(1, int(self.cfg.extra.get("dali_probe_workers", 4)))
        if workers == 1 or len(paths) < 4:
            results = dict(map(one, paths))
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers, thread_name_prefix="ivf-probe") as pool:
                results = dict(pool.map(one, paths))
        for path in paths:  # in list order, so reports are deterministic
            if isinstance(results[path], str):
                self._report(path, results[path])
        if cache_file:
            _save_cache(cache_file, codecs, cache)
        self._info = {i: results[path] for i, r in enumerate(self.dataset.records)
                      if isinstance(results[path := r.full_path(self.dataset.root)], tuple)}
        return self._info

    # -- planning -----------------------------------------------------------------------------------
    def _plan_record(self, candidate: int, generator: torch.Generator) -> list[dict]:
        num_frames, height, width = self._info[candidate]
        indices = self.dataset.sampler(num_frames, generator)
        if indices.dim() == 1:
            indices = indices[None]
        rows = []
        for clip in indices:
            for box, flip in self.dataset.transform.boxes(height, width, generator):
                rows.append({"frames": clip.tolist(), "roi_start": (box.top, box.left),
                             "roi_end": (box.top + box.height, box.left + box.width), "mirror": int(flip)})
        return rows

    def plan_sample(self, index: int) -> list[dict]:
        """Output rows of record ``index`` this epoch (empty: skipped), mirroring ``VideoDataset.__getitem__``."""
        ds = self.dataset
        candidate, attempts, draws = index, 0, 0
        while True:
            path = ds.records[candidate].full_path(ds.root)
            if candidate in self._info and path not in self._bad:
                generator = torch.Generator().manual_seed(sample_seed(ds.seed, self.epoch, index, draws))
                attempts += 1
                try:
                    rows = self._plan_record(candidate, generator)
                except (ShortVideoError, ValueError) as error:
                    self._report(path, f"{type(error).__name__}: {error}")
                else:
                    record = ds.records[candidate]
                    for view, row in enumerate(rows):
                        row.update(path=path, label=record.label, index=candidate, view=view)
                    return rows
            elif candidate not in self._info and path not in self._bad:
                self._report(path, "failed the probe")
            if ds.on_error == "raise":
                raise DecodeError(f"bad video {path}: {self._bad.get(path)}")
            if ds.on_error == "skip":
                self._skipped.append(index)
                return []
            draws += 1
            if attempts > ds.max_retries or draws > 100 * (ds.max_retries + 1) or len(self._bad) >= len(ds):
                raise RuntimeError(f"no readable replacement for sample {index} after {attempts} attempts "
                                   f"({len(self._bad)} of {len(ds)} files bad)")
            generator = torch.Generator().manual_seed(sample_seed(ds.seed, self.epoch, index, 1_000_000 + draws))
            candidate = int(torch.randint(0, len(ds), (1,), generator=generator).item())

    # -- the DALI pipeline --------------------------------------------------------------------------
    def _max_rows(self) -> int:
        cfg = self.cfg
        views = cfg.repeated_aug if cfg.train else cfg.test_clips * cfg.test_crops
        return cfg.batch_size * max(1, views)

    def _build_frames_pipeline(self):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        cfg, transform = self.cfg, self.dataset.transform
        mean = [255.0 * m for m in transform.mean]
        std = [255.0 * s for s in transform.std]
        size = [cfg.img_size, cfg.img_size]
        decode_device = "cpu" if self.device_id is None else "mixed"
        source = self._source

        @pipeline_def(batch_size=self._max_rows(), num_threads=int(cfg.extra.get("dali_threads", 2)),
                      device_id=self.device_id, prefetch_queue_depth=int(cfg.extra.get("dali_prefetch", 2)),
                      exec_dynamic=True)
        def pipeline():
            encoded, frames, roi_start, roi_end, mirror = fn.external_source(
                source=source, num_outputs=5, batch=True, cycle="raise")
            # pad_mode="none": a frame past the end raises instead of coming back black (the default,
            # "constant", pads silently even with frames=, whatever the 2.4 docstring says)
            video = fn.decoders.video(encoded, device=decode_device, frames=frames, pad_mode="none")  # [T,H,W,C]
            video = fn.resize(video, size=size, roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                              antialias=True, interp_type=types.INTERP_LINEAR)
            return fn.crop_mirror_normalize(video, mirror=mirror, mean=mean, std=std, dtype=types.FLOAT,
                                            output_layout="CFHW")

        pipe = pipeline()
        pipe.build()
        iterator = DALIGenericIterator(pipe, ["video"], auto_reset=True, last_batch_policy=LastBatchPolicy.PARTIAL,
                                       prepare_first_batch=False)
        return pipe, iterator

    def _rows_batch(self, rows: list[dict], video: torch.Tensor) -> dict:
        return {"video": video,
                "label": torch.tensor([r["label"] for r in rows], dtype=torch.int64),
                "index": torch.tensor([r["index"] for r in rows], dtype=torch.int64),
                "frame_indices": torch.tensor([r["frames"] for r in rows], dtype=torch.int64),
                "view": torch.tensor([r["view"] for r in rows], dtype=torch.int64)}

    def _torch_batch(self, rows: list[dict]) -> dict | None:
        """The same rows decoded by the torch dataset (fallback when DALI fails on a batch)."""
        self.dataset.set_epoch(self.epoch)
        self.dataset.log_bad = False
        originals = sorted({r["orig"] for r in rows}, key=[r["orig"] for r in rows].index)
        batch = collate_samples([self.dataset[i] for i in originals])
        self._take_reports(batch)  # skipped videos are counted and named as on the DALI path
        return None if batch.pop("empty", False) else batch

    def __iter__(self):
        batches = self._iter_reader() if self.decoder == "reader" else self._iter_frames()
        for batch in batches:
            yield self._with_captions(batch) if self.cfg.text else batch

    def _with_captions(self, batch: dict) -> dict:
        """A video-text list's fields, tokenized here per batch (the torch fallback's batch has them)."""
        if "tokens" in batch:
            return batch
        indices = batch["index"].tolist()
        captions = [self.dataset.records[i].caption for i in indices]
        tokens, cut_rows = tokenize_captions(captions, self.cfg.max_text_len)
        cut = list(dict.fromkeys(indices[row] for row in cut_rows))  # one entry per video, not per view
        return dict(batch, caption=captions, tokens=tokens, captions_cut=cut)

    def _iter_frames(self):
        self.probe()
        plan = []
        for batch in self.batches()[self.start_step:]:
            rows = []
            for index in batch:
                sample_rows = self.plan_sample(index)
                for row in sample_rows:
                    row["orig"] = index
                rows.extend(sample_rows)
            if rows:
                plan.append(rows)
        self.start_step = 0
        if not plan:
            return
        # A fresh pipeline per pass: DALI prefetches from the source as soon as it is built or reset, so the
        # source must hold this pass's plan first (building is cheap next to decoding an epoch). If DALI
        # raises on a batch (a file that passed the probe but fails to decode, or a frame past its end with
        # pad_mode="none"), that batch is decoded by the torch dataset (which marks the culprit bad, so the
        # next epochs replace or skip it) and a new pipeline takes the rest of the pass.
        remaining = plan
        while remaining:
            self._source = _Source()
            self._source.start(remaining)
            self._pipe, self._iterator = self._build_frames_pipeline()
            done = 0
            try:
                for out in self._iterator:
                    rows = self._source.meta.popleft()
                    video = out[0]["video"]
                    if video.shape[0] != len(rows):
                        raise RuntimeError(f"DALI returned {video.shape[0]} rows for a batch of {len(rows)}")
                    done += 1
                    self._batches_seen += 1
                    yield self._rows_batch(rows, video)
                remaining = []
            except (RuntimeError, StopIteration) as error:
                if done >= len(remaining):
                    break
                paths = sorted({r["path"] for r in remaining[done]})
                message = dali_error_summary(error)
                # Logged once per set of files and error: a file NVDEC cannot decode (but our CPU decoders
                # can) fails its batch every epoch, each time decoded by the torch dataset instead.
                repeated = any(f["paths"] == paths and f["error"] == message for f in self.fallbacks)
                self.fallbacks.append({"paths": paths, "error": message})
                (logger.debug if repeated else logger.warning)(
                    "DALI failed on a batch of %s (%s); that batch is decoded by the torch dataset", paths, message)
                self._pipe = self._iterator = None
                batch = self._torch_batch(remaining[done])
                self.fallback_batches += 1
                if batch is not None:
                    self._batches_seen += 1
                    yield batch
                remaining = remaining[done + 1:]
            finally:
                self._pipe = self._iterator = None

    # -- the legacy GPU reader (dense, training) ----------------------------------------------------
    def _build_reader_pipeline(self, file_list: str):  # pragma: no cover - needs a GPU
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        cfg, transform = self.cfg, self.dataset.transform
        mean = [255.0 * m for m in transform.mean]
        std = [255.0 * s for s in transform.std]
        crop = cfg.crop or ("multiscale" if cfg.train else "center")

        @pipeline_def(batch_size=cfg.batch_size, num_threads=int(cfg.extra.get("dali_threads", 2)),
                      device_id=self.device_id, seed=self.seed + 7919 * self.epoch,
                      prefetch_queue_depth=int(cfg.extra.get("dali_prefetch", 2)))
        def pipeline():
            video, label, frame_num = fn.readers.video(
                device="gpu", file_list=file_list, sequence_length=cfg.num_frames, stride=cfg.stride,
                step=-1, random_shuffle=self.shuffle, shard_id=self.rank, num_shards=self.world_size,
                pad_last_batch=True, pad_sequences=False, enable_frame_num="sequence", skip_vfr_check=False,
                name="reader")
            if cfg.train and crop == "random_resized":
                video = fn.random_resized_crop(video, size=[cfg.img_size] * 2, random_area=[0.08, 1.0],
                                               random_aspect_ratio=[3 / 4, 4 / 3], antialias=True)
            elif cfg.train and crop == "multiscale":
                scale = fn.random.uniform(values=list(transform.scales))
                video = fn.crop(video, crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
                                crop_pos_y=fn.random.uniform(range=[0.0, 1.0]),
                                crop_w=fn.cast(scale * float(min(self._short or [cfg.img_size])), dtype=types.FLOAT),
                                crop_h=fn.cast(scale * float(min(self._short or [cfg.img_size])), dtype=types.FLOAT))
                video = fn.resize(video, size=[cfg.img_size] * 2, antialias=True)
            else:
                video = fn.resize(video, resize_shorter=cfg.short_side or cfg.img_size, antialias=True)
                video = fn.crop(video, crop=[cfg.img_size] * 2)
            mirror = fn.random.coin_flip() if (cfg.train and cfg.flip) else 0
            video = fn.crop_mirror_normalize(video, mirror=mirror, mean=mean, std=std, dtype=types.FLOAT,
                                             output_layout="CFHW")
            return video, label, frame_num

        pipe = pipeline()
        pipe.build()
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        return DALIGenericIterator(pipe, ["video", "label", "frame_num"], reader_name="reader",
                                   last_batch_policy=policy, auto_reset=True)

    def _iter_reader(self):  # pragma: no cover - needs a GPU
        info = self.probe()
        span = (self.cfg.num_frames - 1) * self.cfg.stride + 1
        entries = []
        for i, record in enumerate(self.dataset.records):
            path = record.full_path(self.dataset.root)
            if i in info and info[i][0] >= span:
                entries.append((path, i))  # the DALI "label" is the record index: labels are looked up
            elif i in info:
                self._report(path, f"ShortVideoError: {info[i][0]} frames, the clip spans {span} "
                                   "(fn.readers.video cannot loop short videos)")
        self._short = [min(h, w) for (_, h, w) in info.values()]
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            file_list = handle.name
        write_dali_file_list(file_list, entries)
        iterator = self._build_reader_pipeline(file_list)
        expected = torch.arange(self.cfg.num_frames, dtype=torch.int64) * self.cfg.stride
        for step, out in enumerate(iterator):
            if step < self.start_step:
                continue
            frame_num = out[0]["frame_num"].to("cpu", torch.int64).reshape(-1, self.cfg.num_frames)
            starts = frame_num[:, :1]
            if not torch.equal(frame_num, starts + expected[None]):
                raise RuntimeError(f"fn.readers.video returned frames {frame_num.tolist()}, expected starts + "
                                   f"{expected.tolist()}")
            video = out[0]["video"]
            index = out[0]["label"].to("cpu", torch.int64).reshape(-1)
            labels = torch.tensor([self.dataset.records[i].label for i in index.tolist()], dtype=torch.int64)
            self._batches_seen += 1
            yield {"video": video, "label": labels, "index": index,
                   "frame_indices": frame_num, "view": torch.zeros_like(index)}
        self.start_step = 0
        os.unlink(file_list)


def build_dali_loader(cfg: DataConfig, split: str = "train", rank: int = 0, world_size: int = 1, seed: int = 0,
                      start_step: int = 0) -> DaliVideoLoader:
    """The DALI loader for ``cfg`` (the arguments of :func:`~internvideo_fast.data.build.build_loader`)."""
    error = dali_import_error()
    if error is not None:
        raise ImportError(f"loader='dali' needs NVIDIA DALI ({error}): pip install nvidia-dali-cuda130 (or .[dali])")
    return DaliVideoLoader(cfg, build_video_dataset(cfg, seed), rank, world_size, seed, start_step=start_step,
                           split=split)
