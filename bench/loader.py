"""Clips per second of each video loader on the same files and sampling (16 frames, stride 4, 224 crop).

``python bench/loader.py [--clips N] [--workers 0 1 2] [--batches N] [--device cpu|cuda] [--out FILE]``

Loaders (whichever can run here): the torch loader with the torchcodec reader and with the PyAV reader,
over 0..N worker processes; DALI's CPU pipeline on the VP9 copy of the files (DALI 2.4 decodes only
VP8/VP9/MJPEG on the CPU); with ``--device cuda`` DALI's GPU pipeline (NVDEC) on the H.264 files, and
decord if it is installed. Each loader reads the same sample dataset (``make_sample_dataset``: H.264 and VP9
copies of the same clips, ``--size`` pixels, ``--frames`` frames), warms up on one batch, then times
``--batches`` batches. The augmentation's own cost (decode excluded: the torch transform on decoded frames)
is timed separately. Writes a JSON (and a PNG bar chart where matplotlib is installed) beside ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, uninstalled

from internvideo_fast.data import DataConfig, build_loader, make_sample_dataset  # noqa: E402
from internvideo_fast.data.decode import available_backends  # noqa: E402


def _config(list_file: Path, reader: str, loader: str, workers: int, batch_size: int, device: str) -> DataConfig:
    extra = {"dali_device": "gpu" if device == "cuda" else "cpu"} if loader == "dali" else {}
    return DataConfig(
        list_file=str(list_file), train=True, num_frames=16, stride=4, img_size=224, batch_size=batch_size,
        num_workers=workers, reader=reader, loader=loader, shuffle=False, extra=extra,
    )


def time_loader(cfg: DataConfig, batches: int) -> dict:
    """Clips/s over `batches` batches after one warm-up batch (worker start-up and first opens excluded)."""
    loader = build_loader(cfg)
    iterator = iter(loader)
    next(iterator)
    clips, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        clips += batch["video"].shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"clips": clips, "seconds": round(seconds, 3), "clips_per_s": round(clips / max(seconds, 1e-9), 2),
            "bad_videos": len(loader.bad_videos())}


def time_augmentation(cfg: DataConfig, repeats: int = 20) -> float:
    """Milliseconds per clip of the training transform alone, on a decoded uint8 clip."""
    transform = cfg.build_transform()
    frames = torch.randint(0, 256, (cfg.num_frames, 3, 256, 320), dtype=torch.uint8)  # [T, C, H, W]
    generator = torch.Generator().manual_seed(0)
    transform(frames, generator)
    start = time.perf_counter()
    for _ in range(repeats):
        transform(frames, generator)
    return (time.perf_counter() - start) / repeats * 1e3


def dali_runs(device: str) -> bool:
    try:
        from internvideo_fast.data.dali import dali_available
    except ImportError:
        return False
    return dali_available() and (device == "cpu" or torch.cuda.is_available())


def run(args) -> dict:
    root = Path(args.data or tempfile.mkdtemp(prefix="ivf-loader-bench-"))
    per_class = max(1, args.clips // 4)
    data = make_sample_dataset(root, num_classes=4, clips_per_class=per_class, val_per_class=1,
                               num_frames=args.frames, size=tuple(args.size), codecs=("h264", "vp9"),
                               jobs=args.jobs)
    h264_list, vp9_list = data.lists["h264"][0], data.lists["vp9"][0]
    rows = []

    def measure(name: str, cfg: DataConfig) -> None:
        row = {"loader": name, "workers": cfg.num_workers, "codec": "vp9" if cfg.list_file == str(vp9_list) else "h264"}
        try:
            row |= time_loader(cfg, args.batches)
        except Exception as error:  # noqa: BLE001 - one loader failing must not hide the others
            row["error"] = f"{type(error).__name__}: {error}"[:300]
        rows.append(row)
        print(json.dumps(row), flush=True)

    readers = [reader for reader in ("torchcodec", "pyav", "decord") if reader in available_backends()]
    for reader in readers:
        for workers in args.workers:
            measure(f"torch+{reader}", _config(h264_list, reader, "torch", workers, args.batch_size, "cpu"))
    if dali_runs("cpu"):
        measure("dali-cpu", _config(vp9_list, "auto", "dali", 0, args.batch_size, "cpu"))
        measure("torch+torchcodec", _config(vp9_list, "torchcodec", "torch", 0, args.batch_size, "cpu"))
    if args.device == "cuda" and dali_runs("cuda"):
        measure("dali-gpu", _config(h264_list, "auto", "dali", 0, args.batch_size, "cuda"))
    augmentation_ms = time_augmentation(_config(h264_list, "auto", "torch", 0, args.batch_size, "cpu"))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "setup": {"clips": 4 * per_class, "frames": args.frames, "size": args.size, "batch_size": args.batch_size,
                  "sampling": "dense, 16 frames, stride 4, multiscale crop to 224"},
        "rows": rows,
        "cpu_augmentation_ms_per_clip": round(augmentation_ms, 2),
    }


def plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [row for row in result["rows"] if "clips_per_s" in row]
    labels = [f"{row['loader']}\n{row['codec']}, {row['workers']} workers" for row in rows]
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    axis.bar(range(len(rows)), [row["clips_per_s"] for row in rows])
    axis.set_xticks(range(len(rows)))
    axis.set_xticklabels(labels, fontsize=7)
    axis.set_ylabel("clips / s (16 x 224 x 224)")
    axis.set_title(f"video loaders, {result['machine']['cpus']} CPUs, {result['date'][:10]}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16, help="clips in the sample dataset (per codec)")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", type=int, nargs=2, default=[320, 256], metavar=("W", "H"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data", default=None, help="where to write (or reuse) the sample dataset")
    parser.add_argument("--jobs", type=int, default=2, help="ffmpeg processes writing the dataset")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file (PNG beside it)")
    args = parser.parse_args(argv)
    result = run(args)
    print(f"augmentation alone (CPU): {result['cpu_augmentation_ms_per_clip']} ms per clip")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        picture = plot(result, args.out.with_suffix(".png"))
        print(f"written: {args.out}" + (f", {picture}" if picture else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

