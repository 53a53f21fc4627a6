"""Detection metrics of the localization tasks: temporal action localization mAP at tIoU thresholds
(ActivityNet / THUMOS14) and AVA frame-mAP at IoU 0.5.

Both rank one class's detections by score, match each greedily to the ground truth, and take the average
precision of the resulting true / false positive sequence:

    precision_i = TP_i / i,  recall_i = TP_i / num_ground_truth
    AP = sum_i (recall_i - recall_{i-1}) * max_{j >= i} precision_j        (all-points interpolation)

(the ActivityNet evaluation's ``interpolated_prec_rec`` and the PASCAL VOC / AVA ``compute_average_precision``
are this formula). mAP is the mean over the classes that have ground truth; TAL's mAP is then averaged over
the tIoU thresholds.

Matching differs as in the reference evaluations:

- TAL: a detection is compared with every ground-truth segment of its class in its video, in decreasing
  tIoU; the first one that is still unmatched and reaches the threshold makes it a true positive.
- AVA: a detection is compared only with the ground-truth box of its class on its keyframe that overlaps it
  most; a true positive if that IoU reaches 0.5 and that box is still unmatched (PASCAL VOC).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Sequence

import numpy as np

from internvideo_fast.data.annotations import BoxDetection, Segment

THUMOS14_TIOUS = (0.3, 0.4, 0.5, 0.6, 0.7)
ACTIVITYNET_TIOUS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5:0.05:0.95

__all__ = [
    "Segment", "BoxDetection", "average_precision", "temporal_iou", "box_iou", "tal_map", "frame_map",
    "THUMOS14_TIOUS", "ACTIVITYNET_TIOUS",
]


def average_precision(is_true_positive: Sequence[bool], num_ground_truth: int) -> float:
    """AP of detections already sorted by decreasing score (all-points interpolation, see the module).

    0 when there is no ground truth (the callers only score classes that have some)."""
    if num_ground_truth <= 0:
        return 0.0
    tp = np.asarray(is_true_positive, dtype=np.float64)
    if tp.size == 0:
        return 0.0
    true_positives = np.cumsum(tp)
    precision = true_positives / np.arange(1, tp.size + 1)
    recall = true_positives / num_ground_truth
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    changed = np.nonzero(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[changed] - recall[changed - 1]) * precision[changed]))


def temporal_iou(segment: tuple[float, float], others: np.ndarray) -> np.ndarray:
    """tIoU of ``segment = (start, end)`` with each row of ``others [N, 2]``: overlap / union of lengths."""
    others = np.asarray(others, dtype=np.float64).reshape(-1, 2)
    inter = np.clip(np.minimum(segment[1], others[:, 1]) - np.maximum(segment[0], others[:, 0]), 0.0, None)
    union = (segment[1] - segment[0]) + (others[:, 1] - others[:, 0]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_iou(box: Sequence[float], others: np.ndarray) -> np.ndarray:
    """IoU of ``box = (x1, y1, x2, y2)`` with each row of ``others [N, 4]`` (continuous coordinates)."""
    others = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0.0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0.0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _by_class(items) -> dict[int, list]:
    grouped: dict[int, list] = defaultdict(list)
    for item in items:
        grouped[item.label].append(item)
    return grouped


def _segment_ap(detections: list[Segment], truths: list[Segment], threshold: float) -> float:
    truth_by_video: dict[str, np.ndarray] = {}
    for video in {t.video for t in truths}:
        truth_by_video[video] = np.array([[t.start, t.end] for t in truths if t.video == video])
    matched = {video: np.zeros(len(rows), dtype=bool) for video, rows in truth_by_video.items()}
    flags = []
    for det in sorted(detections, key=lambda d: -d.score):
        rows = truth_by_video.get(det.video)
        hit = False
        if rows is not None:
            ious = temporal_iou((det.start, det.end), rows)
            for index in np.argsort(-ious, kind="stable"):
                if ious[index] < threshold:
                    break
                if not matched[det.video][index]:
                    matched[det.video][index] = True
                    hit = True
                    break
        flags.append(hit)
    return average_precision(flags, len(truths))


def tal_map(detections: Sequence[Segment], ground_truth: Sequence[Segment],
            tious: Sequence[float] = THUMOS14_TIOUS) -> dict:
    """Temporal action localization mAP: ``{"mAP": mean over tious, "mAP@0.5": ..., "per_class": {...}}``.

    Classes are those present in ``ground_truth``; detections of other classes are ignored."""
    truths = _by_class(ground_truth)
    dets = _by_class(detections)
    per_threshold = {}
    per_class = {}
    for threshold in tious:
        aps = {label: _segment_ap(dets.get(label, []), truths[label], threshold) for label in sorted(truths)}
        per_threshold[threshold] = float(np.mean(list(aps.values()))) if aps else 0.0
        for label, ap in aps.items():
            per_class.setdefault(label, []).append(ap)
    result = {"mAP": float(np.mean(list(per_threshold.values()))) if per_threshold else 0.0}
    result.update({f"mAP@{threshold:g}": value for threshold, value in per_threshold.items()})
    result["per_class"] = {label: float(np.mean(values)) for label, values in per_class.items()}
    return result


def frame_map(detections: Sequence[BoxDetection], ground_truth: Sequence[BoxDetection],
              iou_threshold: float = 0.5, labels: Sequence[int] | None = None) -> dict:
    """AVA frame-mAP: ``{"mAP": ..., "per_class": {label: AP}}`` over ``labels`` (default: the classes with
    ground truth; a listed class without ground truth is left out, as in the AVA evaluation)."""
    truths = _by_class(ground_truth)
    dets = _by_class(detections)
    wanted = sorted(truths) if labels is None else [label for label in labels if label in truths]
    per_class = {}
    for label in wanted:
        frames: dict[Hashable, np.ndarray] = {}
        for t in truths[label]:
            frames.setdefault((t.video, t.timestamp), []).append(t.box)
        frames = {key: np.array(boxes, dtype=np.float64) for key, boxes in frames.items()}
        matched = {key: np.zeros(len(boxes), dtype=bool) for key, boxes in frames.items()}
        flags = []
        for det in sorted(dets.get(label, []), key=lambda d: -d.score):
            key = (det.video, det.timestamp)
            hit = False
            if key in frames:
                ious = box_iou(det.box, frames[key])
                best = int(np.argmax(ious))
                if ious[best] >= iou_threshold and not matched[key][best]:
                    matched[key][best] = True
                    hit = True
            flags.append(hit)
        per_class[label] = average_precision(flags, len(truths[label]))
    return {"mAP": float(np.mean(list(per_class.values()))) if per_class else 0.0, "per_class": per_class}
