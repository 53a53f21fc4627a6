"""The downstream tasks' recipes (``recipe: tal | open_set``): each module trains, evaluates and demos one task.

Every task module has ``train(config, device) -> dict`` (used by ``ivf-train``), ``evaluate(checkpoint,
overrides, device) -> dict`` (``ivf-eval --task NAME``) and ``demo(out_dir, device) -> dict`` (``ivf demo
--task NAME``)."""

from __future__ import annotations

import importlib

TASK_RECIPES = ("tal", "open_set")


def task_module(name: str):
    if name not in TASK_RECIPES:
        raise ValueError(f"unknown downstream task {name!r}; expected one of {TASK_RECIPES}")
    return importlib.import_module(f"internvideo_fast.train.tasks.{name}")


def train_task(config: dict, device: str | None = None) -> dict:
    return task_module(config["recipe"]).train(config, device)


def evaluate_task(name: str, checkpoint: str, overrides: list[str], device: str | None = None) -> dict:
    return task_module(name).evaluate(checkpoint, overrides, device)


def demo_task(name: str, out_dir: str, device: str | None = None) -> dict:
    return task_module(name).demo(out_dir, device)
