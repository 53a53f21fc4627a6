"""``recipe: open_set``: open-set action recognition with an evidential (Dirichlet) head on clip features.

The head trains on videos of the known classes over features from ``ivf-extract`` (mean over each video's
windows), with the backbone frozen; evaluation scores every validation video's uncertainty ``u = K / S``
and reports the open-set AUROC (unknown videos as positives) and the closed-set accuracy on the known ones.

Config::

    recipe: open_set
    model_args: {hidden: 512, dropout: 0.1, activation: exp}
    data:
      features: feats/           # <video id>.npy, [num_windows, C] or [C]
      train_list: train.txt      # `video label` lines, known classes 0..K-1 only
      val_list: val.txt          # a label of -1 (or >= K) marks a video of an unknown class
      num_known: null            # K; default: the largest training label + 1
      batch_size: 64
      loss: log                  # log | digamma | mse (models/evidential.py)
      annealing_steps: 500       # KL weight min(1, step / annealing_steps)
    optim: {base_lr: 1e-3, weight_decay: 0.05}
    train: {epochs: 50, max_steps: null, seed: 0, output_dir: runs/open_set}
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from internvideo_fast.errors import ConfigError, UserError
from internvideo_fast.eval.recognition_metrics import closed_set_accuracy, open_set_auroc
from internvideo_fast.models.evidential import EvidentialHead, evidential_loss
from internvideo_fast.train.tasks.common import (
    checkpoint_config, finish, pick_device, require, seed_everything, task_optimizer,
    task_sections,
)

DATA_DEFAULTS = {"features": None, "train_list": None, "val_list": None, "num_known": None, "batch_size": 64,
                 "loss": "log", "annealing_steps": 500}
TRAIN_DEFAULTS = {"epochs": 50, "max_steps": None, "seed": 0, "log_every": 50, "output_dir": "runs/open_set"}
OPTIM_DEFAULTS = {"base_lr": 1e-3, "min_lr": 0.0, "weight_decay": 0.05, "warmup_steps": 0, "clip_grad": 1.0}
MODEL_DEFAULTS = {"hidden": 0, "dropout": 0.0, "activation": "exp"}




def load_features(features_dir: str, list_file: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, C] float32, labels [N])`` of a ``video label`` list; features are the mean over a
    video's windows."""
    from internvideo_fast.data.lists import read_video_list

    try:
        records = read_video_list(list_file)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    if not records:
        raise UserError(f"{list_file}: no videos")
    rows = []
    for record in records:
        path = Path(features_dir) / f"{Path(record.path).stem}.npy"
        if not path.is_file():
            raise UserError(f"{path}: no features for {record.path!r} of {list_file}", hint="run ivf-extract first")
        array = np.load(path).astype(np.float32)
        if array.ndim not in (1, 2) or array.size == 0:
            raise UserError(f"{path}: features must be [num_windows, C] or [C], got shape {array.shape}")
        rows.append(array.mean(0) if array.ndim == 2 else array)
    if len({row.shape for row in rows}) != 1:
        raise UserError(f"{list_file}: the feature files have different widths")
    return torch.from_numpy(np.stack(rows)), torch.tensor([r.label for r in records], dtype=torch.int64)


def _build(model_args: dict, in_dim: int, num_known: int) -> EvidentialHead:
    return EvidentialHead(in_dim, num_known, model_args["hidden"], model_args["dropout"], model_args["activation"])


def train(config: dict, device: str | None = None) -> dict:
    data, train_cfg, optim, model_args = task_sections(config, DATA_DEFAULTS, TRAIN_DEFAULTS, OPTIM_DEFAULTS,
                                                       MODEL_DEFAULTS)
    require(data, "data", "features", "train_list")
    device = pick_device(device)
    seed_everything(train_cfg["seed"])
    features, labels = load_features(data["features"], data["train_list"])
    num_known = data["num_known"] or int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_known:
        raise ConfigError(f"data.train_list: training labels must be known classes 0..{num_known - 1}")
    config = json.loads(json.dumps(config))
    config["data"] = {**data, "num_known": num_known}
    config["model_args"] = {**model_args, "in_dim": features.shape[1]}
    model = _build(model_args, features.shape[1], num_known).to(device)
    batch = min(data["batch_size"], len(labels))
    optimizer = task_optimizer(model, len(labels) // batch, train_cfg, optim)
    generator = torch.Generator().manual_seed(train_cfg["seed"])
    features, labels = features.to(device), labels.to(device)
    model.train()
    while not optimizer.done:
        order = torch.randperm(len(labels), generator=generator).to(device)
        for first in range(0, len(order) - batch + 1, batch):
            index = order[first:first + batch]
            kl_weight = min(1.0, optimizer.steps / max(1, data["annealing_steps"]))
            loss = evidential_loss(model(features[index]), labels[index], kl_weight, data["loss"])
            lr = optimizer.step(loss)
            if optimizer.log_due(train_cfg["log_every"]):
                print(f"open_set step {optimizer.steps}/{optimizer.total_steps} loss {loss:.4f} kl weight "
                      f"{kl_weight:.2f} lr {lr:.2e}", flush=True)
            if optimizer.done:
                break
    result = finish(model, config, optimizer, train_cfg["output_dir"])
    if data["val_list"]:
        result["eval"] = evaluate_model(model, config, device)
        print(f"open_set validation: AUROC {result['eval']['auroc']:.4f} closed-set accuracy "
              f"{result['eval']['closed_set_accuracy']:.4f} ({result['eval']['known']} known, "
              f"{result['eval']['unknown']} unknown videos)", flush=True)
    return result


def evaluate_model(model: EvidentialHead, config: dict, device) -> dict:
    data = config["data"]
    features, labels = load_features(data["features"], data["val_list"])
    model.eval()
    predicted, uncertainty = model.predict(features.to(device))
    unknown = (labels < 0) | (labels >= data["num_known"])
    return {"auroc": open_set_auroc(uncertainty.cpu().tolist(), unknown.tolist()),
            "closed_set_accuracy": closed_set_accuracy(predicted.cpu().tolist(), labels.tolist(), unknown.tolist()),
            "known": int((~unknown).sum()), "unknown": int(unknown.sum())}


def evaluate(checkpoint_path: str, overrides: list[str], device: str | None = None) -> dict:
    """``ivf-eval --task open_set --checkpoint runs/open_set/checkpoint.pth [data.val_list=...]``."""
    checkpoint, config = checkpoint_config(checkpoint_path, "open_set", overrides)
    require(config["data"], "data", "val_list")
    args = config["model_args"]
    model = _build(args, args["in_dim"], config["data"]["num_known"])
    model.load_state_dict(checkpoint["model"])
    device = pick_device(device)
    return evaluate_model(model.to(device), config, device)


def make_demo_data(root: str | Path, known: int = 5, unknown: int = 3, channels: int = 32, windows: int = 4,
                   train_per_class: int = 40, val_per_class: int = 20, noise: float = 1.6,
                   seed: int = 0) -> tuple[Path, Path, Path]:
    """Clip features of ``known + unknown`` classes (a prototype each, plus per-window noise); training
    lists only the known classes, validation lists both (unknown ones with label -1)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    features_dir = root / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    prototypes = rng.normal(size=(known + unknown, channels)).astype(np.float32)
    train_lines, val_lines = [], []
    for label in range(known + unknown):
        count = (train_per_class if label < known else 0) + val_per_class
        for index in range(count):
            name = f"class{label}_{index:03d}"
            x = prototypes[label] + rng.normal(scale=noise, size=(windows, channels)).astype(np.float32)
            np.save(features_dir / f"{name}.npy", x)
            is_train = label < known and index < train_per_class
            (train_lines if is_train else val_lines).append(f"{name} {label if label < known else -1}")
    (root / "train.txt").write_text("\n".join(train_lines) + "\n")
    (root / "val.txt").write_text("\n".join(val_lines) + "\n")
    return features_dir, root / "train.txt", root / "val.txt"


def demo(out_dir: str, device: str | None = None, steps: int = 400) -> dict:
    out = Path(out_dir) / "open_set"
    features, train_list, val_list = make_demo_data(out)
    config = {"recipe": "open_set", "model_args": {"hidden": 64, "dropout": 0.1},
              "data": {"features": str(features), "train_list": str(train_list), "val_list": str(val_list),
                       "batch_size": 32, "annealing_steps": 200},
              "optim": {"base_lr": 2e-3}, "train": {"epochs": 1000, "max_steps": steps, "log_every": 100,
                                                    "output_dir": str(out / "run")}}
    start = time.perf_counter()
    result = train(config, device)["eval"]
    summary = {"task": "open_set", "metric": "open-set AUROC", "value": result["auroc"], "chance": 0.5,
               "closed_set_accuracy": result["closed_set_accuracy"], "closed_set_chance": 1 / 5,
               "seconds": time.perf_counter() - start}
    print(f"open-set demo: AUROC {result['auroc']:.3f} (chance 0.5), closed-set accuracy "
          f"{result['closed_set_accuracy']:.3f} (chance 0.2), {summary['seconds']:.0f} s", flush=True)
    return summary
