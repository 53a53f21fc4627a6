"""What the downstream task recipes share: section defaults, the device, AdamW with warmup + cosine, logging,
and checkpoints that carry their config (so ``ivf-eval --task`` rebuilds the model from the file alone)."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import torch

from internvideo_fast.errors import ConfigError
from internvideo_fast.models.checkpoint import save_atomically
from internvideo_fast.train.optim import learning_rate, set_learning_rate

CHECKPOINT_NAME = "checkpoint.pth"


def section(config: dict, name: str, defaults: dict) -> dict:
    """``config[name]`` over ``defaults``; a key the task does not know is a ConfigError naming it."""
    given = config.get(name) or {}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: not a key of recipe {config['recipe']!r}",
                          hint=f"known: {', '.join(sorted(defaults))}")
    merged = copy.deepcopy(defaults)
    merged.update(given)
    return merged


def task_sections(config: dict, data_defaults: dict, train_defaults: dict, optim_defaults: dict,
                  model_defaults: dict | None = None) -> tuple[dict, dict, dict, dict | None]:
    """A task recipe's ``(data, train, optim, model_args)`` over its defaults. ``train`` and ``optim`` accept
    every key of the training schema (the resolved config carries them all) but keep the task's own;
    ``model_args`` is None when the task takes none (`model_defaults` None)."""
    from internvideo_fast.train.config import DEFAULTS

    def shared(name: str, defaults: dict) -> dict:
        given = section(config, name, {**{k: None for k in DEFAULTS[name]}, **defaults})
        return {**defaults, **{k: v for k, v in given.items() if k in defaults and v is not None}}

    data = section(config, "data", data_defaults)
    model = None
    if model_defaults is not None:
        model = section({"recipe": config["recipe"], "model_args": config.get("model_args")}, "model_args",
                        model_defaults)
    return data, shared("train", train_defaults), shared("optim", optim_defaults), model


def require(values: dict, prefix: str, *keys: str) -> None:
    for key in keys:
        if values.get(key) in (None, ""):
            raise ConfigError(f"{prefix}.{key} is required")


def pick_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Optimizer:
    """AdamW on the trainable parameters (no decay on vectors) with linear warmup and a half-cosine to
    ``min_lr``; ``step(loss)`` does backward, clipping and the update, and keeps the loss (on the device:
    :func:`finish` reads them all at once)."""

    def __init__(self, model: torch.nn.Module, total_steps: int, lr: float, weight_decay: float = 0.05,
                 warmup_steps: int = 0, min_lr: float = 0.0, clip_grad: float | None = 1.0):
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
        self.parameters = decay + no_decay
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=lr)
        self.total_steps, self.lr, self.min_lr, self.warmup = total_steps, lr, min_lr, warmup_steps
        self.clip_grad = clip_grad
        self.steps = 0
        self.losses: list[torch.Tensor] = []

    def step(self, loss: torch.Tensor) -> float:
        lr = learning_rate(self.steps, self.total_steps, self.lr, self.min_lr, self.warmup)
        set_learning_rate(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad)
        self.optimizer.step()
        self.losses.append(loss.detach())
        self.steps += 1
        return lr

    @property
    def done(self) -> bool:
        return self.steps >= self.total_steps

    def log_due(self, every: int) -> bool:
        """Whether the step just taken gets a log line: every `every` steps and the last."""
        return self.steps % every == 0 or self.steps == self.total_steps


def task_optimizer(model: torch.nn.Module, steps_per_epoch: int, train_cfg: dict, optim: dict) -> Optimizer:
    """The task's :class:`Optimizer` over ``train.epochs`` epochs of `steps_per_epoch` steps, at most
    ``train.max_steps``, with the ``optim`` section's settings."""
    total = train_cfg["epochs"] * max(1, steps_per_epoch)
    total = min(total, train_cfg["max_steps"] or total)
    return Optimizer(model, total, optim["base_lr"], optim["weight_decay"], optim["warmup_steps"], optim["min_lr"],
                     optim["clip_grad"])


def finish(model: torch.nn.Module, config: dict, optimizer: Optimizer, output_dir: str | Path) -> dict:
    """Saves the checkpoint; the run's ``{"losses", "steps", "checkpoint"}``."""
    checkpoint = save_checkpoint(model, config, optimizer.steps, output_dir)
    return {"losses": loss_values(optimizer.losses), "steps": optimizer.steps, "checkpoint": str(checkpoint)}


def loss_values(losses: list[torch.Tensor]) -> list[float]:
    """The step losses, kept on the device during training (a read per step would make the host wait for
    every step), as numbers in one read."""
    return torch.stack(losses).float().tolist() if losses else []


def save_checkpoint(model: torch.nn.Module, config: dict, step: int, output_dir: str | Path, extra: dict | None = None) -> Path:
    path = Path(output_dir) / CHECKPOINT_NAME
    save_atomically({"model": model.state_dict(), "config": config, "step": step, **(extra or {})}, path)
    return path


def load_checkpoint(path: str | Path, recipe: str) -> dict:
    from internvideo_fast.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    found = checkpoint.get("config", {}).get("recipe")
    if found != recipe:
        raise CheckpointError(f"{path}: a {found!r} checkpoint, not {recipe!r}")
    return checkpoint


def checkpoint_config(path: str | Path, recipe: str, overrides: list[str]) -> tuple[dict, dict]:
    """``(checkpoint, config)`` of a `recipe` checkpoint for ``ivf-eval --task``, the `overrides` applied to
    the config it carries."""
    from internvideo_fast.train.config import apply_override

    checkpoint = load_checkpoint(path, recipe)
    config = checkpoint["config"]
    for override in overrides:
        apply_override(config, override)
    return checkpoint, config
