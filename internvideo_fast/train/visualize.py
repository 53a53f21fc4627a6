"""`ivf-visualize-mae --checkpoint runs/pre/checkpoint.pth --out recon.png`: a PNG grid of a clip's frames
(top), the masked input the encoder saw (middle) and the reconstruction (bottom).

The clip is masked at the training run's ratio (``train.mask_ratio`` of the checkpoint's config; ``--mask-ratio``
overrides it) and loaded and denormalized as the run's loader normalized it (``data.normalization`` or
``data.mean`` / ``data.std``).

The decoder predicts each masked tube's pixels normalized by the tube's own mean and std (the official
target), so the reconstruction is denormalized with the original tube's statistics, as the official
visualization does; visible tubes are shown as they were."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from internvideo_fast.errors import UserError, run_cli
from internvideo_fast.ops import mae_targets


def tubes_to_video(tubes: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int, channels: int) -> torch.Tensor:
    """Inverse of the target layout: ``[N, t*p*p*C]`` in ``(p0 p1 p2 c)`` order -> ``[C, T, H, W]``."""
    gt, gh, gw = grid
    x = tubes.reshape(gt, gh, gw, tubelet, patch, patch, channels)
    return x.permute(6, 0, 3, 1, 4, 2, 5).reshape(channels, gt * tubelet, gh * patch, gw * patch)


@torch.no_grad()
def reconstruct(model, video: torch.Tensor, mean, std, seed: int = 0,
                mask_ratio: float | None = None) -> dict[str, torch.Tensor]:
    """For one normalized clip ``[C, T, H, W]``: original, masked input and reconstruction in [0, 1].
    ``mask_ratio`` None: the model's default."""
    model.eval()
    out = model(video[None], mask_ratio=mask_ratio, seed=seed)
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


def run_normalization(config: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the run's loader normalized clips with: ``data.mean`` / ``data.std`` when given, else
    the ``data.normalization`` preset (as :class:`~internvideo_fast.data.DataConfig` resolves them)."""
    from internvideo_fast.data.transforms import mean_std

    data = config.get("data", {})
    preset_mean, preset_std = mean_std(data.get("normalization") or "imagenet")
    return tuple(data.get("mean") or preset_mean), tuple(data.get("std") or preset_std)


def visualize_checkpoint(checkpoint: str | Path, out: str | Path, index: int = 0, seed: int = 0,
                         mask_ratio: float | None = None, device: str = "cpu") -> Path:
    """Writes the reconstruction PNG of clip ``index`` of the run's validation list (its training list when
    it has none), masked at ``mask_ratio`` (None: the run's ``train.mask_ratio``)."""
    from internvideo_fast.train.distributed import DistContext
    from internvideo_fast.train.loop import _loader, load_trained_model

    device = torch.device(device)
    model, config = load_trained_model(checkpoint, device)
    if not hasattr(model, "normalize_targets"):
        raise UserError(f"{checkpoint} holds a {config['model']} model, not a mae_pretrain one")
    if mask_ratio is None:
        mask_ratio = config.get("train", {}).get("mask_ratio")
    if mask_ratio is not None and not 0 < mask_ratio < 1:
        raise UserError(f"the mask ratio must be in (0, 1), got {mask_ratio}")
    data = config["data"]
    if not data.get("val_list"):
        data["val_list"] = data["train_list"]
    loader = _loader(config, "val", DistContext(0, 1, 0, device), 0)
    remaining = index
    for batch in loader:
        if remaining < batch["video"].shape[0]:
            clip = batch["video"][remaining]
            break
        remaining -= batch["video"].shape[0]
    else:
        raise UserError(f"--index {index} is past the end of the list {data['val_list']}")
    mean, std = run_normalization(config)
    views = reconstruct(model, clip.to(device), mean, std, seed, mask_ratio)
    save_grid([views["original"], views["masked"], views["reconstruction"]], out)
    return Path(out)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ivf-visualize-mae", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a mae_pretrain checkpoint written by ivf-train")
    parser.add_argument("--out", default="mae_reconstruction.png")
    parser.add_argument("--index", type=int, default=0, help="which clip of the validation list")
    parser.add_argument("--seed", type=int, default=0, help="the tube mask's seed")
    parser.add_argument("--mask-ratio", type=float, help="default: the training run's train.mask_ratio")
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist")
    out = visualize_checkpoint(args.checkpoint, args.out, args.index, args.seed, args.mask_ratio)
    print(f"wrote {out}: original (top), masked input (middle), reconstruction (bottom)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("ivf-visualize-mae", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
