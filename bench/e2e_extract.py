"""ivf-extract's device work in clips/s: one batch of decoded uint8 windows -> resize, centre crop and normalize
on the device -> the encoder's pooled feature (bf16 autocast on CUDA), as `extract_features` runs it.

    python bench/e2e_extract.py                 # CPU: micro models
    python bench/e2e_extract.py --device cuda   # GPU: VideoMAE-B/16 (16 x 224^2) and InternVideo-MM-B/16 (8 x 224^2)

`cases(device)` feeds `make gpu-check` (one batch per timed call); `extra_rows(device)` adds the clips/s of
each. Decoding is not in these figures (it overlaps the device work in a background thread): bench the
loaders separately."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Case  # noqa: E402

from internvideo_fast.data.transforms import mean_std  # noqa: E402
from internvideo_fast.extract import feature_function, preprocess  # noqa: E402
from internvideo_fast.models import create_model  # noqa: E402


def _setups(device: torch.device, quick: bool) -> list[tuple[str, object, torch.Tensor, int]]:
    """(label, model, uint8 windows [B, T, 3, H, W] on the device, crop size) per encoder."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        batch = 8 if quick else 32
        specs = [("videomae_vit_base_patch16", {"num_classes": 0}, 16, 224, (256, 340)),
                 ("internvideo_mm_b16", {"with_caption": False}, 8, 224, (256, 340))]
    else:
        batch = 2
        specs = [("videomae_vit_micro_patch16", {"num_classes": 0, "img_size": 32, "num_frames": 4}, 4, 32, (36, 48)),
                 ("internvideo_mm_tiny", {"with_caption": False}, 4, 32, (36, 48))]
    out = []
    for name, args, frames, size, (height, width) in specs:
        model = create_model(name, **args).to(device).eval()
        windows = torch.randint(0, 256, (batch, frames, 3, height, width), dtype=torch.uint8, device=device)
        out.append((f"{name},B={batch},{frames}x{size}^2 from {height}x{width}", model, windows, size))
    return out


def _batch_fn(model, windows: torch.Tensor, size: int, device: torch.device):
    features_of, norm = feature_function(model)
    mean, std = mean_std(norm)

    @torch.no_grad()
    def run():
        clips = preprocess(windows, size, size, mean, std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return features_of(clips)

    return run


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    return [Case("ivf-extract batch", label, "ours", _batch_fn(model, windows, size, device), baseline=True)
            for label, model, windows, size in _setups(device, quick)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def extra_rows(device: torch.device, quick: bool = False) -> list[dict]:
    rows = []
    for label, model, windows, size in _setups(device, quick):
        run = _batch_fn(model, windows, size, device)
        for _ in range(2):
            run()
        _sync(device)
        repeats = 3 if quick or device.type != "cuda" else 10
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        _sync(device)
        seconds = (time.perf_counter() - start) / repeats
        rows.append({"op": "ivf-extract clips/s", "size": label, "clips/s": windows.shape[0] / seconds,
                     "ms": seconds * 1e3})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    for row in extra_rows(torch.device(args.device), args.quick):
        print(f"{row['size']:<60} {row['clips/s']:10.1f} clips/s  ({row['ms']:.2f} ms per batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
