"""Training: configs, optimizer groups and schedule, mixup, DDP, and the loop (`ivf-train`)."""

from internvideo_fast.train.config import load_config
from internvideo_fast.train.loop import train

__all__ = ["load_config", "train"]
