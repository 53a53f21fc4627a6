"""Video data: list files, frame-exact decoding, sampling, transforms, the robust dataset and the loader.

The contract every loader (torch, DALI) follows is in :mod:`internvideo_fast.data.loader`; :mod:`.build`
picks one; :mod:`.prefetch` moves batches to the GPU ahead of the step.
"""

from internvideo_fast.data.dataset import VideoDataset
from internvideo_fast.data.decode import DecodeError, DecodeTimeout, VideoReader, open_video, read_clip
from internvideo_fast.data.lists import VideoRecord, VideoTextRecord, read_video_list, read_video_text_list
from internvideo_fast.data.build import build_loader, choose_loader
from internvideo_fast.data.loader import DataConfig, VideoLoader, build_torch_loader
from internvideo_fast.data.prefetch import DevicePrefetcher
from internvideo_fast.data.sample_data import SampleDataset, make_sample_dataset
from internvideo_fast.data.sampling import (
    DenseSampler, SegmentSampler, ShortVideoError, dense_indices, segment_indices,
)
from internvideo_fast.data.transforms import (
    CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, VideoTransform, build_transform,
)

__all__ = [
    "read_video_list", "read_video_text_list", "VideoRecord", "VideoTextRecord",
    "open_video", "read_clip", "VideoReader", "DecodeError", "DecodeTimeout",
    "dense_indices", "segment_indices", "DenseSampler", "SegmentSampler", "ShortVideoError",
    "build_transform", "VideoTransform", "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD",
    "VideoDataset", "DataConfig", "VideoLoader", "build_loader", "build_torch_loader", "choose_loader",
    "DevicePrefetcher", "make_sample_dataset", "SampleDataset",
]
