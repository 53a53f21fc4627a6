"""Evaluation: action recognition with multi-view testing (`ivf-eval`)."""

from internvideo_fast.eval.evaluate import evaluate

__all__ = ["evaluate"]
