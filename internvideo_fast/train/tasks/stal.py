"""Spatio-temporal action localization on generated clips: ``ivf demo --task stal``.

Each clip shows two or three "people" (outlined rectangles) over a noisy background. A person's actions are
multi-label: its colour names one of three actions and, when it moves sideways, a fourth action ("walking")
is on as well. The person boxes on the middle (key) frame are given, as AVA gives them; a micro VideoMAE
with :class:`~internvideo_fast.models.ava_head.AVAHead` (RoIAlign over the temporally pooled last feature
map, sigmoid classifier) trains with binary cross-entropy and is scored by frame-mAP at IoU 0.5, against
the frame-mAP of random scores on the same boxes.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from internvideo_fast.data.annotations import BoxDetection
from internvideo_fast.eval.detection_metrics import frame_map
from internvideo_fast.models.ava_head import ActionDetector
from internvideo_fast.train.tasks.common import Optimizer, pick_device, seed_everything

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
