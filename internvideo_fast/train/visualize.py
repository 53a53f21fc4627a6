"""`ivf-visualize-mae --checkpoint runs/pre/checkpoint.pth --out recon.png`: a PNG grid of a clip's frames
(top), the masked input the encoder saw (middle) and the reconstruction (bottom).

The decoder predicts each masked tube's pixels normalized by the tube's own mean and std (the official
target), so the reconstruction is denormalized with the original tube's statistics, as the official
visualization does; visible tubes are shown as they were."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from internvideo_fast.ops import mae_targets


def tubes_to_video(tubes: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int, channels: int) -> torch.Tensor:
    """Inverse of the target layout: ``[N, t*p*p*C]`` in ``(p0 p1 p2 c)`` order -> ``[C, T, H, W]``."""
    gt, gh, gw = grid
    x = tubes.reshape(gt, gh, gw, tubelet, patch, patch, channels)
    return x.permute(6, 0, 3, 1, 4, 2, 5).reshape(channels, gt * tubelet, gh * patch, gw * patch)


@torch.no_grad()
def reconstruct(model, video: torch.Tensor, mean, std, seed: int = 0) -> dict[str, torch.Tensor]:
    """For one normalized clip ``[C, T, H, W]``: original, masked input and reconstruction in [0, 1]."""
    model.eval()
    out = model(video[None], seed=seed)
    masks, pred = out["masks"], out["pred"][0].float()
    C = video.shape[0]
    tubelet, patch = model.tubelet_size, model.patch_size
    grid = model.encoder.grid
    mean_t = torch.tensor(mean, device=video.device)[:, None, None, None]
    std_t = torch.tensor(std, device=video.device)[:, None, None, None]
    original = (video.float() * std_t + mean_t).clamp(0, 1)
    all_ids = torch.arange(masks.mask.shape[1], device=video.device)[None]
    tubes = mae_targets(original[None], all_ids, tubelet, patch, normalize=False)[0]  # [N, P*C] in [0, 1]
    masked_ids = masks.ids_masked[0]
    P = tubelet * patch * patch
    original_masked = tubes[masked_ids].reshape(-1, P, C)
    if model.normalize_targets:
        center = original_masked.mean(1, keepdim=True)
        spread = original_masked.var(1, unbiased=True, keepdim=True).sqrt() + 1e-6
        predicted = pred.reshape(-1, P, C) * spread + center
    else:
        predicted = pred.reshape(-1, P, C)
    reconstructed, masked_input = tubes.clone(), tubes.clone()
    reconstructed[masked_ids] = predicted.reshape(len(masked_ids), -1).clamp(0, 1)
    masked_input[masked_ids] = 0.5
    return {
        "original": original,
        "masked": tubes_to_video(masked_input, grid, tubelet, patch, C),
        "reconstruction": tubes_to_video(reconstructed, grid, tubelet, patch, C),
    }


def save_grid(rows: list[torch.Tensor], path: str | Path, gap: int = 2) -> None:
    """Rows of clips ``[C, T, H, W]`` in [0, 1] -> one PNG (frames left to right, rows top to bottom)."""
    from PIL import Image

    C, T, H, W = rows[0].shape
    canvas = torch.ones(3, len(rows) * (H + gap) - gap, T * (W + gap) - gap)
    for r, clip in enumerate(rows):
        for t in range(T):
            frame = clip[:, t] if C == 3 else clip[:1, t].expand(3, -1, -1)
            canvas[:, r * (H + gap): r * (H + gap) + H, t * (W + gap): t * (W + gap) + W] = frame.cpu()
    image = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def main(argv: list[str] | None = None) -> int:
    from internvideo_fast.train.distributed import DistContext
    from internvideo_fast.train.loop import _loader, load_trained_model

    parser = argparse.ArgumentParser(prog="ivf-visualize-mae", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a mae_pretrain checkpoint written by ivf-train")
    parser.add_argument("--out", default="mae_reconstruction.png")
    parser.add_argument("--index", type=int, default=0, help="which clip of the validation list")
    parser.add_argument("--seed", type=int, default=0, help="the tube mask's seed")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    model, config = load_trained_model(args.checkpoint, device)
    data = config["data"]
    if not data.get("val_list"):
        data["val_list"] = data["train_list"]
    loader = _loader(config, "val", DistContext(0, 1, 0, device), 0)
    for batch in loader:
        if args.index < batch["video"].shape[0]:
            clip = batch["video"][args.index]
            break
        args.index -= batch["video"].shape[0]
    else:
        raise SystemExit("--index is past the end of the validation list")
    mean, std = data.get("mean", model.mean), data.get("std", model.std)
    views = reconstruct(model, clip.to(device), mean, std, args.seed)
    save_grid([views["original"], views["masked"], views["reconstruction"]], args.out)
    print(f"wrote {args.out}: original (top), masked input (middle), reconstruction (bottom)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
