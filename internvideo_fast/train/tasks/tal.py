"""``recipe: tal``: temporal action localization with the ActionFormer-style detector on extracted features.

Config (YAML, over train/config.py's defaults)::

    recipe: tal
    model_args: {embed_dim: 256, num_levels: 6, ...}   # ActionFormerConfig fields; input_dim and num_classes
                                                      # are filled from the features and the annotations
    data:
      features: feats/              # <video>.npy [num_windows, C] from ivf-extract
      annotations: thumos14.json    # ActivityNet / THUMOS14-style JSON
      train_subset: validation      # THUMOS14 trains on its validation videos
      val_subset: test
      feature_stride: 4             # source frames between features (ivf-extract --stride)
      feature_span: 16              # source frames one feature covers ((frames - 1) * frame_stride + 1)
      fps: null                     # frames per second; null: each video's "fps" in the annotations
      max_seq_len: 2304             # training crops longer sequences at random
      batch_size: 2
      tious: thumos                 # thumos (0.3:0.1:0.7) | activitynet (0.5:0.05:0.95) | a list
    optim: {base_lr: 1e-4, weight_decay: 0.05, warmup_steps: 0}   # base_lr is the rate itself
    train: {epochs: 30, max_steps: null, seed: 0, log_every: 10, output_dir: runs/tal}

Feature ``i`` covers source frames ``[i * stride, i * stride + span)``, so its time is its centre,
``(i * stride + span / 2) / fps`` seconds: segments convert between seconds and the feature grid with that.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from internvideo_fast.data.annotations import Segment, read_temporal_annotations
from internvideo_fast.errors import ConfigError, UserError
from internvideo_fast.eval.detection_metrics import ACTIVITYNET_TIOUS, THUMOS14_TIOUS, tal_map
from internvideo_fast.models.actionformer import ActionFormer, ActionFormerConfig
from internvideo_fast.train.tasks.common import (
    checkpoint_config, finish, pick_device, require, seed_everything, task_optimizer,
    task_sections,
)

DATA_DEFAULTS = {
    "features": None, "annotations": None, "train_subset": "training", "val_subset": "validation",
    "feature_stride": 4, "feature_span": 16, "fps": None, "max_seq_len": 2304, "batch_size": 2,
    "tious": "thumos",
}
TRAIN_DEFAULTS = {"epochs": 30, "max_steps": None, "seed": 0, "log_every": 10, "output_dir": "runs/tal"}
OPTIM_DEFAULTS = {"base_lr": 1e-4, "min_lr": 0.0, "weight_decay": 0.05, "warmup_steps": 0, "clip_grad": 1.0}


@dataclass
class TALVideo:
    name: str
    features: torch.Tensor  # [C, T]
    segments: torch.Tensor  # [N, 2] feature-grid units
    labels: torch.Tensor  # [N]
    duration: float
    fps: float




def tious_of(value) -> tuple[float, ...]:
    if value == "thumos":
        return THUMOS14_TIOUS
    if value == "activitynet":
        return ACTIVITYNET_TIOUS
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) and 0 < v <= 1 for v in value):
        return tuple(float(v) for v in value)
    raise ConfigError(f"data.tious: expected thumos, activitynet or a list of thresholds in (0, 1], got {value!r}")


def seconds_to_grid(seconds: torch.Tensor, fps: float, stride: int, span: int) -> torch.Tensor:
    return (seconds * fps - span / 2) / stride


def grid_to_seconds(grid: torch.Tensor, fps: float, stride: int, span: int) -> torch.Tensor:
    return (grid * stride + span / 2) / fps


def load_videos(data: dict, subset: str, classes: list[str] | None = None) -> tuple[list[TALVideo], object]:
    """The videos of ``subset`` with their features; a video without a feature file is an error naming it."""
    require(data, "data", "features", "annotations")
    annotations = read_temporal_annotations(data["annotations"], classes)
    chosen = annotations.subset(subset)
    if not chosen:
        raise ConfigError(f"data: no video of subset {subset!r} in {data['annotations']}",
                          hint=f"subsets there: {sorted({v.subset for v in annotations.videos.values()})}")
    videos = []
    for video in chosen:
        path = Path(data["features"]) / f"{video.name}.npy"
        if not path.is_file():
            raise UserError(f"{path}: no features for video {video.name!r} of {data['annotations']}",
                            hint="run ivf-extract over the videos first")
        array = np.load(path)
        if array.ndim != 2 or array.shape[0] == 0:
            raise UserError(f"{path}: features must be [num_windows, C], got shape {array.shape}")
        fps = data["fps"] or video.fps
        if not fps:
            raise ConfigError(f"data.fps is required: video {video.name!r} has no fps in {data['annotations']}")
        seconds = torch.tensor([[s.start, s.end] for s in video.segments], dtype=torch.float32).reshape(-1, 2)
        grid = seconds_to_grid(seconds, fps, data["feature_stride"], data["feature_span"])
        labels = torch.tensor([s.label for s in video.segments], dtype=torch.int64)
        duration = video.duration if math.isfinite(video.duration) else float(
            grid_to_seconds(torch.tensor(float(array.shape[0])), fps, data["feature_stride"], data["feature_span"]))
        videos.append(TALVideo(video.name, torch.from_numpy(array.astype(np.float32)).t().contiguous(), grid,
                               labels, duration, float(fps)))
    return videos, annotations


def _pad_to(length: int, multiple: int) -> int:
    return max(multiple, -(-length // multiple) * multiple)


def _crop(video: TALVideo, max_len: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random ``max_len`` crop of a longer sequence, keeping the segments that overlap it (clipped)."""
    length = video.features.shape[1]
    if length <= max_len:
        return video.features, video.segments, video.labels
    start = rng.randrange(0, length - max_len + 1)
    segments = video.segments - start
    keep = (segments[:, 1] > 0) & (segments[:, 0] < max_len)
    return video.features[:, start:start + max_len], segments[keep].clamp(0, max_len), video.labels[keep]


def collate(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], multiple: int):
    """Pad ``[C, T_b]`` features to one length (a multiple of the pyramid's) with a validity mask."""
    length = _pad_to(max(features.shape[1] for features, _, _ in items), multiple)
    channels = items[0][0].shape[0]
    features = torch.zeros(len(items), channels, length)
    valid = torch.zeros(len(items), length, dtype=torch.bool)
    for b, (x, _, _) in enumerate(items):
        features[b, :, :x.shape[1]] = x
        valid[b, :x.shape[1]] = True
    return features, valid, [s for _, s, _ in items], [l for _, _, l in items]


def build_model(config: dict) -> ActionFormer:
    args = dict(config.get("model_args") or {})
    unknown = sorted(set(args) - set(ActionFormerConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"model_args.{unknown[0]}: not an ActionFormer argument")
    return ActionFormer(**args)


def train(config: dict, device: str | None = None) -> dict:
    data, train_cfg, optim, _ = task_sections(config, DATA_DEFAULTS, TRAIN_DEFAULTS, OPTIM_DEFAULTS)
    device = pick_device(device)
    seed_everything(train_cfg["seed"])
    videos, annotations = load_videos(data, data["train_subset"])
    config = json.loads(json.dumps(config))  # a plain copy that the checkpoint keeps
    config["model_args"] = {**(config.get("model_args") or {}), "input_dim": videos[0].features.shape[0],
                            "num_classes": len(annotations.classes)}
    config["data"] = {**data, "classes": annotations.classes}
    model = build_model(config).to(device)
    batch_size = data["batch_size"]
    optimizer = task_optimizer(model, len(videos) // batch_size, train_cfg, optim)
    rng = random.Random(train_cfg["seed"])
    multiple = model.length_multiple
    max_len = _pad_to(data["max_seq_len"], multiple)
    tick = time.perf_counter()
    model.train()
    while not optimizer.done:
        order = list(range(len(videos)))
        rng.shuffle(order)
        for first in range(0, len(order) - batch_size + 1, batch_size):
            items = [_crop(videos[i], max_len, rng) for i in order[first:first + batch_size]]
            features, valid, segments, labels = collate(items, multiple)
            out = model.loss(features.to(device), valid.to(device), segments, labels)
            lr = optimizer.step(out["loss"])
            if optimizer.log_due(train_cfg["log_every"]):
                print(f"tal step {optimizer.steps}/{optimizer.total_steps} loss {out['loss']:.4f} "
                      f"(cls {out['classification']:.3f} reg {out['regression']:.3f}) lr {lr:.2e} "
                      f"{time.perf_counter() - tick:.0f}s", flush=True)
            if optimizer.done:
                break
    result = finish(model, config, optimizer, train_cfg["output_dir"])
    if data["val_subset"]:
        result["eval"] = evaluate_model(model, config, device)
        print(f"tal validation: mAP {result['eval']['mAP']:.4f} "
              + " ".join(f"{k} {v:.3f}" for k, v in result["eval"].items() if k.startswith("mAP@")), flush=True)
    return result


@torch.no_grad()
def detect_videos(model: ActionFormer, videos: list[TALVideo], data: dict, device) -> list[Segment]:
    """Detections in seconds, clipped to each video's duration."""
    model.eval()
    detections = []
    for video in videos:
        features, valid, _, _ = collate([(video.features, video.segments, video.labels)], model.length_multiple)
        segments, scores, labels = model.detect(features.to(device), valid.to(device))[0]
        seconds = grid_to_seconds(segments.cpu(), video.fps, data["feature_stride"], data["feature_span"])
        seconds = seconds.clamp(0, video.duration)
        for (start, end), score, label in zip(seconds.tolist(), scores.tolist(), labels.tolist()):
            if end > start:
                detections.append(Segment(video.name, start, end, int(label), float(score)))
    return detections


def evaluate_model(model: ActionFormer, config: dict, device) -> dict:
    data = config["data"]
    videos, annotations = load_videos(data, data["val_subset"], data.get("classes"))
    detections = detect_videos(model, videos, data, device)
    result = tal_map(detections, annotations.ground_truth(data["val_subset"]), tious_of(data["tious"]))
    result["videos"] = len(videos)
    result["detections"] = len(detections)
    return result


def evaluate(checkpoint_path: str, overrides: list[str], device: str | None = None) -> dict:
    """``ivf-eval --task tal --checkpoint runs/tal/checkpoint.pth [data.val_subset=test ...]``."""
    checkpoint, config = checkpoint_config(checkpoint_path, "tal", overrides)
    device = pick_device(device)
    model = build_model(config)
    model.load_state_dict(checkpoint["model"])
    result = evaluate_model(model.to(device), config, device)
    result.pop("per_class")
    return result


# ------------------------------------------------------------------------------------------------------
# Demo: generated feature sequences with timed action segments
# ------------------------------------------------------------------------------------------------------
def make_demo_data(root: str | Path, num_classes: int = 3, channels: int = 32, train_videos: int = 48,
                   val_videos: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Feature sequences of 64..160 steps with 1..3 action segments of 6..36 steps: inside a segment the
    features carry their class's prototype (plus noise, ramping in and out over 2 steps), elsewhere noise
    and a shared distractor. Returns ``(features dir, annotations JSON)``; fps 1, stride 1, span 1."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    features_dir = root / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    prototypes = rng.normal(size=(num_classes, channels)).astype(np.float32)
    distractor = rng.normal(size=channels).astype(np.float32)
    names = [f"action_{k}" for k in range(num_classes)]
    database = {}
    for index in range(train_videos + val_videos):
        length = int(rng.integers(64, 161))
        x = rng.normal(scale=1.0, size=(length, channels)).astype(np.float32)
        x += 0.5 * distractor * (rng.random(length)[:, None] < 0.2)
        annotations, cursor = [], int(rng.integers(2, 12))
        for _ in range(int(rng.integers(1, 4))):
            seg_len = int(rng.integers(6, 37))
            if cursor + seg_len + 2 > length:
                break
            label = int(rng.integers(num_classes))
            ramp = np.clip(np.minimum(np.arange(seg_len) + 1, seg_len - np.arange(seg_len)) / 2.0, 0, 1)
            x[cursor:cursor + seg_len] += 0.6 * ramp[:, None] * prototypes[label]
            # feature i is the time i + 0.5 s (stride 1, span 1, fps 1): the segment covers [cursor, cursor + len)
            annotations.append({"segment": [float(cursor), float(cursor + seg_len)], "label": names[label]})
            cursor += seg_len + int(rng.integers(4, 30))
        name = f"video_{index:03d}"
        np.save(features_dir / f"{name}.npy", x)
        database[name] = {"subset": "training" if index < train_videos else "validation",
                          "duration": float(length), "fps": 1.0, "annotations": annotations}
    annotations_path = root / "annotations.json"
    annotations_path.write_text(json.dumps({"version": "demo", "database": database}, indent=1))
    return features_dir, annotations_path


def random_detections(annotations, subset: str, per_video: int = 20, seed: int = 0) -> list[Segment]:
    """Chance: ``per_video`` segments per video of random place, class and score, their lengths drawn
    uniformly between the shortest and the longest ground-truth action."""
    rng = np.random.default_rng(seed)
    lengths = [s.end - s.start for s in annotations.ground_truth(subset)] or [1.0]
    detections = []
    for video in annotations.subset(subset):
        for _ in range(per_video):
            length = float(rng.uniform(min(lengths), max(lengths)))
            start = float(rng.uniform(0, max(video.duration - length, 0.0)))
            end = float(min(video.duration, start + length))
            detections.append(Segment(video.name, start, end, int(rng.integers(len(annotations.classes))),
                                      float(rng.random())))
    return detections


def make_demo_videos(root: str | Path, num_classes: int = 3, train_videos: int = 24, val_videos: int = 8,
                     fps: int = 8, size: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """Long clips (18..30 s at ``fps``) with 1..3 timed actions each: during an action a square of the
    class's colour moves across a noisy background (outside actions, a grey distractor square wanders by
    now and then). Returns ``(video list, annotations JSON)`` with segments in seconds."""
    from internvideo_fast.data.sample_data import _finish, encode_clip

    rng = np.random.default_rng(seed)
    root = Path(root)
    videos_dir = root / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    colours = np.array([[230, 40, 40], [40, 210, 60], [60, 80, 240], [240, 220, 40]])[:num_classes]
    names = [f"action_{k}" for k in range(num_classes)]
    database, paths, processes = {}, [], []
    for index in range(train_videos + val_videos):
        length = int(rng.integers(18 * fps, 30 * fps + 1))
        frames = np.clip(rng.normal(110, 35, size=(length, size, size, 3)), 0, 255).astype(np.uint8)
        side = size // 3
        for t in np.nonzero(rng.random(length) < 0.15)[0]:
            y, x = rng.integers(0, size - side, size=2)
            frames[t, y:y + side, x:x + side] = 128
        annotations, cursor = [], int(rng.integers(1, 3 * fps))
        for _ in range(int(rng.integers(1, 4))):
            seg_len = int(rng.integers(2 * fps, 6 * fps + 1))
            if cursor + seg_len + fps > length:
                break
            label = int(rng.integers(num_classes))
            y0 = int(rng.integers(0, size - side))
            for step, t in enumerate(range(cursor, cursor + seg_len)):
                x = int((size - side) * step / max(1, seg_len - 1))
                frames[t, y0:y0 + side, x:x + side] = colours[label]
            annotations.append({"segment": [cursor / fps, (cursor + seg_len) / fps], "label": names[label]})
            cursor += seg_len + int(rng.integers(fps, 5 * fps))
        name = f"video_{index:03d}"
        path = videos_dir / f"{name}.mp4"
        processes.append((encode_clip(frames, path, fps), path))
        paths.append(str(path))
        database[name] = {"subset": "training" if index < train_videos else "validation",
                          "duration": length / fps, "fps": float(fps), "annotations": annotations}
    for process, path in processes:
        _finish(process, path)
    list_path = root / "videos.txt"
    list_path.write_text("".join(f"{path}\n" for path in paths))
    annotations_path = root / "annotations.json"
    annotations_path.write_text(json.dumps({"version": "demo", "database": database}, indent=1))
    return list_path, annotations_path


def demo(out_dir: str, device: str | None = None, steps: int = 600) -> dict:
    """Generated long clips -> ivf-extract (an untrained micro VideoMAE, 4-frame windows every 2 frames)
    -> the detector trained on the training videos' features -> mAP on the validation videos."""
    from internvideo_fast.extract import ExtractConfig, extract_features, read_video_paths
    from internvideo_fast.models import create_model

    out = Path(out_dir) / "tal"
    start = time.perf_counter()
    list_path, annotations_path = make_demo_videos(out)
    torch.manual_seed(0)
    encoder = create_model("videomae_vit_micro_patch16", img_size=32, num_frames=4, num_classes=0)
    extract_config = ExtractConfig(frames=4, frame_stride=1, stride=2, size=32, batch=64)
    extracted = extract_features(encoder, read_video_paths(list_path), out / "features", extract_config,
                                 device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"tal demo: features of {len(extracted['done']) + len(extracted['skipped'])} videos "
          f"({extracted['windows']} windows extracted, {extracted['seconds']:.0f} s)", flush=True)
    config = {
        "recipe": "tal",
        "model_args": {"embed_dim": 64, "num_heads": 4, "window": 9, "stem_blocks": 1, "num_levels": 4,
                       "head_dim": 64, "regression_ranges": [(0, 4), (4, 8), (8, 16), (16, 10_000)]},
        "data": {"features": str(out / "features"), "annotations": str(annotations_path), "feature_stride": 2,
                 "feature_span": 4, "batch_size": 4, "max_seq_len": 128, "tious": "thumos"},
        "optim": {"base_lr": 1e-3, "warmup_steps": 20, "weight_decay": 0.05},
        "train": {"epochs": 1000, "max_steps": steps, "log_every": 50, "output_dir": str(out / "run")},
    }
    result = train(config, device)
    annotations = read_temporal_annotations(annotations_path)
    chance = tal_map(random_detections(annotations, "validation"), annotations.ground_truth("validation"),
                     THUMOS14_TIOUS)["mAP"]
    summary = {"task": "tal", "metric": "mAP@0.3:0.7", "value": result["eval"]["mAP"], "chance": chance,
               "seconds": time.perf_counter() - start}
    print(f"TAL demo: validation mAP (tIoU 0.3:0.1:0.7) {summary['value']:.3f} against chance "
          f"(random segments) {chance:.3f}, {summary['seconds']:.0f} s", flush=True)
    return summary
