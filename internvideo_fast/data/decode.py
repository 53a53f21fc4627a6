"""Frame-exact video decoding on the CPU: torchcodec (exact seek mode) first, PyAV as the fallback.

The reader contract (:class:`VideoReader`), shared with the DALI loader:

- ``open_video(path, backend="auto")`` returns a reader; ``reader.num_frames`` is the exact number of
  frames, ``reader.fps`` the average rate (information only: sampling works on frame numbers, never on
  timestamps), ``reader.get_frames(indices)`` returns **uint8 ``[N, 3, H, W]`` RGB** (channels first, the
  layout torchcodec returns without a copy and the one transforms take as ``[T, C, H, W]``) for frame
  numbers in presentation order; repeated and unsorted indices are allowed.
- Frame number ``i`` is the i-th frame in presentation (pts) order of the first video stream.

Frame counts. Metadata frame counts (``nb_frames``, duration x fps) are wrong for variable frame rate
files, for files with edit lists and for truncated files, so neither backend uses them:

- torchcodec in ``seek_mode="exact"`` scans the whole file at open and indexes every packet, so
  ``len(decoder)`` is the counted number of frames and ``get_frames_at`` is frame-exact on VFR files (its
  approximate mode is not: REFERENCE.md §5).
- The PyAV reader demuxes the whole stream once at open (no decoding, cheap) and builds the same index: the
  sorted presentation timestamps of the non-discarded packets. Frame ``i`` is the frame whose pts is the
  i-th of them; it seeks to the keyframe before it and decodes forward until that pts. If a file has
  packets without timestamps, it decodes every frame once at open and counts them instead.

A frame that is listed but cannot be decoded (a truncated file) raises :class:`DecodeError`; neither
reader returns fewer frames than asked.

Truncated files. A file cut short usually still opens: its header (the mp4 ``moov``, the Matroska segment
info) promises the whole video, but only a prefix of frames can be read, and that prefix would pass for a
shorter video. Each reader keeps what the header promises (``header_seconds``, ``header_frames``) and what the
content holds (``content_seconds``, the span of the readable frames); :func:`open_video` raises
:class:`TruncatedVideoError` naming both frame counts when the content falls short of the header by more than
two frames (more than one second or a tenth as well when only the container's duration is known, which
covers every stream, audio included). Durations, not frame counts, are compared: an mp4 edit list can
present fewer frames than its sample table lists. ``allow_truncated=True`` reads the prefix instead.

Timeouts. :func:`read_clip` runs open + index sampling + decode in a daemon worker thread and waits at
most ``timeout_s`` seconds; past it, it raises :class:`DecodeTimeout` and the caller moves on (the
dataset replaces the sample). Python cannot kill a thread: the stuck decode keeps its thread until FFmpeg
returns (it holds no lock of ours), and a DataLoader worker that exits takes it along. A file that hangs
forever therefore costs one idle thread per attempt, and the dataset marks it bad so it is not retried.
"""

from __future__ import annotations

import bisect
import os
import threading
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

__all__ = [
    "DecodeError", "DecodeTimeout", "TruncatedVideoError", "VideoReader", "TorchCodecReader", "PyAVReader",
    "open_video",
    "read_clip", "run_with_timeout", "available_backends", "check_complete",
]


class DecodeError(RuntimeError):
    """A video that cannot be opened or decoded (missing, empty, corrupt, truncated, no video stream)."""


class _NotProduced(Exception):
    """A seek landed after the wanted frame (internal to the PyAV reader)."""


class DecodeTimeout(DecodeError):
    """Decoding one sample took longer than the per-sample timeout."""


class TruncatedVideoError(DecodeError):
    """A file whose header promises more video than its content holds (see the module docstring)."""

    def __init__(self, message: str, promised_frames: int, decodable_frames: int):
        super().__init__(message)
        self.promised_frames = promised_frames
        self.decodable_frames = decodable_frames


@runtime_checkable
class VideoReader(Protocol):
    path: str
    num_frames: int
    fps: float

    def get_frames(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` RGB frames for frame numbers ``indices`` (presentation order)."""
        ...

    def close(self) -> None: ...


def _as_index_list(indices, num_frames: int, path: str) -> list[int]:
    if isinstance(indices, torch.Tensor):
        indices = indices.reshape(-1).tolist()
    out = [int(i) for i in indices]
    for i in out:
        if not 0 <= i < num_frames:
            raise IndexError(f"{path}: frame {i} out of range [0, {num_frames})")
    return out


def _gather(unique: list[int], frames: torch.Tensor, wanted: list[int]) -> torch.Tensor:
    if unique == wanted:
        return frames
    position = {index: k for k, index in enumerate(unique)}
    return frames[torch.tensor([position[i] for i in wanted], dtype=torch.long)]


# ----------------------------------------------------------------------------------------------------
# torchcodec
# ----------------------------------------------------------------------------------------------------
class TorchCodecReader:
    """torchcodec ``VideoDecoder(path, seek_mode="exact")`` (counted frames, frame-exact access)."""

    backend = "torchcodec"

    def __init__(self, path: str, num_threads: int = 1):
        from torchcodec.decoders import VideoDecoder

        self.path = str(path)
        try:
            self._decoder = VideoDecoder(self.path, seek_mode="exact", dimension_order="NCHW",
                                         num_ffmpeg_threads=num_threads)
        except Exception as error:  # torchcodec raises RuntimeError/ValueError with FFmpeg's message
            raise DecodeError(f"{self.path}: torchcodec cannot open: {error}") from error
        self.num_frames = len(self._decoder)
        metadata = self._decoder.metadata
        fps = metadata.average_fps
        self.fps = float(fps) if fps else 0.0
        self.header_frames = metadata.num_frames_from_header
        self.header_seconds, self.header_is_stream = metadata.duration_seconds_from_header, True
        if self.header_seconds is None:
            self.header_seconds, self.header_is_stream = self._container_seconds(), False
        begin, end = metadata.begin_stream_seconds_from_content, metadata.end_stream_seconds_from_content
        self.content_seconds = None if end is None else float(end) - float(begin or 0.0)

    def _container_seconds(self) -> float | None:
        """The container's duration from its header (torchcodec's core API; None where it has none)."""
        try:
            from torchcodec._core import get_container_metadata

            return get_container_metadata(self._decoder._decoder).duration_seconds_from_header
        except Exception:  # a torchcodec without this internal API: no container-level check
            return None

    def get_frames(self, indices) -> torch.Tensor:
        wanted = _as_index_list(indices, self.num_frames, self.path)
        if not wanted:
            raise ValueError("no frame indices given")
        unique = sorted(set(wanted))
        try:
            frames = self._decoder.get_frames_at(unique).data
        except Exception as error:
            raise DecodeError(f"{self.path}: torchcodec failed on frames {unique[0]}..{unique[-1]}: {error}") from error
        return _gather(unique, frames, wanted)

    def close(self) -> None:
        self._decoder = None


# ----------------------------------------------------------------------------------------------------
# PyAV
# ----------------------------------------------------------------------------------------------------
def _to_rgb(frame) -> np.ndarray:
    """RGB [H, W, 3] of a PyAV frame with its display rotation applied (as torchcodec does)."""
    array = frame.to_ndarray(format="rgb24")
    rotation = int(round(getattr(frame, "rotation", 0) or 0))
    turns = (rotation // 90) % 4 if rotation % 90 == 0 else 0
    return np.rot90(array, turns, axes=(0, 1)) if turns else array


class PyAVReader:
    """PyAV fallback: a pts index built by demuxing once, keyframe seeks, decode forward to the frame.
    Display rotation (the display matrix) is applied in multiples of 90 degrees, matching torchcodec."""

    backend = "pyav"

    def __init__(self, path: str, num_threads: int = 1):
        import av

        self.path = str(path)
        try:
            self._container = av.open(self.path)
        except Exception as error:
            raise DecodeError(f"{self.path}: PyAV cannot open: {error}") from error
        try:
            if not self._container.streams.video:
                raise DecodeError(f"{self.path}: no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_count = num_threads
            self._build_index()
        except DecodeError:
            self.close()
            raise
        except Exception as error:
            self.close()
            raise DecodeError(f"{self.path}: PyAV cannot index: {error}") from error

    def _build_index(self) -> None:
        pts, keyframes, missing_pts, last_end = [], [], False, None
        for packet in self._container.demux(self._stream):
            if packet.size == 0:  # the flush packet at the end
                continue
            if getattr(packet, "is_discard", False):
                continue
            if packet.pts is None:
                missing_pts = True
                break
            pts.append(packet.pts)
            last_end = max(last_end or packet.pts, packet.pts + (packet.duration or 0))
            if packet.is_keyframe:
                keyframes.append(packet.pts)
        self._frames_cache = None
        if missing_pts:
            # No timestamps to index: decode once and keep the count (these are rare, small raw files).
            self._container.seek(0)
            frames = [_to_rgb(frame) for frame in self._container.decode(self._stream)]
            self._frames_cache = frames
            self._pts = list(range(len(frames)))
            self._keyframes = [0]
        else:
            self._pts = sorted(pts)
            self._keyframes = sorted(keyframes) or self._pts[:1]
        self._index = {p: i for i, p in enumerate(self._pts)}
        self.num_frames = len(self._pts)
        rate = self._stream.average_rate
        self.fps = float(rate) if rate else 0.0
        stream, base = self._stream, self._stream.time_base
        self.header_frames = int(stream.frames) if stream.frames else None
        if stream.duration and base:
            self.header_seconds, self.header_is_stream = float(stream.duration * base), True
        else:
            duration = self._container.duration  # microseconds (AV_TIME_BASE)
            self.header_seconds, self.header_is_stream = (duration / 1e6 if duration else None), False
        self.content_seconds = (float((last_end - self._pts[0]) * base)
                                if not missing_pts and pts and last_end is not None and base else None)

    def get_frames(self, indices) -> torch.Tensor:
        wanted = _as_index_list(indices, self.num_frames, self.path)
        if not wanted:
            raise ValueError("no frame indices given")
        unique = sorted(set(wanted))
        if self._frames_cache is not None:
            arrays = [self._frames_cache[i] for i in unique]
        else:
            try:
                arrays = self._decode(unique)
            except DecodeError:
                raise
            except Exception as error:
                raise DecodeError(f"{self.path}: PyAV failed on frames {unique[0]}..{unique[-1]}: {error}") from error
        frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return _gather(unique, frames, wanted)

    def _decode(self, unique: list[int]) -> list:
        try:
            return self._decode_pass(unique, seek=True)
        except _NotProduced:
            # the demuxer's seek landed past the frame (rare index/seek disagreements): decode from the start
            return self._decode_pass(unique, seek=False)

    def _decode_pass(self, unique: list[int], seek: bool) -> list:
        out: dict[int, object] = {}
        wanted = set(unique)
        frames_iter = None
        current_pts = None  # pts of the last decoded frame
        for index in unique:
            target = self._pts[index]
            if seek:
                keyframe = self._keyframes[max(bisect.bisect_right(self._keyframes, target) - 1, 0)]
            else:
                keyframe = self._pts[0] if frames_iter is None else current_pts
            if frames_iter is None or current_pts is None or target <= current_pts or keyframe > current_pts:
                self._container.seek(keyframe, stream=self._stream, backward=True, any_frame=False)
                frames_iter = self._container.decode(self._stream)
                current_pts = None
            while current_pts is None or current_pts < target:
                frame = next(frames_iter, None)
                if frame is None:
                    raise DecodeError(f"{self.path}: frame {index} (pts {target}) is listed but not decodable")
                if frame.pts is None:
                    continue
                current_pts = frame.pts
                position = self._index.get(frame.pts)
                if position is not None and position in wanted and position not in out:
                    out[position] = _to_rgb(frame)
            if index not in out:
                if seek:
                    raise _NotProduced(index)
                raise DecodeError(f"{self.path}: frame {index} (pts {target}) was not produced by the decoder")
        return [out[i] for i in unique]

    def close(self) -> None:
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()


# ----------------------------------------------------------------------------------------------------
# Backend choice, timeouts
# ----------------------------------------------------------------------------------------------------
def available_backends() -> list[str]:
    names = []
    for name, module in (("torchcodec", "torchcodec.decoders"), ("pyav", "av")):
        try:
            __import__(module)
            names.append(name)
        except Exception:  # torchcodec raises OSError/RuntimeError when FFmpeg libraries are missing
            pass
    return names


_READERS = {"torchcodec": TorchCodecReader, "pyav": PyAVReader}


def check_complete(reader) -> None:
    """Raise :class:`TruncatedVideoError` when the reader's content falls short of what its header promises
    (see the module docstring); readers without the information pass."""
    header, content = getattr(reader, "header_seconds", None), getattr(reader, "content_seconds", None)
    if not header or content is None:
        return
    frame = 1.0 / reader.fps if reader.fps else 0.04
    slack = 2 * frame if getattr(reader, "header_is_stream", False) else max(2 * frame, 1.0, 0.1 * header)
    if header - content <= slack:
        return
    promised = reader.header_frames or (round(header * reader.fps) if reader.fps else 0)
    promised = max(int(promised), reader.num_frames + 1)
    raise TruncatedVideoError(
        f"{reader.path}: the container promises {promised} frames ({header:.2f} s) but only "
        f"{reader.num_frames} ({content:.2f} s) can be decoded: a truncated or damaged file",
        promised, reader.num_frames)


def open_video(path: str | os.PathLike, backend: str = "auto", num_threads: int = 1,
               allow_truncated: bool = False) -> VideoReader:
    """Opens ``path`` with ``backend`` ('auto' | 'torchcodec' | 'pyav'). 'auto' tries torchcodec and falls
    back to PyAV when torchcodec cannot be imported or cannot open the file. Raises FileNotFoundError for a
    missing file, :class:`TruncatedVideoError` for a file whose content falls short of its header (unless
    `allow_truncated`: then its decodable prefix is the video) and :class:`DecodeError` for anything
    unreadable (including files with zero frames)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"{path}: empty file")
    if backend == "auto":
        order = ["torchcodec", "pyav"]
    elif backend in _READERS:
        order = [backend]
    else:
        raise ValueError(f"unknown video backend {backend!r}; expected 'auto', 'torchcodec' or 'pyav'")
    errors = []
    for name in order:
        try:
            reader = _READERS[name](path, num_threads=num_threads)
        except ImportError as error:
            errors.append(f"{name} not importable: {error}")
            continue
        except DecodeError as error:
            errors.append(str(error))
            continue
        except Exception as error:  # an import that fails at load time (torchcodec without FFmpeg)
            errors.append(f"{name}: {type(error).__name__}: {error}")
            continue
        if reader.num_frames <= 0:
            reader.close()
            errors.append(f"{path}: {name} found no video frames")
            continue
        if not allow_truncated:
            try:
                check_complete(reader)
            except TruncatedVideoError:
                reader.close()
                raise
        return reader
    raise DecodeError("; ".join(errors))


def run_with_timeout(fn: Callable[[], object], timeout_s: float | None, what: str = "decode"):
    """Runs ``fn()`` in a daemon thread, returning its result or re-raising its exception; raises
    :class:`DecodeTimeout` when it takes longer than ``timeout_s`` (None or <= 0: run inline)."""
    if timeout_s is None or timeout_s <= 0:
        return fn()
    box: dict[str, object] = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed back to the caller
            box["error"] = error

    thread = threading.Thread(target=target, name=f"ivf-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DecodeTimeout(f"{what} took longer than {timeout_s:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]


def read_clip(path: str | os.PathLike, sample: Callable[[int], torch.Tensor], backend: str = "auto",
              timeout_s: float | None = None, num_threads: int = 1):
    """Opens ``path``, draws frame indices with ``sample(num_frames)`` (any shape, int64) and decodes them.

    Returns ``(frames uint8 [*indices.shape, 3, H, W], indices, num_frames)``; the whole call is bounded by
    ``timeout_s`` (see the module docstring)."""

    def work():
        reader = open_video(path, backend=backend, num_threads=num_threads)
        try:
            indices = sample(reader.num_frames)
            frames = reader.get_frames(indices.reshape(-1))
        finally:
            reader.close()
        return frames.reshape(*indices.shape, *frames.shape[1:]), indices, reader.num_frames

    return run_with_timeout(work, timeout_s, what=f"decode of {os.fspath(path)}")
