"""The training loop behind `ivf-train`: recipes ``mae_pretrain``, ``vl_pretrain`` (video-text contrastive +
caption on `path<TAB>caption` lists; the contrastive loss gathers every rank's pairs), ``finetune``,
``supervised_postpretrain`` (action labels for either encoder: VideoMAE or UniFormerV2) and ``cma`` (frozen
backbones, CMA + head trained: the optimizer only ever sees trainable parameters).

One loop for both: model from the registry, AdamW (fused on CUDA) on parameter groups, warmup + cosine lr
scaled by global batch / 256, bf16 autocast on CUDA (fp32 on CPU; ``precision: fp16`` adds a GradScaler),
gradient clipping, DDP under torchrun, checkpoints written atomically every `save_every` steps and at the end
(the run folder's rules and layout: :mod:`internvideo_fast.train.run_folder`), validation every
``eval_every_epochs`` epochs (keeping the best), and ``resume: auto`` that continues exactly where a run
stopped: model, optimizer, step and the data loader's position within its epoch are restored, and every random
draw of a step (tube masks, mixup, dropout, drop path) is keyed on the step. Log lines give the elapsed time
and the ETA (remaining steps x the recent time per step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from internvideo_fast.errors import ConfigError, UserError
from internvideo_fast.models import create_model
from internvideo_fast.models.checkpoint import save_atomically
from internvideo_fast.progress import RecentRate, format_duration
from internvideo_fast.train import run_folder
from internvideo_fast.train.config import TASK_RECIPES, to_yaml, validate_config
from internvideo_fast.train.distributed import DistContext, all_reduce_mean, cleanup, init_distributed
from internvideo_fast.train.mixup import VideoMixup
from internvideo_fast.train.optim import build_optimizer, learning_rate, restore_mode, set_learning_rate
from internvideo_fast.train.run_folder import CHECKPOINT_NAME, MetricsLog
from internvideo_fast.train.step import (
    CLASSIFICATION_RECIPES, GraphedTrainStep, TrainStep, resolve_cuda_graph, step_inputs,
)


def _num_classes(model, config: dict) -> int:
    for source in (config["model_args"].get("num_classes"), getattr(model, "num_classes", None),
                   getattr(getattr(model, "cfg", None), "num_classes", None)):
        if source:
            return int(source)
    raise ValueError("cannot tell the model's class count: set model_args.num_classes")


def _load_parts(model, parts: dict, ctx: DistContext, strict: bool = True) -> None:
    """``pretrained_parts: {attribute: checkpoint}``: load checkpoints into sub-modules, e.g. a CMA model's
    ``masked_encoder`` (VideoMAE) and ``multimodal_encoder`` (UniFormerV2; the video tower of a video-text
    checkpoint, ``visual.*``, loads too), each with the loader of its family and strictly unless
    ``load.strict: false``: a checkpoint of another model (a VideoMAE file as the multimodal backbone) or of
    another size is a CheckpointError naming the part and the file."""
    from internvideo_fast.errors import CheckpointError, ConfigError
    from internvideo_fast.models.checkpoint import load_pretrained

    for attribute, path in parts.items():
        module = model
        for name in attribute.split("."):
            if not hasattr(module, name):
                raise ConfigError(f"pretrained_parts.{attribute}: {type(module).__name__} has no part {name!r}")
            module = getattr(module, name)
        try:
            report = load_pretrained(module, path, strict=strict)
        except CheckpointError as error:
            raise CheckpointError(f"pretrained_parts.{attribute}: {error.message}", error.hint) from error
        if ctx.is_main:
            print(f"{attribute}: {report}")


def _data_config(config: dict, split: str):
    from internvideo_fast.data import DataConfig

    fields = dict(config["data"])
    list_file = fields.pop("train_list" if split == "train" else "val_list", None)
    fields.pop("val_list" if split == "train" else "train_list", None)
    if list_file is None:
        raise ConfigError(f"data.{split}_list is required")
    return DataConfig(list_file=list_file, train=split == "train", **fields)


def _loader(config: dict, split: str, ctx: DistContext, epoch: int, start_step: int = 0,
            device_feed: bool = False):
    """`split`'s loader; with `device_feed` its batches are made for :func:`_device_feed` (the torch loader's
    video pinned and unnormalized, as uint8)."""
    from internvideo_fast.data import build_loader

    cfg = _data_config(config, split)
    if device_feed:
        cfg = dataclasses.replace(cfg, normalize_on_device=True,
                                  pin_memory=True if cfg.pin_memory is None else cfg.pin_memory)
    return build_loader(cfg, split=split, rank=ctx.rank, world_size=ctx.world_size,
                        seed=config["train"]["seed"] + 1000 * epoch, start_step=start_step)


def _device_feed(loader, ctx: DistContext):
    """The training batches on a GPU: copied from pinned memory on a side stream two batches ahead of the step,
    the video normalized there (:class:`~internvideo_fast.data.DevicePrefetcher`), so neither the copy nor
    the normalization waits on the host between steps. On a CPU the loader's batches as they are (normalized
    here if the loader leaves them uint8)."""
    from internvideo_fast.data import DevicePrefetcher

    if ctx.device.type != "cuda" and not loader.cfg.normalize_on_device:
        return loader
    return DevicePrefetcher(loader, ctx.device, depth=2, normalize=loader.cfg.normalization_constants())


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


def train(config: dict, device: str | None = None) -> dict:
    """Runs `config` (checked against internvideo_fast/train/config.py's schema); returns the per-step losses
    and the final evaluation (fine-tuning) of rank 0."""
    config = validate_config(config)
    if config["recipe"] in TASK_RECIPES:  # the downstream tasks' recipes live in train/tasks/
        from internvideo_fast.train.tasks import train_task

        return train_task(config, device)
    if config["data"]["train_list"] is None:
        raise ConfigError("data.train_list is required: the list of training videos")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available", hint="--device cpu")
    if config["train"]["eval_every_epochs"] and not (config["recipe"] in CLASSIFICATION_RECIPES
                                                      and config["data"]["val_list"]):
        raise ConfigError("train.eval_every_epochs needs a classification recipe "
                          f"({', '.join(CLASSIFICATION_RECIPES)}) and data.val_list")
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
    amp = MixedPrecision(train_cfg["precision"], ctx.device)
    resume_from = run_folder.resolve_resume(train_cfg)
    run_folder.check_output_dir(train_cfg, resume_from)
    if ctx.is_main:
        run_folder.prepare_output_dir(config, to_yaml)
    seed = train_cfg["seed"]
    torch.manual_seed(seed + ctx.rank)
    random.seed(seed + ctx.rank)
    np.random.seed(seed + ctx.rank)

    strict = config.get("load", {}).get("strict", True)
    model = create_model(config["model"], pretrained=config.get("pretrained"), strict=strict,
                         **config["model_args"]).to(ctx.device)
    finetune = config["recipe"] in CLASSIFICATION_RECIPES
    _load_parts(model, config.get("pretrained_parts") or {}, ctx, strict=strict)
    _check_text_length(model, config)
    batch_size = config["data"].get("batch_size", 8)
    global_batch = batch_size * ctx.world_size
    optim_cfg["lr"] = optim_cfg["base_lr"] * global_batch / 256
    graphed = resolve_cuda_graph(train_cfg["cuda_graph"], config["recipe"], ctx.device, train_cfg["compile"],
                                 loss_scaling=amp.scaler.is_enabled())
    optimizer = build_optimizer(model, optim_cfg, ctx.device, graph_ready=graphed)
    wrapped = _wrap_ddp(model, ctx, graphed) if ctx.world_size > 1 else model
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
    if resume_from is not None:
        checkpoint = torch.load(resume_from, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = checkpoint["step"]
        _set_rng_state(checkpoint["rng"][min(ctx.rank, len(checkpoint["rng"]) - 1)])
        amp.load_state_dict(checkpoint.get("scaler"))
        restore_mode(optimizer, ctx.device, graph_ready=graphed)
        if ctx.is_main:
            print(f"resumed from {resume_from} at step {step}")

    # No autocast weight cache under a CUDA graph: casts cached at capture would not follow the weights.
    train_step = TrainStep(wrapped, optimizer, config["recipe"], parameters=model.parameters(),
                           mask_ratio=train_cfg["mask_ratio"], clip_grad=optim_cfg.get("clip_grad"),
                           autocast=lambda: amp.autocast(cache_enabled=not graphed), scaler=amp.scaler,
                           compiled=bool(train_cfg["compile"]))
    if graphed:
        train_step = GraphedTrainStep(train_step, distributed=ctx.world_size > 1,
                                      log=print if ctx.is_main else (lambda line: None))
    metrics = _RunLogs(output_dir, ctx, train_cfg["tensorboard"], step)
    validate_every = train_cfg["eval_every_epochs"]
    saved_step = -1
    losses: list[float] = []
    pending_losses: list[torch.Tensor] = []
    loader, batches, batches_epoch, known_bad = None, None, -1, {}
    cut_captions: set[int] = set()
    device_feed = ctx.device.type == "cuda"
    model.train()
    tick, clips_since = time.perf_counter(), 0
    pace = RecentRate(stop_step, start=step)
    while step < stop_step:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        if batches_epoch != epoch:
            known_bad = _report_bad_videos(loader if batches_epoch >= 0 else None, batches_epoch, ctx, known_bad)
            loader = _loader(config, "train", ctx, epoch, start_step=step_in_epoch, device_feed=device_feed)
            loader.remember_bad(known_bad)
            if mixup is not None:  # a label beyond the head: an error naming the list line, not an index error
                loader.check_labels(mixup.num_classes)
            batches, batches_epoch = iter(_device_feed(loader, ctx)), epoch
        batch = next(batches)
        if batch.get("captions_cut"):
            _report_cut_captions(batch["captions_cut"], loader, config, ctx, cut_captions)
        lr = learning_rate(step, total_steps, optim_cfg["lr"], optim_cfg["min_lr"], optim_cfg["warmup_steps"])
        set_learning_rate(optimizer, lr)
        draw = step_seed(seed, step) + ctx.rank
        # Every random draw of the step (dropout, drop path, mixup) comes from the step's own seed, so no
        # other consumer of the global generator (a data loader's iterator) can shift a resumed run.
        # A replayed graph draws from the generator's state at replay, so this seeds it too.
        torch.manual_seed(draw)
        inputs = step_inputs(batch, config["recipe"], ctx.device, draw, mixup)
        loss = train_step(inputs)  # forward, backward, clipping, optimizer step; a copy of the loss
        step += 1
        clips_since += inputs["video"].shape[0] * ctx.world_size
        # Losses stay on the device until a log line needs them: reading each one would make the host
        # wait for the GPU every step, so the next step's launches could not overlap this step's kernels.
        pending_losses.append(all_reduce_mean(loss))
        if step % train_cfg["log_every"] == 0 or step == stop_step:
            losses += torch.stack(pending_losses).tolist()
            pending_losses.clear()
            loss_value = losses[-1]
        if ctx.is_main and (step % train_cfg["log_every"] == 0 or step == stop_step):
            now = time.perf_counter()
            rate = clips_since / max(now - tick, 1e-9)
            pace.update(step, now)
            print(f"step {step}/{stop_step} epoch {epoch} loss {loss_value:.4f} lr {lr:.3e} clips/s {rate:.1f} "
                  f"elapsed {format_duration(pace.elapsed())} eta {format_duration(pace.eta())}", flush=True)
            metrics.log({"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, "clips_per_s": rate})
            tick, clips_since = now, 0
        improved = False
        if validate_every and step % (validate_every * steps_per_epoch) == 0 and step < stop_step:
            improved = metrics.validate(model, config, step)
        if improved or (train_cfg["save_every"] and step % train_cfg["save_every"] == 0 and step < stop_step):
            _save(model, optimizer, step, config, ctx, output_dir, amp)
            saved_step = step
            if improved and ctx.is_main:
                run_folder.keep_as_best(output_dir, step)
    known_bad = _report_bad_videos(loader, batches_epoch, ctx, known_bad)
    if saved_step != step:
        _save(model, optimizer, step, config, ctx, output_dir, amp)
    if cut_captions and ctx.is_main:
        shard = " of rank 0's shard" if ctx.world_size > 1 else ""
        print(f"{len(cut_captions)} captions{shard} were longer than data.max_text_len = "
              f"{config['data']['max_text_len']} tokens and were cut to it")
    result = {"losses": losses, "steps": step, "bad_videos": known_bad, "captions_cut": len(cut_captions)}
    if finetune and config["data"]["val_list"] and ctx.is_main:
        if metrics.validate(model, config, step, result, broadcast=False):
            run_folder.keep_as_best(output_dir, step)
    metrics.close()
    return result


class MixedPrecision:
    """``train.precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16``, ``fp32``, or ``fp16``:
    fp16 autocast with a GradScaler (the loss is scaled so small gradients do not underflow fp16's range;
    steps whose gradients overflow are skipped and the scale lowered). fp16 runs on CUDA only."""

    def __init__(self, precision: str, device: torch.device, allow_cpu_fp16: bool = False):
        if precision == "fp16" and device.type != "cuda" and not allow_cpu_fp16:
            raise ConfigError("train.precision=fp16 is supported on CUDA only",
                              hint="on CPU use bf16 or fp32")
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self, cache_enabled: bool = True):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache_enabled)

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def load_state_dict(self, state: dict | None) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


class _RunLogs:
    """Rank 0's ``metrics.csv`` and ``eval.csv`` (rows past ``start_step`` dropped first: they belong to a
    run that went further or to another branch), and validation with the best top-1 so far."""

    def __init__(self, output_dir: Path, ctx: DistContext, tensorboard: bool, start_step: int):
        self.ctx, self.best_top1 = ctx, None
        if ctx.is_main:
            for name in (run_folder.METRICS_NAME, run_folder.EVAL_NAME):
                run_folder.truncate_rows(output_dir / name, start_step)
            self.best_top1 = run_folder.best_value(output_dir / run_folder.EVAL_NAME, "top1")
        self.metrics = MetricsLog(output_dir / run_folder.METRICS_NAME, ctx.is_main, tensorboard, start_step)
        self.evals = MetricsLog(output_dir / run_folder.EVAL_NAME, ctx.is_main, False)

    def log(self, row: dict) -> None:
        self.metrics.log(row)

    def validate(self, model, config: dict, step: int, result: dict | None = None,
                 broadcast: bool = True) -> bool:
        """Rank 0 evaluates the validation list (into ``result["eval"]`` if given) and logs it; returns, on
        every rank (with ``broadcast``), whether top-1 beat the best so far."""
        improved = False
        if self.ctx.is_main:
            from internvideo_fast.eval.evaluate import evaluate

            loader = _loader(config, "val", DistContext(0, 1, 0, self.ctx.device), 0)
            scores = evaluate(model, loader, self.ctx.device)
            model.train()
            print(f"validation at step {step}: top1 {scores['top1']:.3f} top5 {scores['top5']:.3f} "
                  f"over {scores['videos']} videos ({scores['dropped']} of {scores['listed']} listed could not "
                  "be scored)", flush=True)
            self.evals.log({"step": step, "top1": scores["top1"], "top5": scores["top5"]})
            improved = self.best_top1 is None or scores["top1"] > self.best_top1
            if improved:
                self.best_top1 = scores["top1"]
            if result is not None:
                result["eval"] = scores
        if broadcast and self.ctx.world_size > 1:
            box = [improved]
            torch.distributed.broadcast_object_list(box, src=0)
            improved = box[0]
        return improved

    def close(self) -> None:
        self.metrics.close()


def _wrap_ddp(model, ctx: DistContext, graphed: bool):
    """DDP; for a captured step it is built on a side stream, as PyTorch's CUDA-graph notes require."""
    if not (graphed and ctx.device.type == "cuda"):
        return DistributedDataParallel(model)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        wrapped = DistributedDataParallel(model, device_ids=[ctx.device.index])
    torch.cuda.current_stream().wait_stream(stream)
    return wrapped


def _check_text_length(model, config: dict) -> None:
    """A video-text run's captions must fit the text tower and the caption decoder (their positions)."""
    if not config["data"]["text"]:
        return
    length = config["data"]["max_text_len"]
    for part in ("text", "caption_decoder"):
        context = getattr(getattr(model, part, None), "context_length", None)
        if context is not None and length > context:
            raise ConfigError(f"data.max_text_len = {length} is longer than the model's {part} takes "
                              f"({context} positions)", hint=f"set data.max_text_len <= {context}")


def _report_cut_captions(indices: list[int], loader, config: dict, ctx: DistContext, seen: set[int]) -> None:
    """Names the first caption cut to ``data.max_text_len`` (CLIP's truncation) and remembers every one, so
    the run ends with their count."""
    if not seen and ctx.is_main:
        record = loader.dataset.records[indices[0]]
        print(f"the caption of {record.path} in {config['data']['train_list']} is longer than "
              f"data.max_text_len = {config['data']['max_text_len']} tokens and is cut to it (CLIP's "
              "truncation); the run ends with the count of such captions")
    seen.update(indices)


def _report_bad_videos(loader, epoch: int, ctx: DistContext, known: dict[str, str]) -> dict[str, str]:
    """The end-of-epoch summary of the files the loader could not use that earlier epochs had not met (the
    loader logs each when it meets it; the next epoch's loader remembers them, so they are neither decoded
    nor reported again). Returns every bad file known so far."""
    if loader is None or not hasattr(loader, "bad_videos"):
        return known
    bad = loader.bad_videos()
    new = {path: reason for path, reason in bad.items() if path not in known}
    if new:
        print(f"epoch {epoch} rank {ctx.rank}: {len(new)} bad video(s) replaced or skipped:", flush=True)
        for path, reason in sorted(new.items()):
            print(f"  {path}: {reason}", flush=True)
    return {**known, **bad}


def _save(model, optimizer, step: int, config: dict, ctx: DistContext, output_dir: Path,
          amp: MixedPrecision | None = None) -> None:
    """Every rank's RNG state is gathered so each continues its own stream; rank 0 writes
    ``checkpoint-<step>.pth``, points ``checkpoint.pth`` at it and drops the checkpoints past
    ``train.keep_checkpoints``."""
    rng = _rng_state()
    states = [rng]
    if ctx.world_size > 1:
        states = [None] * ctx.world_size
        torch.distributed.all_gather_object(states, rng)
    if ctx.is_main:
        path = run_folder.step_checkpoint(output_dir, step)
        save_atomically(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": config,
             "rng": states, "scaler": amp.state_dict() if amp is not None else None},
            path,
        )
        run_folder.link_atomically(path, output_dir / CHECKPOINT_NAME)
        run_folder.retain_checkpoints(output_dir, step, config["train"]["keep_checkpoints"])


def load_trained_model(path: str | Path, device: str | torch.device = "cpu", model: str | None = None,
                       overrides: list[str] | tuple[str, ...] = (), strict: bool | None = None):
    """``(model in eval mode, config)`` from a checkpoint.

    A checkpoint written by `train` carries its config, which names the model (`overrides`, ``key.sub=value``,
    apply to it; `model` must then be None or the same name). Any other checkpoint (an official
    ``{'model': ...}`` file) needs `model`, a registered name: the default config gets ``model`` and the
    `overrides` (``model_args.num_classes=400``, ``data.val_list=...``) and the file loads through the
    model family's loader, strictly unless `strict` (default: the config's ``load.strict``) is False."""
    from internvideo_fast.errors import CheckpointError, UserError
    from internvideo_fast.models.checkpoint import LoadReport, load_matching, load_pretrained, read_checkpoint
    from internvideo_fast.train.config import apply_override, load_config

    checkpoint = read_checkpoint(path)
    trained = isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), dict) and "model" in checkpoint
    if trained:
        config = checkpoint["config"]
        if model is not None and model != config["model"]:
            raise UserError(f"{path} is a checkpoint of {config['model']!r}, not of {model!r}",
                            hint="leave out --model for checkpoints written by ivf-train")
        for override in overrides:
            apply_override(config, override)
    else:
        if model is None:
            raise CheckpointError(f"checkpoint {path} was not written by ivf-train (it has no config)",
                                  hint="name its model: --model videomae_vit_base_patch16 "
                                       "model_args.num_classes=400")
        config = load_config(None, [f"model={model}", *overrides])
    if strict is None:
        strict = (config.get("load") or {}).get("strict", True)
    built = create_model(config["model"], **config["model_args"])
    if trained:
        load_matching(built, checkpoint["model"], LoadReport(str(path)), strict)
    else:
        print(load_pretrained(built, checkpoint, strict, source=str(path)))
    return built.to(device).eval(), config
