"""``DevicePrefetcher``: batches arrive on the GPU while the previous step runs.

``for batch in DevicePrefetcher(loader, device, depth=2): step(batch)`` yields the loader's batches with
every tensor on ``device``. On CUDA, the host tensors of the next ``depth`` batches are pinned (unless they
already are) and copied with ``non_blocking=True`` on a side stream, each batch followed by an event; the
consumer's stream waits on that event (a device-side wait: the host never synchronizes), and each copied
tensor is marked used by the consumer's stream (``record_stream``) so the caching allocator cannot hand its
memory to the next copy while the step still reads it. Tensors already on the device (the DALI loader's
video) pass through untouched, as do non-tensor entries (captions). On a CPU device the batches pass
through with their tensors moved by ``.to(device)``.

The loader is read at most ``depth`` batches ahead of the batch being consumed, so decoding (in the loader's
worker processes or on DALI's threads) and the copies overlap the step.

``normalize=(mean, std)``: a uint8 ``video`` (a torch loader with ``normalize_on_device``) is normalized
after its copy, on the side stream (:func:`~internvideo_fast.data.transforms.normalize_video`: the values the
workers would have produced); a float video (normalized already, e.g. by DALI) passes as it is.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

import torch

from internvideo_fast.data.transforms import normalization_tensors, normalize_video

__all__ = ["DevicePrefetcher"]


class DevicePrefetcher:
    """Iterable over ``loader``'s batches (dicts of tensors and other values) moved to ``device``."""

    def __init__(self, loader: Iterable[dict], device: torch.device | str, depth: int = 2, pin_memory: bool = True,
                 normalize: tuple | None = None):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.loader = loader
        self.normalize = normalize
        self._normalization: dict = {}  # (device, channels) -> normalization_tensors, made once
        self.device = torch.device(device)
        self.depth = int(depth)
        self.pin_memory = pin_memory
        self.cuda = self.device.type == "cuda"
        self._stream = None

    def __len__(self) -> int:
        return len(self.loader)

    def _copy(self, value):
        if not isinstance(value, torch.Tensor) or value.device == self.device:
            return value
        if self.cuda and self.pin_memory and value.device.type == "cpu" and not value.is_pinned():
            value = value.pin_memory()
        return value.to(self.device, non_blocking=self.cuda)

    def _move(self, batch: dict) -> dict:
        moved = {key: self._copy(value) for key, value in batch.items()}
        video = moved.get("video")
        if self.normalize is not None and isinstance(video, torch.Tensor) and video.dtype == torch.uint8:
            key = (video.device, video.shape[-4])
            if key not in self._normalization:
                self._normalization[key] = normalization_tensors(*self.normalize, video.shape[-4], video.device)
            moved["video"] = normalize_video(video, *self.normalize, tensors=self._normalization[key])
        return moved

    def _start(self, batch: dict):
        """Starts the copies of one batch; returns ``(moved batch, event or None)``."""
        if not self.cuda:
            return self._move(batch), None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        # The side stream must not copy from (or into) memory the consumer's stream is still producing.
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            moved = self._move(batch)
            event = torch.cuda.Event()
            event.record(self._stream)
        return moved, event

    def _finish(self, moved: dict, event) -> dict:
        if event is not None:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(event)
            for value in moved.values():
                if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                    value.record_stream(consumer)
        return moved

    def __iter__(self) -> Iterator[dict]:
        pending: deque = deque()
        for batch in self.loader:
            pending.append(self._start(batch))
            if len(pending) > self.depth:
                yield self._finish(*pending.popleft())
        while pending:
            yield self._finish(*pending.popleft())
