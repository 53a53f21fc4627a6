"""ViT-B MAE pretraining fed by each loader from encoded clips, against the same step on synthetic device tensors.

``python bench/loader_train.py --clips-dir DIR [--sets prepared_320p h264_720p] [--feeds synthetic torch
dali-frames dali-reader] [--workers N] [--batch-size 32] [--seconds 20] [--device cuda] [--out FILE]``

One process, one model (``videomae_pretrain_vit_base_patch16``, 16x224x224, mask ratio 0.9, bf16 autocast,
fused AdamW): the step is the same for every feed, only where the clips come from changes:

- ``synthetic``: one normalized clip batch made on the device once (the ceiling: no loading at all);
- ``torch``: the torch loader (``--workers`` processes decoding on the CPU, pinned memory) through
  :class:`~internvideo_fast.data.DevicePrefetcher` (copies on a side stream, ``--prefetch`` batches ahead),
  the video normalized in the workers (float32);
- ``torch-uint8``: the same, the video left uint8 by the workers and normalized on the GPU by the prefetcher
  (a quarter of the bytes to pin and copy: how ``ivf-train`` feeds a GPU);
- ``dali-frames`` / ``dali-reader``: the DALI GPU loader (``fn.decoders.video`` on ``mixed`` with our sample
  plan / ``fn.readers.video``), batches already on the device, through the same prefetcher.

The recipe's sampling: 16 frames, stride 4, multiscale crop to 224. Masks are drawn on the device from a
seed tensor incremented on the device, so no step waits for the host; the only synchronization is at the end
of each timed window. Each feed warms up for ``--warmup`` steps (worker start-up, DALI's probe, autotuning),
then runs ``--steps`` steps or ``--seconds`` seconds. A feed that runs out of clips starts the next epoch.
Reports clips/s, ms per step and the fraction of the synthetic feed's clips/s per feed and set (JSON with
``--out``). ``--dry-run``: the micro model on CPU, a tiny sample dataset, one timed step per feed.
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

from internvideo_fast.data import DataConfig, DevicePrefetcher, build_loader, make_sample_dataset  # noqa: E402
from internvideo_fast.models import create_model  # noqa: E402

FEEDS = ("synthetic", "torch", "torch-uint8", "dali-frames", "dali-reader")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PretrainStep:
    """model(video, mask_ratio, seed) -> loss, backward, AdamW step; the seed advances on the device."""

    def __init__(self, name: str, device: torch.device, img_size: int, frames: int, mask_ratio: float = 0.9,
                 compile_mode: str | None = None):
        self.device = device
        self.model = create_model(name, img_size=img_size, num_frames=frames).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.forward = torch.compile(self.model, mode=compile_mode) if compile_mode else self.model
        self.seed = torch.zeros((), dtype=torch.int64, device=device)
        self.mask_ratio = mask_ratio

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self.forward(video, mask_ratio=self.mask_ratio, seed=self.seed)["loss"]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.seed.add_(1)
        return loss.detach()


def _epochs(loader):
    """The loader's batches epoch after epoch."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        produced = False
        for batch in loader:
            produced = True
            yield batch
        if not produced:
            raise RuntimeError("the loader produced no batch in a whole epoch")
        epoch += 1


def _synthetic(batch: int, frames: int, size: int, device: torch.device):
    video = torch.randn(batch, 3, frames, size, size, device=device)
    while True:
        yield {"video": video}


def time_feed(step: PretrainStep, batches, warmup: int, steps: int, seconds: float | None) -> dict:
    """Clips/s of ``step`` fed by the iterator ``batches`` (see the module docstring)."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator)["video"])
    _sync(step.device)
    clips, count, start = 0, 0, time.perf_counter()
    # Checking the clock only every few steps keeps the loop free of host syncs; the window ends on a sync.
    while count < steps:
        video = next(iterator)["video"]
        step(video)
        clips += video.shape[0]
        count += 1
        if seconds is not None and count % 4 == 0 and time.perf_counter() - start > seconds:
            break
    _sync(step.device)
    elapsed = time.perf_counter() - start
    return {"steps": count, "clips": clips, "seconds": round(elapsed, 3),
            "clips_per_s": round(clips / max(elapsed, 1e-9), 2), "step_ms": round(1e3 * elapsed / max(count, 1), 2)}


def _config(list_file: Path, root: Path | None, feed: str, args) -> DataConfig:
    extra = {}
    if feed.startswith("dali"):
        extra = {"dali_device": "gpu" if args.device == "cuda" else "cpu", "dali_decoder": feed.split("-")[1],
                 "dali_threads": args.dali_threads}
    return DataConfig(list_file=str(list_file), root=str(root) if root else None, train=True,
                      num_frames=args.num_frames, stride=args.stride, img_size=args.img_size,
                      batch_size=args.batch_size, num_workers=args.workers if feed.startswith("torch") else 0,
                      loader="dali" if feed.startswith("dali") else "torch", pin_memory=args.device == "cuda",
                      normalize_on_device=feed == "torch-uint8", extra=extra)


def _sets(args, work: Path) -> dict[str, tuple[Path, Path | None]]:
    if args.clips_dir:
        sets = {}
        for name in args.sets:
            listing = args.clips_dir / name / "list.txt"
            if not listing.is_file():
                raise SystemExit(f"bench/loader_train.py: {listing} does not exist")
            repeated = work / f"{name}.txt"
            repeated.write_text(listing.read_text() * args.list_repeats)
            sets[name] = (repeated, listing.parent)
        return sets
    data = make_sample_dataset(work / "clips", num_classes=2, clips_per_class=2, val_per_class=1,
                               num_frames=24, size=(80, 64), fps=8, seed=0,
                               codecs=("vp9",) if args.device == "cpu" else ("h264",))
    return {"sample": (Path(data.train_list), None)}


def run(args) -> dict:
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="ivf-loader-train-"))
    sets = _sets(args, work)
    step = PretrainStep(args.model, device, args.img_size, args.num_frames, compile_mode=args.compile)
    rows = []
    deadline = time.monotonic() + args.budget_s if args.budget_s else None

    def measure(feed: str, set_name: str | None, batches) -> None:
        row = {"feed": feed, "set": set_name}
        if deadline is not None and time.monotonic() > deadline:
            row["skipped"] = "budget"
        else:
            try:
                row |= time_feed(step, batches, args.warmup, args.steps, args.seconds)
            except Exception as error:  # noqa: BLE001 - one feed failing must not hide the others
                row["error"] = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
        rows.append(row)
        print(json.dumps(row), flush=True)

    if "synthetic" in args.feeds:
        measure("synthetic", None, _synthetic(args.batch_size, args.num_frames, args.img_size, device))
    for set_name, (list_file, root) in sets.items():
        for feed in args.feeds:
            if feed == "synthetic":
                continue
            if feed.startswith("dali") and device.type != "cuda" and feed != "dali-frames":
                continue  # fn.readers.video is GPU only
            try:
                loader = build_loader(_config(list_file, root, feed, args))
            except Exception as error:  # noqa: BLE001
                rows.append({"feed": feed, "set": set_name, "error": f"{type(error).__name__}: {error}"[:300]})
                continue
            normalize = loader.cfg.normalization_constants() if loader.cfg.normalize_on_device else None
            measure(feed, set_name, DevicePrefetcher(_epochs(loader), device, depth=args.prefetch,
                                                     normalize=normalize))
            if hasattr(loader, "bad_videos") and loader.bad_videos():
                rows[-1]["bad_videos"] = len(loader.bad_videos())
    synthetic = next((r["clips_per_s"] for r in rows if r["feed"] == "synthetic" and "clips_per_s" in r), None)
    for row in rows:
        if synthetic and "clips_per_s" in row:
            row["of_synthetic"] = round(row["clips_per_s"] / synthetic, 3)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
        "setup": {"model": args.model, "batch_size": args.batch_size, "clip": f"{args.num_frames}x{args.img_size}"
                  f"x{args.img_size}, stride {args.stride}", "mask_ratio": 0.9, "workers": args.workers,
                  "prefetch": args.prefetch, "compile": args.compile, "sets": list(sets)},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-dir", type=Path, default=None, help="real encodings: <set>/list.txt folders")
    parser.add_argument("--sets", nargs="+", default=["prepared_320p", "h264_720p"])
    parser.add_argument("--list-repeats", type=int, default=512,
                        help="times each list is repeated (epochs of many steps)")
    parser.add_argument("--feeds", nargs="+", default=list(FEEDS), choices=FEEDS)
    parser.add_argument("--model", default="videomae_pretrain_vit_base_patch16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--dali-threads", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0, help="longest timed window per feed")
    parser.add_argument("--budget-s", type=float, default=None, help="skip the feeds left after this long")
    parser.add_argument("--compile", default=None, help="torch.compile mode for the model (default: eager)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="micro model on CPU, tiny clips, one step")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.model, args.batch_size, args.num_frames, args.stride = "cpu", \
            "videomae_pretrain_vit_micro_patch16", 2, 8, 2
        args.img_size, args.workers, args.warmup, args.steps, args.seconds, args.clips_dir = 32, 0, 1, 1, None, None
    result = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"written: {args.out}")
    return 0 if all("error" not in row for row in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
