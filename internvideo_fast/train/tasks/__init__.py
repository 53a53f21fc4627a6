"""The downstream tasks, one module each. Each of :data:`TASK_RECIPES` has ``train(config, device)`` (the
recipe of ``ivf-train``) and ``evaluate(checkpoint, overrides, device)`` (``ivf-eval --task NAME``); each of
:data:`DEMO_TASKS` has ``demo(out_dir, device)`` (``ivf demo --task NAME``), returning its metric and the
metric of chance."""

from __future__ import annotations

import importlib

from internvideo_fast.train.config import TASK_RECIPES

DEMO_TASKS = ("tal", "open_set", "stal", "vqa")


def task_module(name: str):
    if name not in DEMO_TASKS:
        raise ValueError(f"unknown downstream task {name!r}; expected one of {DEMO_TASKS}")
    return importlib.import_module(f"internvideo_fast.train.tasks.{name}")


def train_task(config: dict, device: str | None = None) -> dict:
    """``ivf-train`` for a downstream recipe, under the run-folder rules of every recipe: a folder that holds
    a run is not overwritten without ``train.overwrite`` (these recipes train in one go: no resume), and the
    resolved config is saved beside the checkpoint."""
    from internvideo_fast.errors import ConfigError
    from internvideo_fast.train import run_folder
    from internvideo_fast.train.config import to_yaml

    if config["train"].get("resume"):
        raise ConfigError(f"train.resume: recipe {config['recipe']!r} trains in one go and does not resume",
                          hint="--overwrite starts the run afresh")
    run_folder.check_output_dir(config["train"], None)
    run_folder.prepare_output_dir(config, to_yaml)
    return task_module(config["recipe"]).train(config, device)


def evaluate_task(name: str, checkpoint: str, overrides: list[str], device: str | None = None) -> dict:
    return task_module(name).evaluate(checkpoint, overrides, device)


def demo_task(name: str, out_dir: str, device: str | None = None) -> dict:
    return task_module(name).demo(out_dir, device)
