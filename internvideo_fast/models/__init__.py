"""Models: VideoMAE (the masked video encoder), UniFormerV2 + the CLIP text encoder (the multimodal video
encoder), the objectives, the cross-model attention (CMA) fusion, and a timm-like registry."""

from internvideo_fast.models import (  # noqa: F401  (register their sizes)
    internvideo, internvideo_mm, uniformerv2, videomae, videotext,
)
from internvideo_fast.models.cma import CrossModelAttention, InternVideo
from internvideo_fast.models.registry import create_model, list_models, register_model
from internvideo_fast.models.uniformerv2 import UniFormerV2
from internvideo_fast.models.videomae import VideoMAEClassifier, VideoMAEEncoder, VideoMAEPretrain

__all__ = [
    "CrossModelAttention", "InternVideo", "UniFormerV2", "VideoMAEClassifier", "VideoMAEEncoder", "VideoMAEPretrain",
    "create_model", "list_models", "register_model",
]
