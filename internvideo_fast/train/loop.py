"""The training loop behind `ivf-train`: recipes ``mae_pretrain``, ``vl_pretrain`` (video-text contrastive +
caption on `path<TAB>caption` lists; the contrastive loss gathers every rank's pairs), ``finetune``,
``supervised_postpretrain`` (action labels for either encoder: VideoMAE or UniFormerV2) and ``cma`` (frozen
backbones, CMA + head trained: the optimizer only ever sees trainable parameters).

One loop for both: model from the registry, AdamW (fused on CUDA) on parameter groups, warmup + cosine lr
scaled by global batch / 256, bf16 autocast on CUDA (fp32 on CPU), gradient clipping, DDP under torchrun,
checkpoints written atomically every `save_every` steps and at the end, and ``resume: auto`` that continues
exactly where a run stopped: model, optimizer, step and the data loader's position within its epoch are
restored, and every random draw of a step (tube masks, mixup, dropout, drop path) is keyed on the step.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from internvideo_fast.models import create_model
from internvideo_fast.models.checkpoint import save_atomically
from internvideo_fast.models.tokenizer import tokenize
from internvideo_fast.train.distributed import DistContext, all_reduce_mean, cleanup, init_distributed
from internvideo_fast.train.mixup import VideoMixup, soft_cross_entropy
from internvideo_fast.train.optim import build_optimizer, learning_rate, set_learning_rate

CHECKPOINT_NAME = "checkpoint.pth"
CLASSIFICATION_RECIPES = ("finetune", "supervised_postpretrain", "cma")


def _num_classes(model, config: dict) -> int:
    for source in (config["model_args"].get("num_classes"), getattr(model, "num_classes", None),
                   getattr(getattr(model, "cfg", None), "num_classes", None)):
        if source:
            return int(source)
    raise ValueError("cannot tell the model's class count: set model_args.num_classes")


def _load_parts(model, parts: dict, ctx: DistContext) -> None:
    """``pretrained_parts: {attribute: checkpoint}``: load checkpoints into sub-modules, e.g. a CMA model's
    ``masked_encoder`` (VideoMAE) and ``multimodal_encoder.model`` (UniFormerV2)."""
    from internvideo_fast.models.checkpoint import load_pretrained, read_state_dict

    for attribute, path in parts.items():
        module = model
        for name in attribute.split("."):
            module = getattr(module, name)
        if type(module).__name__ == "UniFormerV2":
            from internvideo_fast.models.uniformerv2 import load_checkpoint

            state = read_state_dict(path)
            if any(key.startswith("visual.") for key in state):  # a video-text model's video tower
                state = {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}
            report = load_checkpoint(module, state, strict=False)
        else:
            report = load_pretrained(module, path)
        if ctx.is_main:
            print(f"{attribute}: {report}")


def _data_config(config: dict, split: str):
    from internvideo_fast.data import DataConfig

    fields = dict(config["data"])
    list_file = fields.pop("train_list" if split == "train" else "val_list", None)
    fields.pop("val_list" if split == "train" else "train_list", None)
    if list_file is None:
        raise ValueError(f"data.{split}_list is required")
    return DataConfig(list_file=list_file, train=split == "train", **fields)


def _loader(config: dict, split: str, ctx: DistContext, epoch: int, start_step: int = 0):
    from internvideo_fast.data import build_loader

    return build_loader(
        _data_config(config, split), split=split, rank=ctx.rank, world_size=ctx.world_size,
        seed=config["train"]["seed"] + 1000 * epoch, start_step=start_step,
    )


def step_seed(seed: int, step: int) -> int:
    """The seed of every random draw in one training step (masks, mixup): a function of the step alone,
    so a resumed run draws what the uninterrupted run drew."""
    return (seed * 1_000_003 + step * 7919 + 17) % (2**62)


def _rng_state() -> dict:
    """Every generator's state as tensors and plain values, so checkpoints load with weights_only=True."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _find_resume(config: dict) -> Path | None:
    resume = config["train"]["resume"]
    if not resume:
        return None
    path = Path(config["train"]["output_dir"]) / CHECKPOINT_NAME if resume == "auto" else Path(resume)
    return path if path.exists() else None


class MetricsLog:
    """A CSV of metrics (appended, so resumed runs continue it) and TensorBoard scalars when available."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = path
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                self.writer = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(config: dict, device: str | None = None) -> dict:
    """Runs `config` (see internvideo_fast/train/config.py); returns the per-step losses and the final
    evaluation (fine-tuning) of rank 0."""
    ctx = init_distributed(device)
    try:
        with tuning_cache(config):
            return _train(config, ctx)
    finally:
        cleanup()


@contextlib.contextmanager
def tuning_cache(config: dict):
    """``train.tuning_cache: auto``: the fused ops' run-time tuners keep their choices in
    ``output_dir/tuning-choices.json`` (``IVF_AUTOTUNE_CACHE``, see
    internvideo_fast/ops/framework/autotuning.py) for the duration of the run, unless the variable is already
    set: a resumed run, and every rank, then runs the plans the first run chose."""
    setting = config["train"].get("tuning_cache", "auto")
    if setting not in ("auto", None):
        raise ValueError(f"train.tuning_cache must be auto or null, got {setting!r}")
    if setting is None or os.environ.get("IVF_AUTOTUNE_CACHE"):
        yield
        return
    os.environ["IVF_AUTOTUNE_CACHE"] = str(Path(config["train"]["output_dir"]) / "tuning-choices.json")
    try:
        yield
    finally:
        os.environ.pop("IVF_AUTOTUNE_CACHE", None)


def _train(config: dict, ctx: DistContext) -> dict:
    train_cfg, optim_cfg = config["train"], dict(config["optim"])
    output_dir = Path(train_cfg["output_dir"])
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(config, indent=1))
    seed = train_cfg["seed"]
    torch.manual_seed(seed + ctx.rank)
    random.seed(seed + ctx.rank)
    np.random.seed(seed + ctx.rank)

    model = create_model(config["model"], pretrained=config.get("pretrained"), **config["model_args"]).to(ctx.device)
    finetune = config["recipe"] in CLASSIFICATION_RECIPES
    _load_parts(model, config.get("pretrained_parts") or {}, ctx)
    batch_size = config["data"].get("batch_size", 8)
    global_batch = batch_size * ctx.world_size
    optim_cfg["lr"] = optim_cfg["base_lr"] * global_batch / 256
    optimizer = build_optimizer(model, optim_cfg, ctx.device)
    wrapped = DistributedDataParallel(model) if ctx.world_size > 1 else model
    if train_cfg["compile"]:
        # The fused ops are torch.library custom ops, so the whole model captures as one graph; the
        # checkpoint keeps `model`'s own parameter names. "reduce-overhead" adds CUDA graphs.
        mode = train_cfg["compile"] if isinstance(train_cfg["compile"], str) else None
        wrapped = torch.compile(wrapped, mode=mode)
    mixup = VideoMixup(_num_classes(model, config), train_cfg["mixup"], train_cfg["cutmix"],
                       train_cfg["label_smoothing"]) if finetune else None

    steps_per_epoch = len(_loader(config, "train", ctx, 0))
    if steps_per_epoch == 0:
        raise ValueError("the training list yields no full batch: lower data.batch_size or add clips")
    total_steps = train_cfg["epochs"] * steps_per_epoch
    stop_step = min(total_steps, train_cfg["max_steps"] or total_steps)

    step = 0
    resume_from = _find_resume(config)
    if resume_from is not None:
        checkpoint = torch.load(resume_from, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = checkpoint["step"]
        _set_rng_state(checkpoint["rng"][min(ctx.rank, len(checkpoint["rng"]) - 1)])
        if ctx.is_main:
            print(f"resumed from {resume_from} at step {step}")

    precision = train_cfg["precision"]
    use_bf16 = precision == "bf16" or (precision == "auto" and ctx.device.type == "cuda")
    autocast = (lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    metrics = MetricsLog(output_dir / "metrics.csv", ctx.is_main, train_cfg["tensorboard"])
    losses: list[float] = []
    pending_losses: list[torch.Tensor] = []
    loader, batches, batches_epoch = None, None, -1
    model.train()
    tick, clips_since = time.perf_counter(), 0
    while step < stop_step:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        if batches_epoch != epoch:
            _report_bad_videos(loader if batches_epoch >= 0 else None, batches_epoch, ctx)
            loader = _loader(config, "train", ctx, epoch, start_step=step_in_epoch)
            batches, batches_epoch = iter(loader), epoch
        batch = next(batches)
        video = batch["video"].to(ctx.device, non_blocking=True)
        lr = learning_rate(step, total_steps, optim_cfg["lr"], optim_cfg["min_lr"], optim_cfg["warmup_steps"])
        set_learning_rate(optimizer, lr)
        draw = step_seed(seed, step) + ctx.rank
        # Every random draw of the step (dropout, drop path, mixup) comes from the step's own seed, so no
        # other consumer of the global generator (a data loader's iterator) can shift a resumed run.
        torch.manual_seed(draw)
        with autocast():
            if finetune:
                labels = batch["label"].to(ctx.device)
                generator = torch.Generator().manual_seed(draw)
                video, targets = mixup(video, labels, generator)
                loss = soft_cross_entropy(wrapped(video), targets)
            elif config["recipe"] == "vl_pretrain":
                tokens = tokenize(batch["caption"]).to(ctx.device)
                loss = wrapped(video, tokens)["loss"]
            else:
                loss = wrapped(video, mask_ratio=train_cfg["mask_ratio"],
                               seed=torch.full((), draw, dtype=torch.int64, device=ctx.device))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim_cfg.get("clip_grad"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg["clip_grad"])
        optimizer.step()
        step += 1
        clips_since += video.shape[0] * ctx.world_size
        # Losses stay on the device until a log line needs them: reading each one would make the host
        # wait for the GPU every step, so the next step's launches could not overlap this step's kernels.
        pending_losses.append(all_reduce_mean(loss.detach().float()))
        if step % train_cfg["log_every"] == 0 or step == stop_step:
            losses += torch.stack(pending_losses).tolist()
            pending_losses.clear()
            loss_value = losses[-1]
        if ctx.is_main and (step % train_cfg["log_every"] == 0 or step == stop_step):
            elapsed = time.perf_counter() - tick
            rate = clips_since / max(elapsed, 1e-9)
            print(f"step {step}/{stop_step} epoch {epoch} loss {loss_value:.4f} lr {lr:.3e} clips/s {rate:.1f}", flush=True)
            metrics.log({"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, "clips_per_s": rate})
            tick, clips_since = time.perf_counter(), 0
        if train_cfg["save_every"] and step % train_cfg["save_every"] == 0 and step < stop_step:
            _save(model, optimizer, step, config, ctx, output_dir)
    _report_bad_videos(loader, batches_epoch, ctx)
    _save(model, optimizer, step, config, ctx, output_dir)
    result = {"losses": losses, "steps": step}
    if finetune and config["data"].get("val_list") and ctx.is_main:
        from internvideo_fast.eval.evaluate import evaluate

        result["eval"] = evaluate(model, _loader(config, "val", DistContext(0, 1, 0, ctx.device), 0), ctx.device)
        print(f"validation: top1 {result['eval']['top1']:.3f} top5 {result['eval']['top5']:.3f} "
              f"over {result['eval']['videos']} videos")
        MetricsLog(output_dir / "eval.csv", True, False).log(
            {"step": step, "top1": result["eval"]["top1"], "top5": result["eval"]["top5"]}
        )
    metrics.close()
    return result


def _report_bad_videos(loader, epoch: int, ctx: DistContext) -> None:
    """The end-of-epoch summary of files the loader could not use (each was logged once when met)."""
    if loader is None or not hasattr(loader, "bad_videos"):
        return
    bad = loader.bad_videos()
    if bad:
        print(f"epoch {epoch} rank {ctx.rank}: {len(bad)} bad video(s) replaced or skipped:", flush=True)
        for path, reason in sorted(bad.items()):
            print(f"  {path}: {reason}", flush=True)


def _save(model, optimizer, step: int, config: dict, ctx: DistContext, output_dir: Path) -> None:
    """Every rank's RNG state is gathered so each continues its own stream; rank 0 writes."""
    rng = _rng_state()
    states = [rng]
    if ctx.world_size > 1:
        states = [None] * ctx.world_size
        torch.distributed.all_gather_object(states, rng)
    if ctx.is_main:
        save_atomically(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": config,
             "rng": states},
            output_dir / CHECKPOINT_NAME,
        )


def load_trained_model(path: str | Path, device: str | torch.device = "cpu"):
    """A model from a checkpoint written by `train` (its config names the model)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model(checkpoint["config"]["model"], **checkpoint["config"]["model_args"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint["config"]
