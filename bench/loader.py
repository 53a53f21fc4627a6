"""Clips per second of each video loader on the same files and sampling (16 frames, stride 4, 224 crop).

``python bench/loader.py [--clips-dir DIR | --data DIR] [--workers 0 2 4 8 16] [--device cpu|cuda]
[--repeated-aug 1 2] [--seconds S] [--budget-s S] [--out FILE] [--dry-run]``

Two sources of files:

- ``--clips-dir DIR``: real encodings, one sub-folder per set with a ``list.txt`` (the device kit's clips,
  ``bench/device_kit.py``: ``h264_1080p``, ``h264_720p``, ``hevc_720p``, ``vp9_320p``, ``prepared_320p`` =
  ``ivf-prepare``'s 320p short-side output, ...); each list is repeated ``--list-repeats`` times so that an
  epoch outlasts the timing;
- otherwise a sample dataset (``make_sample_dataset``: H.264 and VP9 copies of the same clips, ``--size``
  pixels, ``--frames`` frames) written to ``--data`` or a temporary folder.

Loaders, whichever can run here: the torch loader with the torchcodec, PyAV (and decord) readers over each
``--workers`` count of worker processes and each ``--repeated-aug`` (views augmented from one decoded clip,
as the VideoMAE recipe's ``num_sample``); DALI's CPU pipeline on VP9 sets; with ``--device cuda`` DALI's
GPU pipeline with both decoders: ``frames`` (``fn.decoders.video`` on ``mixed``, our sample plan) and
``reader`` (``fn.readers.video``; not on VP9 files). Each row warms up on one batch (worker start-up, the
DALI probe and pipeline build excluded), then times ``--batches`` batches or ``--seconds`` seconds,
whichever ends first; the rows stop at ``--budget-s`` (the rest are listed as skipped). The augmentation's
own cost (the torch transform on decoded frames) is timed separately. Writes a JSON (``rows``, and per set
the best CPU and DALI rates and their ratio under ``summary``) and a PNG bar chart where matplotlib is
installed. ``--dry-run``: a tiny sample dataset, one batch, no worker processes: proves the script on CPU.
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


def _config(list_file: Path, reader: str, loader: str, workers: int, batch_size: int, device: str,
            decoder: str = "frames", repeated_aug: int = 1, root: Path | None = None, frames: int = 16,
            stride: int = 4, img_size: int = 224, dali_threads: int = 2) -> DataConfig:
    extra = {}
    if loader == "dali":
        extra = {"dali_device": "gpu" if device == "cuda" else "cpu", "dali_decoder": decoder,
                 "dali_threads": dali_threads}
    return DataConfig(
        list_file=str(list_file), root=str(root) if root else None, train=True, num_frames=frames, stride=stride,
        img_size=img_size, batch_size=batch_size, num_workers=workers, reader=reader, loader=loader, shuffle=False,
        repeated_aug=repeated_aug, pin_memory=device == "cuda" and loader == "torch", extra=extra,
    )


def time_loader(cfg: DataConfig, batches: int, seconds: float | None = None) -> dict:
    """Clips/s over ``batches`` batches (or ``seconds``, whichever ends first) after one warm-up batch
    (worker start-up, first opens, DALI's probe and pipeline build excluded). A clip is one output row."""
    loader = build_loader(cfg)
    iterator = iter(loader)
    next(iterator)
    clips, count, start = 0, 0, time.perf_counter()
    while count < batches and (seconds is None or time.perf_counter() - start < seconds):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        clips += batch["video"].shape[0]
        count += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del iterator
    return {"clips": clips, "batches": count, "seconds": round(elapsed, 3),
            "clips_per_s": round(clips / max(elapsed, 1e-9), 2), "bad_videos": len(loader.bad_videos())}


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


def _codec(list_file: Path) -> str:
    name = list_file.parent.name.lower()
    for codec in ("hevc", "vp9", "h264"):
        if codec in name or codec in list_file.name:
            return codec
    return "h264"  # ivf-prepare's output


def kit_sets(clips_dir: Path, names: list[str] | None, repeats: int, work: Path) -> dict[str, tuple[Path, Path]]:
    """set name -> (repeated list file, root) for every ``clips_dir/<set>/list.txt``."""
    sets = {}
    listings = [clips_dir / name / "list.txt" for name in names] if names else sorted(clips_dir.glob("*/list.txt"))
    for listing in listings:
        name = listing.parent.name
        if not listing.is_file():
            raise SystemExit(f"bench/loader.py: {listing} does not exist")
        repeated = work / f"{name}.txt"
        repeated.write_text(listing.read_text() * max(1, repeats))
        sets[name] = (repeated, listing.parent)
    if not sets:
        raise SystemExit(f"bench/loader.py: no <set>/list.txt under {clips_dir}")
    return sets


def plan_rows(args, sets: dict[str, tuple[Path, Path]]) -> list[tuple[str, str, DataConfig]]:
    """(loader name, set, config) of every row to time: per set DALI's rows, then the CPU loader's."""
    readers = [reader for reader in ("torchcodec", "pyav", "decord") if reader in available_backends()]
    common = dict(batch_size=args.batch_size, frames=args.num_frames, stride=args.stride, img_size=args.img_size)
    rows = []
    for name, (list_file, root) in sets.items():
        codec = _codec(root / "list.txt") if args.clips_dir else ("vp9" if "vp9" in str(list_file) else "h264")
        if args.device == "cuda" and dali_runs("cuda"):
            for decoder in args.decoders:
                if decoder == "reader" and codec == "vp9":
                    continue  # fn.readers.video: H.264 / HEVC
                rows.append((f"dali-gpu-{decoder}", name, _config(list_file, "auto", "dali", 0, device="cuda",
                                                                  decoder=decoder, root=root,
                                                                  dali_threads=args.dali_threads, **common)))
        if codec == "vp9" and dali_runs("cpu"):
            rows.append(("dali-cpu", name, _config(list_file, "auto", "dali", 0, device="cpu", root=root,
                                                   dali_threads=args.dali_threads, **common)))
        for reader in readers:
            for views in args.repeated_aug:
                for workers in args.workers:
                    rows.append((f"torch+{reader}", name, _config(list_file, reader, "torch", workers,
                                                                  device=args.device, repeated_aug=views,
                                                                  root=root, **common)))
    return rows


def summarize(rows: list[dict]) -> dict:
    """Per set: the best CPU-loader and DALI-GPU rates, their ratio, and the rows they come from."""
    summary = {}
    for name in dict.fromkeys(row["set"] for row in rows):
        timed = [row for row in rows if row["set"] == name and row.get("clips_per_s")]
        cpu = max((r for r in timed if r["loader"].startswith("torch")), key=lambda r: r["clips_per_s"], default=None)
        gpu = max((r for r in timed if r["loader"].startswith("dali-gpu")), key=lambda r: r["clips_per_s"],
                  default=None)
        entry = {"best_cpu": cpu and {k: cpu[k] for k in ("loader", "workers", "repeated_aug", "clips_per_s")},
                 "best_dali_gpu": gpu and {k: gpu[k] for k in ("loader", "clips_per_s")}}
        if cpu and gpu:
            entry["dali_over_cpu"] = round(gpu["clips_per_s"] / cpu["clips_per_s"], 2)
        summary[name] = entry
    return summary


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ivf-loader-bench-"))
    if args.clips_dir:
        sets = kit_sets(args.clips_dir, args.sets, args.list_repeats, work)
        setup = {"clips_dir": str(args.clips_dir), "sets": list(sets), "list_repeats": args.list_repeats}
    else:
        root = Path(args.data or work / "clips")
        per_class = max(1, args.clips // 4)
        data = make_sample_dataset(root, num_classes=4, clips_per_class=per_class, val_per_class=1,
                                   num_frames=args.frames, size=tuple(args.size), codecs=("h264", "vp9"),
                                   jobs=args.jobs)
        sets = {"sample_h264": (Path(data.lists["h264"][0]), None), "sample_vp9": (Path(data.lists["vp9"][0]), None)}
        setup = {"clips": 4 * per_class, "frames": args.frames, "size": args.size}
    setup |= {"batch_size": args.batch_size, "workers": args.workers, "repeated_aug": args.repeated_aug,
              "sampling": f"dense, {args.num_frames} frames, stride {args.stride}, multiscale crop to {args.img_size}"}
    rows = []
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    for loader_name, set_name, cfg in plan_rows(args, sets):
        row = {"loader": loader_name, "set": set_name, "workers": cfg.num_workers, "repeated_aug": cfg.repeated_aug,
               "codec": _codec(Path(cfg.list_file)) if not args.clips_dir else _codec(Path(cfg.root) / "list.txt")}
        if deadline is not None and time.monotonic() > deadline:
            row["skipped"] = "budget"
        else:
            try:
                row |= time_loader(cfg, args.batches, args.seconds)
            except Exception as error:  # noqa: BLE001 - one loader failing must not hide the others
                row["error"] = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
        rows.append(row)
        print(json.dumps(row), flush=True)
    augmentation_ms = time_augmentation(_config(next(iter(sets.values()))[0], "auto", "torch", 0, args.batch_size,
                                                "cpu", frames=args.num_frames, img_size=args.img_size))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "setup": setup,
        "rows": rows,
        "summary": summarize(rows),
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
    labels = [f"{row['loader']}\n{row['set']}, {row['workers']} w, x{row['repeated_aug']}" for row in rows]
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
    parser.add_argument("--clips-dir", type=Path, default=None, help="real encodings: <set>/list.txt folders")
    parser.add_argument("--sets", nargs="+", default=None, help="the sets of --clips-dir to time (default: all)")
    parser.add_argument("--list-repeats", type=int, default=128, help="times each --clips-dir list is repeated")
    parser.add_argument("--clips", type=int, default=16, help="clips in the sample dataset (per codec)")
    parser.add_argument("--frames", type=int, default=96, help="frames of each sample-dataset clip")
    parser.add_argument("--size", type=int, nargs=2, default=[320, 256], metavar=("W", "H"))
    parser.add_argument("--num-frames", type=int, default=16, help="frames per sampled clip")
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=None, help="stop timing a row after this long")
    parser.add_argument("--budget-s", type=float, default=None, help="skip the rows left after this long")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeated-aug", type=int, nargs="+", default=[1])
    parser.add_argument("--decoders", nargs="+", default=["frames", "reader"], choices=["frames", "reader"])
    parser.add_argument("--dali-threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data", default=None, help="where to write (or reuse) the sample dataset")
    parser.add_argument("--jobs", type=int, default=2, help="ffmpeg processes writing the dataset")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file (PNG beside it)")
    parser.add_argument("--dry-run", action="store_true", help="tiny dataset, one batch, no workers (CPU)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.clips, args.frames, args.size, args.batches, args.workers = 4, 24, [48, 32], 1, [0]
        args.num_frames, args.stride, args.img_size, args.batch_size, args.seconds = 4, 2, 32, 2, None
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

