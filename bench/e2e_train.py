"""End-to-end training steps: clips/s, the step split (forward / backward / optimizer) and MFU, our fused ops
(`auto` backends) against the PyTorch references (`reference` backends), in one run.

    python bench/e2e_train.py                 # CPU: a micro config
    python bench/e2e_train.py --device cuda   # GPU: ViT-B/16 pretraining (16x224x224, ratio 0.9), fine-tuning,
                                              # the CMA step (frozen bf16 backbones) and the vl_pretrain step

`cases(device)` feeds `make gpu-check` (whole steps as one timed call each). Data loading is not in these
steps (synthetic clips already on the device): bench the loaders separately."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Case  # noqa: E402

from internvideo_fast.models import create_model  # noqa: E402
from internvideo_fast.ops import use_backend  # noqa: E402

H100_BF16_PEAK_TFLOPS = 989.0  # dense, SXM (the spec sheet; the measured 8k GEMM rate is about 800)
RECIPES = ("pretrain", "finetune", "cma", "vl_pretrain")


def _setup(device: torch.device, recipe: str, quick: bool):
    on_gpu = device.type == "cuda"
    if recipe in ("cma", "vl_pretrain"):
        return _setup_multimodal(device, recipe, quick)
    if on_gpu:
        size, frames, batch = 224, 16, (8 if quick else 32)
        name = "videomae_pretrain_vit_base_patch16" if recipe == "pretrain" else "videomae_vit_base_patch16"
    else:
        size, frames, batch = 64, 8, 4
        name = "videomae_pretrain_vit_micro_patch16" if recipe == "pretrain" else "videomae_vit_micro_patch16"
    kwargs = dict(img_size=size, num_frames=frames) | ({} if recipe == "pretrain" else {"num_classes": 400})
    model = create_model(name, **kwargs).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=on_gpu)
    video = torch.randn(batch, 3, frames, size, size, device=device)
    labels = torch.randint(0, 400, (batch,), device=device)
    return model, optimizer, video, labels, f"{name},B={batch},{frames}x{size}x{size}"


def _setup_multimodal(device: torch.device, recipe: str, quick: bool):
    """CMA: frozen VideoMAE-B + UniFormerV2-B (bf16 under no_grad) + trainable CMA; vl_pretrain: UniFormerV2-B
    + CLIP text with the contrastive and caption losses. Tiny models on CPU."""
    on_gpu = device.type == "cuda"
    batch = (8 if quick else 16) if on_gpu else 2
    size, frames = (224, 8) if on_gpu else (32, 4)
    if recipe == "cma":
        name = "internvideo_cma_b16" if on_gpu else "internvideo_cma_tiny"
        kwargs = {"num_classes": 400} | ({"mae_args": {"num_frames": frames}, "backbone_dtype": torch.bfloat16} if on_gpu else {})
    else:
        name = "internvideo_mm_b16" if on_gpu else "internvideo_mm_tiny"
        kwargs = {}
    model = create_model(name, **kwargs).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=on_gpu)
    video = torch.randn(batch, 3, frames, size, size, device=device)
    if recipe == "cma":
        labels = torch.randint(0, 400, (batch,), device=device)
    else:
        from internvideo_fast.models.tokenizer import tokenize

        labels = tokenize([f"a person doing action number {i}" for i in range(batch)]).to(device)
    return model, optimizer, video, labels, f"{name},B={batch},{frames}x{size}x{size}"


def _step_parts(model, optimizer, video, labels, recipe: str, device: torch.device):
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    seed = torch.tensor(0, device=device)

    def forward():
        with autocast:
            if recipe == "vl_pretrain":
                return model(video, labels)["loss"]
            if recipe == "pretrain":
                return model(video, mask_ratio=0.9, seed=seed)["loss"]
            return torch.nn.functional.cross_entropy(model(video).float(), labels)

    def backward(loss):
        loss.backward()

    def step():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return forward, backward, step


def _flops_per_step(model, video, recipe: str) -> float | None:
    """Matmul FLOPs of forward + backward (3x forward) for the ViT blocks (2*params-per-token*tokens plus
    attention 4*n^2*D per layer), the standard MFU count."""
    if recipe in ("cma", "vl_pretrain"):
        return None  # several towers of different shapes: time only
    encoder = getattr(model, "encoder", model)
    D, depth = encoder.embed_dim, len(encoder.blocks)
    total_tokens = encoder.patch_embed.num_tokens
    tokens = round(total_tokens * (1 - 0.9)) if recipe == "pretrain" else total_tokens
    per_clip = depth * (24 * tokens * D * D + 4 * tokens * tokens * D)
    if recipe == "pretrain":
        d = model.decoder.head.in_features
        per_clip += len(model.decoder.blocks) * (24 * total_tokens * d * d + 4 * total_tokens**2 * d)
    return 3.0 * per_clip * video.shape[0]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_split(device: torch.device, recipe: str, backend: str, steps: int = 10, quick: bool = False) -> dict:
    with use_backend(backend):
        model, optimizer, video, labels, label = _setup(device, recipe, quick)
        forward, backward, step = _step_parts(model, optimizer, video, labels, recipe, device)
        for _ in range(3):  # warm up (Triton compiles, cuBLAS heuristics)
            backward(forward())
            step()
        totals = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        for _ in range(steps):
            _sync(device)
            t0 = time.perf_counter()
            loss = forward()
            _sync(device)
            t1 = time.perf_counter()
            backward(loss)
            _sync(device)
            t2 = time.perf_counter()
            step()
            _sync(device)
            t3 = time.perf_counter()
            totals["forward"] += t1 - t0
            totals["backward"] += t2 - t1
            totals["optimizer"] += t3 - t2
        step_s = sum(totals.values()) / steps
        flops = _flops_per_step(model, video, recipe)
        row = {"recipe": recipe, "backend": backend, "model": label, "step_ms": step_s * 1e3,
               "clips_per_s": video.shape[0] / step_s, "tflops": flops / step_s / 1e12 if flops else float("nan")}
        row.update({f"{k}_ms": v / steps * 1e3 for k, v in totals.items()})
        if device.type == "cuda" and flops:
            row["mfu"] = row["tflops"] / H100_BF16_PEAK_TFLOPS
        return row


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    out = []
    # The dry run of make gpu-check (quick, CPU) times the two VideoMAE steps only.
    recipes = RECIPES if not (quick and device.type == "cpu") else ("pretrain", "finetune")
    for recipe in recipes:
        for backend in ("reference", "auto"):
            with use_backend(backend):
                model, optimizer, video, labels, label = _setup(device, recipe, quick)
            forward, backward, step = _step_parts(model, optimizer, video, labels, recipe, device)

            def run(forward=forward, backward=backward, step=step, backend=backend):
                with use_backend(backend):
                    backward(forward())
                    step()

            flops = _flops_per_step(model, video, recipe)
            out.append(Case(f"train_step_{recipe}", label, "ours" if backend == "auto" else "reference", run,
                            baseline=backend == "reference", flops=int(flops) if flops else None))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = [measure_split(device, recipe, backend, args.steps, args.quick)
            for recipe in RECIPES for backend in ("reference", "auto")]
    header = f"{'recipe':<12} {'backend':<10} {'step ms':>9} {'fwd':>8} {'bwd':>8} {'optim':>8} {'clips/s':>8} {'TFLOP/s':>8}"
    print(header)
    for row in rows:
        print(f"{row['recipe']:<12} {row['backend']:<10} {row['step_ms']:>9.2f} {row['forward_ms']:>8.2f} "
              f"{row['backward_ms']:>8.2f} {row['optimizer_ms']:>8.2f} {row['clips_per_s']:>8.1f} {row['tflops']:>8.3f}"
              + (f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""))
    for row in rows[::2]:
        print(f"{row['recipe']}: {row['model']}")
    for recipe in RECIPES:
        ref, ours = (r for r in rows if r["recipe"] == recipe)
        print(f"{recipe}: ours / reference = {ref['step_ms'] / ours['step_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
