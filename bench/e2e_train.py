"""End-to-end training steps, side by side: the official VideoMAE code as released, the PyTorch references
(eager and under torch.compile reduce-overhead) and our fused ops (eager, as one replayed CUDA graph of the
whole step, and compiled): ms/step, clips/s, TFLOP/s and MFU, peak memory, the largest batch that fits.

    python bench/e2e_train.py                 # CPU: micro configs (the split into forward / backward / step)
    python bench/e2e_train.py --device cuda   # GPU: ViT-B/16 pretraining (16x224x224, ratio 0.9, B = 32 and
                                              # 64), fine-tuning, the CMA step (frozen bf16 backbones) and the
                                              # vl_pretrain step, every provider; then the table

Every provider runs the same step: forward, backward, gradient clipping (1.0), AdamW; ours and the
references through internvideo_fast.train.step (bf16 autocast, tensor learning rates), the official one
through bench/official_videomae.py (fp16 autocast, GradScaler, host NumPy masks, ``loss.item()``; for
pretraining only: the official fine-tuning, CMA and video-text code is not reproduced here). MFU is the
step's matmul TFLOP/s over the bf16 matmul rate measured in the same run (``train matmul rate``).

`cases(device)` feeds `make gpu-check` (whole steps as one timed call each) and bench/gpu_focus.py;
`late_cases` holds the B = 64 and compiled rows (cut first when the stage runs out of time); `extra_rows`
gives the measured matmul rate, each timed step's peak memory, the largest batches and the GPU-time
breakdown of the graphed pretraining step (bench/profile_step.py). Data loading is not in these steps
(synthetic clips already on the device): bench the loaders separately."""

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
from internvideo_fast.train.step import GraphedTrainStep, TrainStep  # noqa: E402

H100_BF16_PEAK_TFLOPS = 989.0  # dense, SXM (the spec sheet; the measured 8k GEMM rate is about 800)
RECIPES = ("pretrain", "finetune", "cma", "vl_pretrain")
TRAIN_RECIPE = {"pretrain": "mae_pretrain", "finetune": "finetune", "cma": "cma", "vl_pretrain": "vl_pretrain"}
PROVIDERS = ("official", "reference", "reference compiled", "ours", "ours graphed", "ours compiled")
CLIP_GRAD = 1.0


def _spec(device_type: str, recipe: str, quick: bool, batch: int | None = None):
    """(model name, constructor arguments, batch, frames, side) of `recipe`'s benchmark step: ViT-B/16 sizes
    on CUDA, micro models on CPU. CMA: frozen VideoMAE-B + UniFormerV2-B (bf16 under no_grad) + trainable
    CMA; vl_pretrain: UniFormerV2-B + CLIP text with the contrastive and caption losses."""
    on_gpu = device_type == "cuda"
    if recipe in ("cma", "vl_pretrain"):
        default = (8 if quick else 16) if on_gpu else 2
        size, frames = (224, 8) if on_gpu else (32, 4)
        if recipe == "cma":
            name = "internvideo_cma_b16" if on_gpu else "internvideo_cma_tiny"
            kwargs = {"num_classes": 400} | (
                {"mae_args": {"num_frames": frames}, "backbone_dtype": torch.bfloat16} if on_gpu else {})
        else:
            name, kwargs = ("internvideo_mm_b16" if on_gpu else "internvideo_mm_tiny"), {}
        return name, kwargs, batch or default, frames, size
    if on_gpu:
        size, frames, default = 224, 16, (8 if quick else 32)
        name = "videomae_pretrain_vit_base_patch16" if recipe == "pretrain" else "videomae_vit_base_patch16"
    else:
        size, frames, default = (32, 4, 2) if quick else (64, 8, 4)
        name = "videomae_pretrain_vit_micro_patch16" if recipe == "pretrain" else "videomae_vit_micro_patch16"
    kwargs = dict(img_size=size, num_frames=frames) | ({} if recipe == "pretrain" else {"num_classes": 400})
    return name, kwargs, batch or default, frames, size


def _label(device_type: str, recipe: str, quick: bool, batch: int | None = None) -> str:
    name, _, batch, frames, size = _spec(device_type, recipe, quick, batch)
    return f"{name},B={batch},{frames}x{size}x{size}"


def _setup(device: torch.device, recipe: str, quick: bool, batch: int | None = None):
    name, kwargs, batch, frames, size = _spec(device.type, recipe, quick, batch)
    model = create_model(name, **kwargs).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    video = torch.randn(batch, 3, frames, size, size, device=device)
    if recipe == "vl_pretrain":
        from internvideo_fast.models.tokenizer import tokenize

        labels = tokenize([f"a person doing action number {i}" for i in range(batch)]).to(device)
    else:
        labels = torch.randint(0, 400, (batch,), device=device)
    return model, optimizer, video, labels, _label(device.type, recipe, quick, batch)


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


# ----------------------------------------------------------------------------------------------------
# Whole steps, one provider each
# ----------------------------------------------------------------------------------------------------
PEAK_MEMORY: dict[tuple[str, str, str], float] = {}  # (op, size, provider) -> peak GiB of the step's run
_ACTIVE: list = []  # the one built step alive at a time, so graphs and models of earlier cases are freed


def _release() -> None:
    _ACTIVE.clear()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _step_inputs(video, labels, recipe: str, device: torch.device) -> dict:
    """The step's device tensors (see internvideo_fast/train/step.py): soft one-hot targets stand in for
    Mixup's output, so every provider's step is the same math."""
    if recipe in ("finetune", "cma"):
        return {"video": video, "targets": torch.nn.functional.one_hot(labels, 400).float()}
    if recipe == "vl_pretrain":
        return {"video": video, "tokens": labels}
    return {"video": video, "seed": torch.zeros((), dtype=torch.int64, device=device)}


def build_step(device: torch.device, recipe: str, provider: str, batch: int | None = None, quick: bool = False):
    """A no-argument callable running one whole training step of `provider`, and its model, label and
    FLOPs. The pretraining seed advances every call, so each step draws new masks."""
    backend = "reference" if provider.startswith("reference") else "auto"
    with use_backend(backend):
        model, _, video, labels, label = _setup(device, recipe, quick, batch)
    flops = _flops_per_step(model, video, recipe)
    if provider == "official":
        from official_videomae import OfficialPretrainStep, official_from

        if recipe != "pretrain":
            raise ValueError("the official-code baseline covers VideoMAE pretraining only")
        official = official_from(model)
        del model
        optimizer = torch.optim.AdamW(official.parameters(), lr=1e-4)  # timm's create_optimizer: foreach AdamW
        step = OfficialPretrainStep(official, optimizer, mask_ratio=0.9, clip_grad=CLIP_GRAD)
        return (lambda: step(video)), official, label, flops
    from internvideo_fast.train.optim import build_optimizer, set_learning_rate

    graphed, compiled = provider.endswith("graphed"), provider.endswith("compiled")
    # As ivf-train builds it: fused AdamW; graph-ready (tensor lr, capturable) for the captured step only.
    optimizer = build_optimizer(model, {"lr": 1e-4, "weight_decay": 0.05, "betas": (0.9, 0.95)}, device,
                                graph_ready=graphed)
    set_learning_rate(optimizer, 1e-4)
    on_gpu = device.type == "cuda"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu,  # noqa: E731
                                      cache_enabled=not graphed)
    runner = torch.compile(model, mode="reduce-overhead" if on_gpu else None) if compiled else model
    train_step = TrainStep(runner, optimizer, TRAIN_RECIPE[recipe], parameters=model.parameters(), mask_ratio=0.9,
                           clip_grad=CLIP_GRAD, autocast=autocast, compiled=compiled)
    if graphed:
        train_step = GraphedTrainStep(train_step, log=lambda line: print(f"[e2e] {label}: {line}", flush=True))
    inputs = _step_inputs(video, labels, recipe, device)

    def run():
        with use_backend(backend):
            if "seed" in inputs:
                inputs["seed"].add_(1)
            return train_step(inputs)

    return run, model, label, flops


class _LazyStep:
    """Builds its step on the first call (freeing the previous case's), then runs it; records the peak
    memory of its build and calls."""

    def __init__(self, device, recipe, provider, batch, quick, key):
        self.args, self.key, self.device, self.fn = (device, recipe, provider, batch, quick), key, device, None

    def __call__(self):
        if self.fn is None:
            _release()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            self.fn = build_step(*self.args)[0]
            _ACTIVE.append(self)
        out = self.fn()
        if self.device.type == "cuda":
            PEAK_MEMORY[self.key] = torch.cuda.max_memory_allocated() / 2**30
        return out


def _label_and_flops(device, recipe, quick, batch):
    """The case's label and matmul FLOPs, from the model built on the meta device (no memory, no time)."""
    name, kwargs, batch, frames, size = _spec(device.type, recipe, quick, batch)
    if recipe in ("cma", "vl_pretrain"):
        return _label(device.type, recipe, quick, batch), None
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    video = torch.empty(batch, 3, frames, size, size, device="meta")
    return _label(device.type, recipe, quick, batch), _flops_per_step(model, video, recipe)


def _case(device, recipe, provider, quick, batch=None) -> Case:
    label, flops = _label_and_flops(device, recipe, quick, batch)
    op = f"train_step_{recipe}"
    return Case(op, label, provider, _LazyStep(device, recipe, provider, batch, quick, (op, label, provider)),
                baseline=provider == ("official" if recipe == "pretrain" else "reference"),
                flops=int(flops) if flops else None)


def _providers(recipe: str, device: torch.device, quick: bool, compiled: bool) -> list[str]:
    chosen = [p for p in PROVIDERS if compiled == p.endswith("compiled")]
    if recipe != "pretrain":
        chosen = [p for p in chosen if p != "official"]
        if quick and device.type == "cpu":  # the dry run: the pretraining step shows every provider
            chosen = [p for p in chosen if p in ("reference", "ours graphed")]
    return chosen


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    """Every recipe (the CPU dry run: the two VideoMAE steps), every eager and graphed provider; the
    pretraining step at B = 32 (B = 64 in `late_cases`)."""
    recipes = RECIPES if not (quick and device.type == "cpu") else ("pretrain", "finetune")
    return [_case(device, recipe, provider, quick) for recipe in recipes
            for provider in _providers(recipe, device, quick, compiled=False)]


def late_cases(device: torch.device, quick: bool = False, compiled_recipes=("pretrain",)) -> list[Case]:
    """ViT-B pretraining at B = 64, then the compiled providers of `compiled_recipes` (torch.compile
    reduce-overhead: a minute or more of compiling each on a GPU, so make gpu-check compiles the pretraining
    step only; left out of the CPU dry run)."""
    if device.type != "cuda":
        return []
    out = [_case(device, "pretrain", provider, quick, batch=64)
           for provider in _providers("pretrain", device, quick, compiled=False)]
    for recipe in compiled_recipes:
        out += [_case(device, recipe, provider, quick) for provider in _providers(recipe, device, quick, compiled=True)]
    return out


def matmul_rate_tflops(device: torch.device, quick: bool = False) -> float:
    """The measured dense matmul rate (bf16 8192^3 on CUDA, fp32 512^3 on CPU): MFU's denominator."""
    from common import time_cpu_ms, time_cuda_ms

    n = (4096 if quick else 8192) if device.type == "cuda" else 256
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    timer = time_cuda_ms if device.type == "cuda" else lambda fn: time_cpu_ms(fn, min_seconds=0.0, min_runs=3)
    ms = timer(lambda: torch.matmul(a, b, out=out))
    return 2 * n**3 / ms / 1e9


def largest_batch(device: torch.device, recipe: str, provider: str = "ours", start: int = 32, limit: int = 1024,
                  budget_s: float = 60.0) -> int | None:
    """The largest power-of-two multiple of `start` whose step runs (twice) without running out of memory."""
    best, batch, deadline = None, start, time.monotonic() + budget_s
    while batch <= limit and time.monotonic() < deadline:
        _release()
        try:
            fn = build_step(device, recipe, provider, batch=batch)[0]
            fn()
            fn()
            torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            fn = None
            _release()
        best, batch = batch, batch * 2
    return best


def extra_rows(device: torch.device, quick: bool = False, largest_batch_recipes=("pretrain",)) -> list[dict]:
    """The measured matmul rate, the peak memory of every step timed so far, on a GPU the largest batch of
    `largest_batch_recipes` (ours, eager; make gpu-check: pretraining only), and the GPU-time breakdown of
    the graphed pretraining step (bench/profile_step.py). The cache-warming run (IVF_AUTOTUNE=compile)
    skips all but the breakdown, whose step it compiles."""
    from internvideo_fast.ops.framework.autotuning import compile_only
    from profile_step import breakdown

    _release()
    if compile_only():
        if device.type == "cuda":
            breakdown(device, quick=quick, steps=1)
        return []
    rows = [{"op": "train matmul rate", "device": str(device), "TFLOP/s": matmul_rate_tflops(device, quick)}]
    rows += [{"op": "train step memory", "step": op, "size": size, "provider": provider, "peak_GiB": round(gib, 2)}
             for (op, size, provider), gib in sorted(PEAK_MEMORY.items())]
    if device.type == "cuda" and not quick:
        for recipe in largest_batch_recipes:
            rows.append({"op": "train largest batch", "recipe": recipe, "provider": "ours",
                         "batch": largest_batch(device, recipe, start=32 if recipe == "pretrain" else 16)})
    rows.append(breakdown(device, quick=quick))
    _release()
    return rows


def summary(rows: list[dict], extras: list[dict]) -> str:
    """ms/step, clips/s, MFU against the measured matmul rate and peak memory, one line per timed step."""
    rate = next((row["TFLOP/s"] for row in extras if row["op"] == "train matmul rate"), None)
    memory = {(row["step"], row["size"], row["provider"]): row["peak_GiB"]
              for row in extras if row["op"] == "train step memory"}
    lines = [f"{'step':<22} {'provider':<19} {'ms/step':>9} {'clips/s':>8} {'MFU':>6} {'peak GiB':>9} {'vs base':>8}  size"]
    for row in rows:
        if not row["op"].startswith("train_step_"):
            continue
        if "ms" not in row:
            lines.append(f"{row['op']:<22} {row['provider']:<19} error: {row.get('error', '')[:70]}")
            continue
        batch = int(row["size"].split("B=")[1].split(",")[0])
        mfu = f"{row['TFLOP/s'] / rate:.1%}" if rate and row.get("TFLOP/s") else "-"
        peak = memory.get((row["op"], row["size"], row["provider"]))
        lines.append(f"{row['op']:<22} {row['provider']:<19} {row['ms']:>9.2f} {batch / row['ms'] * 1e3:>8.1f} {mfu:>6} "
                     f"{peak if peak is not None else '-':>9} {row.get('speedup', 0):>7.2f}x  {row['size']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        import common

        rows = common.measure(cases(device, args.quick) + late_cases(device, args.quick, compiled_recipes=RECIPES),
                              common.time_cuda_ms)
        print(summary(rows, extra_rows(device, args.quick, largest_batch_recipes=RECIPES)))
        return 0
    rows = [measure_split(device, recipe, backend, args.steps, args.quick)
            for recipe in RECIPES for backend in ("reference", "auto")]
    header = f"{'recipe':<12} {'backend':<10} {'step ms':>9} {'fwd':>8} {'bwd':>8} {'optim':>8} {'clips/s':>8} {'TFLOP/s':>8}"
    print(header)
    for row in rows:
        print(f"{row['recipe']:<12} {row['backend']:<10} {row['step_ms']:>9.2f} {row['forward_ms']:>8.2f} "
              f"{row['backward_ms']:>8.2f} {row['optimizer_ms']:>8.2f} {row['clips_per_s']:>8.1f} {row['tflops']:>8.3f}")
    for row in rows[::2]:
        print(f"{row['recipe']}: {row['model']}")
    for recipe in RECIPES:
        ref, ours = (r for r in rows if r["recipe"] == recipe)
        print(f"{recipe}: ours / reference = {ref['step_ms'] / ours['step_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
