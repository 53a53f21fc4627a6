"""Models: VideoMAE (the masked video encoder), and a timm-like registry."""

from internvideo_fast.models import videomae  # noqa: F401  (registers its sizes)
from internvideo_fast.models.registry import create_model, list_models, register_model
from internvideo_fast.models.videomae import VideoMAEClassifier, VideoMAEEncoder, VideoMAEPretrain

__all__ = ["VideoMAEClassifier", "VideoMAEEncoder", "VideoMAEPretrain", "create_model", "list_models", "register_model"]
