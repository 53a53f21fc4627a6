"""Metrics of open-set action recognition and video question answering.

- Open-set AUROC: unknown-class videos are the positives, ranked by an uncertainty score (higher = more
  likely unknown). AUROC = P(score_unknown > score_known) + 0.5 * P(score_unknown == score_known), the
  Mann-Whitney form of the area under the ROC curve, computed from average ranks.
- Closed-set accuracy: top-1 over the known-class videos only.
- VQA accuracy: the fraction of questions answered exactly (open-ended answers compared after lower-casing
  and trimming whitespace; multiple choice compares the chosen index).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["open_set_auroc", "closed_set_accuracy", "vqa_accuracy", "normalize_answer"]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = 0.5 * (start + stop) + 1.0
        start = stop + 1
    return ranks


def open_set_auroc(uncertainty: Sequence[float], is_unknown: Sequence[bool]) -> float:
    """Area under the ROC curve of ``uncertainty`` separating unknown (True) from known (False) videos."""
    scores = np.asarray(uncertainty, dtype=np.float64)
    unknown = np.asarray(is_unknown, dtype=bool)
    if scores.shape != unknown.shape or scores.ndim != 1:
        raise ValueError(f"uncertainty {scores.shape} and is_unknown {unknown.shape} must be equal 1-D shapes")
    positives, negatives = int(unknown.sum()), int((~unknown).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("open-set AUROC needs both known and unknown videos")
    rank_sum = _average_ranks(scores)[unknown].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def closed_set_accuracy(predictions: Sequence[int], labels: Sequence[int], is_unknown: Sequence[bool] | None = None) -> float:
    """Top-1 accuracy over the known-class videos (all of them when ``is_unknown`` is None)."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    keep = np.ones(len(labels), dtype=bool) if is_unknown is None else ~np.asarray(is_unknown, dtype=bool)
    if not keep.any():
        raise ValueError("closed-set accuracy needs at least one known-class video")
    return float((predictions[keep] == labels[keep]).mean())


def normalize_answer(answer: str) -> str:
    """Open-ended answers compare lower-cased, with runs of whitespace collapsed and the ends trimmed."""
    return " ".join(str(answer).lower().split())


def vqa_accuracy(predictions: Sequence, answers: Sequence) -> float:
    """Fraction of exact answers: strings compare through :func:`normalize_answer`, indices as they are."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("VQA accuracy of no questions")

    def same(prediction, answer) -> bool:
        if isinstance(answer, str) or isinstance(prediction, str):
            return normalize_answer(prediction) == normalize_answer(answer)
        return int(prediction) == int(answer)

    return float(np.mean([same(p, a) for p, a in zip(predictions, answers)]))
