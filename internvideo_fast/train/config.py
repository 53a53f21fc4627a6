"""Training configs: YAML files (configs/) with `key.sub=value` overrides from the command line, merged
over :data:`DEFAULTS`. Values of overrides are parsed as YAML (numbers, booleans, lists, null)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-5` (no dot) as a string; configs mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse(text: str):
    return yaml.load(text, Loader=_Loader)

DEFAULTS: dict[str, Any] = {
    "recipe": "mae_pretrain",  # mae_pretrain | vl_pretrain | finetune | supervised_postpretrain | cma
    "model": "videomae_pretrain_vit_base_patch16",
    "model_args": {},
    "pretrained": None,
    "pretrained_parts": {},  # {sub-module attribute: checkpoint}, e.g. a CMA model's backbones
    "data": {},  # fields of internvideo_fast.data.DataConfig, plus train_list / val_list
    "optim": {
        "base_lr": 1.5e-4,  # scaled by global batch / 256 (the official rule)
        "min_lr": 1e-6,
        "weight_decay": 0.05,
        "betas": [0.9, 0.95],
        "warmup_steps": 0,
        "layer_decay": None,  # e.g. 0.75 for fine-tuning
        "clip_grad": None,
    },
    "train": {
        "epochs": 1,
        "max_steps": None,  # stop early (demos, tests)
        "mask_ratio": 0.9,
        "mixup": 0.0,
        "cutmix": 0.0,
        "label_smoothing": 0.0,
        "seed": 0,
        "log_every": 10,
        "save_every": 0,  # steps; 0 = only at the end
        "eval_every_epochs": 0,
        "output_dir": "runs/default",
        "resume": None,  # None | auto | path
        "precision": "auto",  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
        "compile": False,
        # auto: the run-time tuners' choices are kept in output_dir (IVF_AUTOTUNE_CACHE, unless set), so a
        # resumed run runs the same kernel plans; null: each process tunes afresh.
        "tuning_cache": "auto",
        "tensorboard": True,
    },
}


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(config: dict, override: str) -> None:
    if "=" not in override:
        raise ValueError(f"override must look like key.sub=value, got {override!r}")
    dotted, raw = override.split("=", 1)
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {key} is not a section")
    node[keys[-1]] = _parse(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        loaded = _parse(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config must be a mapping")
        config = _merge(config, loaded)
    for override in overrides:
        apply_override(config, override)
    recipes = ("mae_pretrain", "vl_pretrain", "finetune", "supervised_postpretrain", "cma", "tal", "open_set", "stal", "vqa")
    if config["recipe"] not in recipes:
        raise ValueError(f"recipe must be one of {recipes}, got {config['recipe']!r}")
    return config
