"""`ivf-extract`: clip features of every video in a list over sliding windows, one ``.npy`` per video.

    ivf-extract --list videos.txt --root DIR --out feats/ --model videomae_vit_base_patch16 --pretrained ft.pth
    ivf-extract --list videos.txt --out feats/ --checkpoint runs/x/checkpoint.pth     # a model ivf-train wrote

A window is ``frames`` frames taken every ``frame_stride`` source frames; windows start every ``stride``
source frames, so a video of N frames gives ``max(1, (N - span) // stride + 1)`` windows, ``span =
(frames - 1) * frame_stride + 1`` (a video shorter than one span repeats its last frame). Feature ``i`` covers
source frames ``[i * stride, i * stride + span)``: the layout TAL detectors read (``[num_windows, C]``
float32, written as ``out/<video id>.npy`` where the id is the file name without its extension).

The feature of a window is the encoder's pooled clip feature before any classifier: VideoMAE's mean of the
tokens (through ``fc_norm`` when the model has one), UniFormerV2's balance-fused feature, InternVideo-MM's
normalized video embedding, or the CMA model's fused feature.

Decoding goes through :mod:`internvideo_fast.data.decode` (frame-exact), one video at a time in a
background thread while the device encodes the previous batch; resizing (short side), the centre crop
and normalization run on the device for ``batch`` windows at once. ``RANK`` / ``WORLD_SIZE`` (as torchrun
sets them) shard the list (video ``i`` goes to rank ``i % WORLD_SIZE``) and ``LOCAL_RANK`` picks the GPU.
Finished videos are skipped (``.npy`` files are written atomically, so one that exists is complete), and
videos that cannot be decoded are listed by name at the end (and in ``out/bad_videos.rank<R>.txt``).
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from internvideo_fast.data.transforms import (
    center_crop, mean_std, normalization_tensors, normalize_video, short_side_size,
)
from internvideo_fast.errors import UserError, run_cli
from internvideo_fast.progress import Progress

__all__ = ["ExtractConfig", "window_indices", "read_video_paths", "feature_function", "extract_features", "main"]


@dataclass
class ExtractConfig:
    frames: int = 16
    frame_stride: int = 1
    stride: int = 4
    size: int = 224
    short_side: int | None = None  # resize the short side to this before the centre crop (default: size)
    batch: int = 16
    mean_std: str = "auto"  # auto | imagenet | clip
    backend: str = "auto"


def window_indices(num_frames: int, frames: int, frame_stride: int, stride: int) -> torch.Tensor:
    """Source frame indices ``[num_windows, frames]`` of the sliding windows (see the module)."""
    if num_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if frames < 1 or frame_stride < 1 or stride < 1:
        raise ValueError(f"frames, frame_stride and stride must be >= 1, got {frames}, {frame_stride}, {stride}")
    span = (frames - 1) * frame_stride + 1
    num_windows = max(1, (num_frames - span) // stride + 1)
    starts = torch.arange(num_windows, dtype=torch.int64)[:, None] * stride
    offsets = torch.arange(frames, dtype=torch.int64)[None, :] * frame_stride
    return (starts + offsets).clamp_(max=num_frames - 1)


def read_video_paths(list_file: str | os.PathLike, root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """``(video id, path)`` for each line of ``list_file``: a path per line (``#`` comments and empty lines
    skipped); a trailing integer label as in VideoMAE lists (``path 3``) is dropped. Two videos with the
    same id (file name without extension) would write the same feature file, so they are an error."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise UserError(f"{list_file}: no such video list")
    seen: dict[str, int] = {}
    videos = []
    for line_number, line in enumerate(list_file.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(maxsplit=1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            text = parts[0]
        path = text if root is None or os.path.isabs(text) else os.path.join(os.fspath(root), text)
        video_id = Path(text).stem
        if video_id in seen:
            raise UserError(f"{list_file}:{line_number}: video id {video_id!r} repeats line {seen[video_id]} "
                            "(features are written per id)")
        seen[video_id] = line_number
        videos.append((video_id, path))
    return videos


def feature_function(model: torch.nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """``(features of normalized clips [B, 3, T, H, W] -> [B, C], the normalization it expects)``."""
    from internvideo_fast.models.cma import InternVideo
    from internvideo_fast.models.uniformerv2 import UniFormerV2
    from internvideo_fast.models.videomae import VideoMAEClassifier, VideoMAEEncoder, VideoMAEPretrain
    from internvideo_fast.models.videotext import VideoTextModel

    if isinstance(model, VideoMAEPretrain):
        model = model.encoder
    if isinstance(model, VideoMAEClassifier):
        if model.fc_norm is not None:
            return (lambda video: model.fc_norm(model.forward_features(video).mean(1))), "imagenet"
        return (lambda video: model.forward_features(video)[:, 0]), "imagenet"
    if isinstance(model, VideoMAEEncoder):
        return (lambda video: model.forward_features(video).mean(1)), "imagenet"
    if isinstance(model, VideoTextModel):
        return model.encode_video, "clip"
    if isinstance(model, UniFormerV2):
        return model.forward_features, "clip"
    if isinstance(model, InternVideo):
        return model.forward_features, "imagenet"
    raise UserError(f"ivf-extract does not know how to pool a {type(model).__name__}",
                    hint="use a VideoMAE, UniFormerV2, InternVideo-MM or CMA model")


def preprocess(frames: torch.Tensor, size: int, short_side: int, mean, std, tensors=None) -> torch.Tensor:
    """uint8 frames ``[B, T, 3, H, W]`` (on the device) -> normalized clips ``[B, 3, T, size, size]``:
    bilinear resize of the short side, centre crop, ``(x / 255 - mean) / std``. `tensors`:
    :func:`~internvideo_fast.data.transforms.normalization_tensors` on the frames' device, made once."""
    batch, length = frames.shape[:2]
    x = frames.reshape(batch * length, *frames.shape[2:]).float()
    height, width = short_side_size(x.shape[-2], x.shape[-1], short_side)
    if (height, width) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    x = normalize_video(center_crop(x, size)[:, :, None], mean, std, tensors)[:, :, 0]  # channels at -4
    return x.reshape(batch, length, 3, *x.shape[-2:]).transpose(1, 2).contiguous()


def _decoded_batches(videos, config: ExtractConfig, depth: int = 2) -> Iterator[tuple[str, str, object]]:
    """Yields ``(video id, path, item)`` per batch of windows, decoded in a background thread; ``item`` is
    ``(uint8 frames [b, T, 3, H, W], window offset, num_windows)`` or the exception that video raised."""
    from internvideo_fast.data.decode import open_video

    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for video_id, path in videos:
                if stop.is_set():
                    return
                try:
                    reader = open_video(path, backend=config.backend)
                except Exception as error:  # noqa: BLE001 - reported by name, the others go on
                    out.put((video_id, path, error))
                    continue
                try:
                    windows = window_indices(reader.num_frames, config.frames, config.frame_stride, config.stride)
                    for offset in range(0, len(windows), config.batch):
                        chunk = windows[offset:offset + config.batch]
                        frames = reader.get_frames(chunk.reshape(-1))
                        out.put((video_id, path, (frames.reshape(*chunk.shape, *frames.shape[1:]), offset,
                                                  len(windows))))
                except Exception as error:  # noqa: BLE001
                    out.put((video_id, path, error))
                finally:
                    reader.close()
        finally:
            out.put(None)

    thread = threading.Thread(target=work, name="ivf-extract-decode", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not None:
            yield item
    finally:
        stop.set()


def _save_atomically(array: np.ndarray, path: Path) -> None:
    partial = path.with_name(path.name + ".partial.npy")
    np.save(partial, array)
    os.replace(partial, path)


@torch.no_grad()
def extract_features(model: torch.nn.Module, videos: list[tuple[str, str]], out_dir: str | os.PathLike,
                     config: ExtractConfig, device: torch.device | str = "cpu", log=print,
                     show_progress: bool = False) -> dict:
    """Extract every video of ``videos`` not yet in ``out_dir``. Returns ``{"done": [...], "skipped": [...],
    "bad": {id: reason}, "windows": n, "seconds": s}``. `show_progress`: a bar on a terminal, a line every
    30 s otherwise (stderr), over the videos to extract."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    model = model.to(device).eval()
    features_of, default_norm = feature_function(model)
    mean, std = mean_std(default_norm if config.mean_std == "auto" else config.mean_std)
    normalization = normalization_tensors(mean, std, 3, device)  # once: a host copy per batch would wait
    short_side = config.short_side or config.size
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    skipped = [video_id for video_id, _ in videos if (out_dir / f"{video_id}.npy").exists()]
    finished = set(skipped)
    todo = [(video_id, path) for video_id, path in videos if video_id not in finished]
    done, bad, windows_total = [], {}, 0
    parts: dict[str, list[torch.Tensor]] = {}
    progress = Progress(total=len(todo), desc="ivf-extract", unit="videos", enabled=show_progress)
    start = time.perf_counter()
    for video_id, path, item in _decoded_batches(todo, config):
        if isinstance(item, Exception):
            if video_id not in bad:
                progress.update(note=f"{len(bad) + 1} bad")
            bad[video_id] = f"{path}: {type(item).__name__}: {item}"
            parts.pop(video_id, None)
            log(f"bad video {video_id}: {bad[video_id]}")
            continue
        if video_id in bad:
            continue
        frames, offset, num_windows = item
        clips = preprocess(frames.to(device, non_blocking=True), config.size, short_side, mean, std, normalization)
        if autocast is not None:
            with autocast:
                features = features_of(clips)
        else:
            features = features_of(clips)
        parts.setdefault(video_id, []).append(features.float())
        if offset + frames.shape[0] >= num_windows:
            array = torch.cat(parts.pop(video_id)).cpu().numpy()
            _save_atomically(array, out_dir / f"{video_id}.npy")
            done.append(video_id)
            windows_total += num_windows
            progress.update()
    progress.close()
    seconds = time.perf_counter() - start
    return {"done": done, "skipped": skipped, "bad": bad, "windows": windows_total, "seconds": seconds}


def _load_model(args) -> torch.nn.Module:
    import json

    from internvideo_fast.models import create_model

    if args.checkpoint:
        from internvideo_fast.train.loop import load_trained_model

        return load_trained_model(args.checkpoint)[0]
    if not args.model:
        raise UserError("ivf-extract needs --model NAME (with --pretrained) or --checkpoint of an ivf-train run")
    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as error:
        raise UserError(f"--model-args is not valid JSON: {error.msg}") from None
    try:
        return create_model(args.model, pretrained=args.pretrained, **model_args)
    except ValueError as error:
        raise UserError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ivf-extract", description=__doc__.splitlines()[0])
    parser.add_argument("--list", required=True, help="videos, one path per line")
    parser.add_argument("--root", help="directory the list's relative paths start from")
    parser.add_argument("--out", required=True, help="directory of the <video id>.npy features")
    parser.add_argument("--model", help="a registered model name (ivf info lists the families)")
    parser.add_argument("--model-args", default="{}", help='JSON constructor overrides, e.g. \'{"num_classes": 0}\'')
    parser.add_argument("--pretrained", help="weights for --model (official formats included)")
    parser.add_argument("--checkpoint", help="a checkpoint written by ivf-train (its config names the model)")
    parser.add_argument("--frames", type=int, default=16, help="frames per window")
    parser.add_argument("--frame-stride", type=int, default=1, help="source frames between a window's frames")
    parser.add_argument("--stride", type=int, default=4, help="source frames between window starts")
    parser.add_argument("--size", type=int, default=224, help="centre crop size")
    parser.add_argument("--short-side", type=int, help="resize the short side to this first (default: --size)")
    parser.add_argument("--batch", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--mean-std", default="auto", choices=("auto", "imagenet", "clip"))
    parser.add_argument("--backend", default="auto", choices=("auto", "torchcodec", "pyav"))
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when a GPU is present, else cpu")
    args = parser.parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} must lie in [0, WORLD_SIZE={world})")
    device = args.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    videos = read_video_paths(args.list, args.root)[rank::world]
    config = ExtractConfig(args.frames, args.frame_stride, args.stride, args.size, args.short_side, args.batch,
                           args.mean_std, args.backend)
    model = _load_model(args)
    result = extract_features(model, videos, args.out, config, device, show_progress=True)
    rate = result["windows"] / max(result["seconds"], 1e-9)
    print(f"rank {rank}/{world}: {len(result['done'])} video(s) extracted ({result['windows']} windows, "
          f"{rate:.1f} clips/s), {len(result['skipped'])} already done, {len(result['bad'])} bad")
    if result["bad"]:
        report = Path(args.out) / f"bad_videos.rank{rank}.txt"
        report.write_text("".join(f"{video_id}\t{reason}\n" for video_id, reason in sorted(result["bad"].items())))
        for video_id, reason in sorted(result["bad"].items()):
            print(f"  bad: {video_id}: {reason}")
        print(f"  (listed in {report})")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli("ivf-extract", main, argv)


if __name__ == "__main__":
    sys.exit(cli())
