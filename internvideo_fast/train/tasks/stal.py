"""Spatio-temporal action localization on generated clips: ``ivf demo --task stal``.

Each clip shows two or three "people" (outlined rectangles) over a noisy background. A person's actions are
multi-label: its colour names one of three actions and, when it moves sideways, a fourth action ("walking")
is on as well. The person boxes on the middle (key) frame are given, as AVA gives them; a micro VideoMAE
with :class:`~internvideo_fast.models.ava_head.AVAHead` (RoIAlign over the temporally pooled last feature
map, sigmoid classifier) trains with binary cross-entropy and is scored by frame-mAP at IoU 0.5, against
the frame-mAP of random scores on the same boxes. The demo trains in memory and writes nothing.

``recipe: stal`` trains the same head on AVA-style data (``train`` / ``evaluate`` below)::

    recipe: stal
    model: videomae_vit_base_patch16   # a VideoMAE encoder (forward_features + grid); pretrained: its weights
    model_args: {resolution: 7, dropout: 0.5, encoder_args: {num_classes: 0}}
    data:
      root: videos/                    # <video id><extension>
      extension: .mp4
      train_csv: ava_train_v2.2.csv    # read_ava_csv rows: video,timestamp,x1,y1,x2,y2,action_id[,person_id]
      val_csv: ava_val_v2.2.csv
      proposals_csv: null              # person boxes to score at evaluation (x1..y2 + a score column);
                                       # default: the ground-truth boxes of val_csv
      num_classes: 80                  # action ids 1..num_classes
      eval_labels: null                # the classes frame-mAP averages over (AVA: its 60); default: all
      fps: 30                          # frame of a timestamp: round((timestamp - time_offset) * fps)
      time_offset: 0                   # e.g. 900 for AVA's 15-minute cuts starting at 900 s
      num_frames: 16
      frame_stride: 4                  # frames of a clip centred on the keyframe
      img_size: 224                    # frames are resized to img_size x img_size (boxes are normalized)
      batch_size: 8
      num_workers: 4
    optim: {base_lr: 1e-4, weight_decay: 0.05}
    train: {epochs: 5, max_steps: null, seed: 0, log_every: 10, output_dir: runs/stal}
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from internvideo_fast.data.annotations import BoxDetection
from internvideo_fast.errors import ConfigError
from internvideo_fast.eval.detection_metrics import frame_map
from internvideo_fast.models.ava_head import ActionDetector
from internvideo_fast.train.tasks.common import (
    Optimizer, checkpoint_config, finish, pick_device, require, seed_everything, task_optimizer,
    task_sections,
)

ACTIONS = ("red", "green", "blue", "walking")
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 230]], dtype=np.float32)


def make_clips(count: int, frames: int = 4, size: int = 64, seed: int = 0):
    """``(clips float [N, 3, T, S, S] normalized, boxes [K, 5] (clip, x1, y1, x2, y2) normalized,
    labels [K, 4] multi-hot)``."""
    rng = np.random.default_rng(seed)
    clips = rng.normal(128, 30, size=(count, frames, size, size, 3)).astype(np.float32)
    boxes, labels = [], []
    for n in range(count):
        people = int(rng.integers(2, 4))
        lanes = rng.permutation(3)[:people]  # one horizontal lane each: boxes never overlap
        for lane in lanes:
            height = int(rng.integers(14, 20))
            width = int(rng.integers(10, 16))
            top = int(lane * size / 3 + rng.integers(0, size / 3 - height + 1))
            colour = int(rng.integers(3))
            walking = bool(rng.random() < 0.5)
            speed = (3 if rng.random() < 0.5 else -3) if walking else 0
            left0 = int(rng.integers(abs(speed) * frames, size - width - abs(speed) * frames))
            for t in range(frames):
                left = left0 + speed * (t - frames // 2)
                clips[n, t, top:top + height, left:left + width] = COLOURS[colour] + rng.normal(0, 15, 3)
                clips[n, t, top, left:left + width] = 0
                clips[n, t, top + height - 1, left:left + width] = 0
            key_left = left0
            boxes.append([n, key_left / size, top / size, (key_left + width) / size, (top + height) / size])
            labels.append([colour == 0, colour == 1, colour == 2, walking])
    video = torch.from_numpy(clips).permute(0, 4, 1, 2, 3)
    video = (video / 255.0 - 0.45) / 0.225
    return video.contiguous(), torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels, dtype=torch.float32)


def _as_detections(boxes: torch.Tensor, scores: torch.Tensor, keyframe_of) -> list[BoxDetection]:
    out = []
    for box, row in zip(boxes.tolist(), scores.tolist()):
        for label, score in enumerate(row):
            out.append(BoxDetection(f"clip{int(box[0])}", keyframe_of, tuple(box[1:]), label, score))
    return out


def _ground_truth(boxes: torch.Tensor, labels: torch.Tensor, keyframe_of) -> list[BoxDetection]:
    return [BoxDetection(f"clip{int(box[0])}", keyframe_of, tuple(box[1:]), label)
            for box, row in zip(boxes.tolist(), labels.tolist()) for label, on in enumerate(row) if on]


def demo(out_dir: str, device: str | None = None, steps: int = 150, batch: int = 8) -> dict:
    from internvideo_fast.models import create_model

    start = time.perf_counter()
    device = pick_device(device)
    seed_everything(0)
    train_video, train_boxes, train_labels = make_clips(96, seed=1)
    val_video, val_boxes, val_labels = make_clips(32, seed=2)
    encoder = create_model("videomae_vit_micro_patch16", img_size=64, num_frames=4, num_classes=0)
    model = ActionDetector(encoder, len(ACTIONS), resolution=2, dropout=0.1).to(device)
    optimizer = Optimizer(model, steps, 1e-3, 0.05, warmup_steps=10)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        clips = torch.randperm(len(train_video), generator=generator)[:batch]
        chosen = torch.isin(train_boxes[:, 0].long(), clips)
        boxes = train_boxes[chosen].clone()
        boxes[:, 0] = (boxes[:, 0].long()[:, None] == clips[None]).float().argmax(1).float()  # index in the batch
        logits = model(train_video[clips].to(device), boxes.to(device))
        loss = F.binary_cross_entropy_with_logits(logits, train_labels[chosen].to(device))
        optimizer.step(loss)
        if (step + 1) % 50 == 0:
            print(f"stal step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        scores = torch.cat([torch.sigmoid(model(val_video[i:i + 8].to(device), _batch_boxes(val_boxes, i, 8).to(device))).cpu()
                            for i in range(0, len(val_video), 8)])
    truth = _ground_truth(val_boxes, val_labels, 0.0)
    value = frame_map(_as_detections(val_boxes, scores, 0.0), truth)["mAP"]
    chance = frame_map(_as_detections(val_boxes, torch.rand(scores.shape, generator=generator), 0.0), truth)["mAP"]
    summary = {"task": "stal", "metric": "frame-mAP@0.5", "value": value, "chance": chance,
               "seconds": time.perf_counter() - start}
    print(f"STAL demo: validation frame-mAP@0.5 {value:.3f} against chance (random scores) {chance:.3f}, "
          f"{summary['seconds']:.0f} s", flush=True)
    return summary


def _batch_boxes(boxes: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """The boxes of clips ``first .. first + count - 1`` with their clip index made batch-relative."""
    chosen = (boxes[:, 0] >= first) & (boxes[:, 0] < first + count)
    out = boxes[chosen].clone()
    out[:, 0] -= first
    return out


# ------------------------------------------------------------------------------------------------------
# recipe: stal
# ------------------------------------------------------------------------------------------------------
DATA_DEFAULTS = {"root": None, "extension": ".mp4", "train_csv": None, "val_csv": None, "proposals_csv": None,
                 "num_classes": 80, "eval_labels": None, "fps": 30.0, "time_offset": 0.0, "num_frames": 16,
                 "frame_stride": 4, "img_size": 224, "batch_size": 8, "num_workers": 4, "backend": "auto"}
TRAIN_DEFAULTS = {"epochs": 5, "max_steps": None, "seed": 0, "log_every": 10, "output_dir": "runs/stal"}
OPTIM_DEFAULTS = {"base_lr": 1e-4, "min_lr": 0.0, "weight_decay": 0.05, "warmup_steps": 0, "clip_grad": 1.0}
MODEL_DEFAULTS = {"resolution": 7, "sampling_ratio": 2, "dropout": 0.5, "encoder_args": {}}




def keyframes(rows: list[BoxDetection], num_classes: int, where: str) -> list[dict]:
    """AVA rows grouped per keyframe and box: ``{"video", "timestamp", "boxes" [K, 4], "labels" [K, C]}``
    (multi-hot; action id ``a`` is column ``a - 1``)."""
    frames: dict = defaultdict(dict)
    for row in rows:
        if not 1 <= row.label <= num_classes:
            raise ConfigError(f"{where}: action id {row.label} outside 1..{num_classes} (data.num_classes)")
        boxes = frames[(row.video, row.timestamp)]
        boxes.setdefault(row.box, set()).add(row.label - 1)
    out = []
    for (video, timestamp), boxes in frames.items():
        labels = torch.zeros(len(boxes), num_classes)
        for index, actions in enumerate(boxes.values()):
            labels[index, sorted(actions)] = 1.0
        out.append({"video": video, "timestamp": timestamp, "boxes": torch.tensor(list(boxes)), "labels": labels})
    return out


class KeyframeDataset(torch.utils.data.Dataset):
    """A clip of ``num_frames`` frames every ``frame_stride`` centred on each keyframe, resized to a square."""

    def __init__(self, items: list[dict], data: dict):
        self.items, self.data = items, data

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        import os

        from internvideo_fast.data.decode import read_clip

        item, data = self.items[index], self.data
        path = os.path.join(data["root"], item["video"] + data["extension"])
        centre = round((item["timestamp"] - data["time_offset"]) * data["fps"])
        offsets = (torch.arange(data["num_frames"]) - data["num_frames"] // 2) * data["frame_stride"]

        def sample(num_frames: int) -> torch.Tensor:
            return (centre + offsets).clamp(0, num_frames - 1)

        try:
            frames, _, _ = read_clip(path, sample, backend=data["backend"])
        except Exception as error:  # noqa: BLE001 - reported by name, the batch goes on without it
            print(f"stal: bad video {path}: {type(error).__name__}: {error}", flush=True)
            return None
        size = data["img_size"]
        clip = F.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return ((clip / 255.0 - mean) / std).transpose(0, 1).contiguous(), item


def _collate(items):
    items = [item for item in items if item is not None]
    if not items:
        return None
    video = torch.stack([clip for clip, _ in items])
    boxes = torch.cat([torch.cat([torch.full((len(i["boxes"]), 1), float(b)), i["boxes"]], 1)
                       for b, (_, i) in enumerate(items)])
    return video, boxes, torch.cat([i["labels"] for _, i in items]), [i for _, i in items]


def _loader(items, data: dict, shuffle: bool, seed: int):
    return torch.utils.data.DataLoader(KeyframeDataset(items, data), batch_size=data["batch_size"], shuffle=shuffle,
                                       num_workers=data["num_workers"], collate_fn=_collate,
                                       generator=torch.Generator().manual_seed(seed))


def _build(config: dict, model_args: dict, num_classes: int, load_pretrained: bool = True) -> ActionDetector:
    from internvideo_fast.models import create_model

    encoder = create_model(config.get("model") or "videomae_vit_base_patch16",
                           pretrained=config.get("pretrained") if load_pretrained else None,
                           **{"num_classes": 0, **(model_args["encoder_args"] or {})})
    return ActionDetector(encoder, num_classes, resolution=model_args["resolution"],
                          sampling_ratio=model_args["sampling_ratio"], dropout=model_args["dropout"])


def train(config: dict, device: str | None = None) -> dict:
    from internvideo_fast.data.annotations import read_ava_csv

    data, train_cfg, optim, model_args = task_sections(config, DATA_DEFAULTS, TRAIN_DEFAULTS, OPTIM_DEFAULTS,
                                                       MODEL_DEFAULTS)
    require(data, "data", "root", "train_csv")
    device = pick_device(device)
    seed_everything(train_cfg["seed"])
    items = keyframes(read_ava_csv(data["train_csv"]), data["num_classes"], data["train_csv"])
    config = json.loads(json.dumps(config))
    config["data"], config["model_args"] = data, model_args
    model = _build(config, model_args, data["num_classes"]).to(device)
    loader = _loader(items, data, True, train_cfg["seed"])
    optimizer = task_optimizer(model, len(loader), train_cfg, optim)
    model.train()
    while not optimizer.done:
        for batch in loader:
            if batch is None:
                continue
            video, boxes, labels, _ = batch
            loss = F.binary_cross_entropy_with_logits(model(video.to(device), boxes.to(device)), labels.to(device))
            lr = optimizer.step(loss)
            if optimizer.log_due(train_cfg["log_every"]):
                print(f"stal step {optimizer.steps}/{optimizer.total_steps} loss {loss:.4f} lr {lr:.2e}", flush=True)
            if optimizer.done:
                break
    result = finish(model, config, optimizer, train_cfg["output_dir"])
    if data["val_csv"]:
        result["eval"] = evaluate_model(model, config, device)
        print(f"stal validation: frame-mAP@0.5 {result['eval']['mAP']:.4f} over {result['eval']['keyframes']} "
              "keyframes", flush=True)
    return result


@torch.no_grad()
def evaluate_model(model: ActionDetector, config: dict, device) -> dict:
    """Frame-mAP@0.5 of every class score of every box to score (proposals, else the ground-truth boxes)."""
    from internvideo_fast.data.annotations import read_ava_csv

    data = config["data"]
    truth_rows = read_ava_csv(data["val_csv"])
    source = read_ava_csv(data["proposals_csv"], scores=True) if data["proposals_csv"] else truth_rows
    boxes_only = [BoxDetection(r.video, r.timestamp, r.box, 1) for r in source]
    items = keyframes(boxes_only, 1, data["proposals_csv"] or data["val_csv"])
    model.eval()
    detections = []
    for batch in _loader(items, data, False, 0):
        if batch is None:
            continue
        video, boxes, _, batch_items = batch
        scores = torch.sigmoid(model(video.to(device), boxes.to(device))).cpu()
        row = 0
        for item in batch_items:
            for box in item["boxes"].tolist():
                for label, score in enumerate(scores[row].tolist(), start=1):
                    detections.append(BoxDetection(item["video"], item["timestamp"], tuple(box), label, score))
                row += 1
    result = frame_map(detections, truth_rows, labels=data["eval_labels"])
    return {"mAP": result["mAP"], "classes": len(result["per_class"]), "keyframes": len(items)}


def evaluate(checkpoint_path: str, overrides: list[str], device: str | None = None) -> dict:
    """``ivf-eval --task stal --checkpoint runs/stal/checkpoint.pth [data.proposals_csv=... ]``."""
    checkpoint, config = checkpoint_config(checkpoint_path, "stal", overrides)
    require(config["data"], "data", "val_csv")
    device = pick_device(device)
    model = _build(config, config["model_args"], config["data"]["num_classes"], load_pretrained=False)
    model.load_state_dict(checkpoint["model"])
    return evaluate_model(model.to(device), config, device)
