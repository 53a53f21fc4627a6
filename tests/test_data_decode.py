"""Decoding: frame-exact indices on H.264 (B-frames, short GOP), VP9 and variable frame rate files, the
torchcodec and PyAV backends agreeing bit for bit, counts, broken files, the fallback and the timeout."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from internvideo_fast.data import decode
from internvideo_fast.data.decode import DecodeError, DecodeTimeout, open_video, read_clip, run_with_timeout

BITS = 8  # frame number encoded as 8 black/white 16x16 blocks (4 columns x 2 rows)
CODE_H, CODE_W = 32, 64

ENCODERS = {
    "h264": (".mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-pix_fmt", "yuv420p", "-g", "8",
                      "-bf", "2", "-threads", "1"]),
    "vp9": (".webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-crf", "20", "-b:v", "0",
                      "-pix_fmt", "yuv420p", "-g", "8", "-threads", "1"]),
}


def code_frames(num_frames: int) -> np.ndarray:
    """uint8 [T, 32, 64, 3]: frame t shows the bits of t as white (1) or black (0) blocks."""
    frames = np.zeros((num_frames, CODE_H, CODE_W, 3), dtype=np.uint8)
    for t in range(num_frames):
        for bit in range(BITS):
            if (t >> bit) & 1:
                row, col = divmod(bit, 4)
                frames[t, row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = 255
    return frames


def read_codes(frames: torch.Tensor) -> list[int]:
    """Frame numbers from decoded uint8 [N, 3, 32, 64] code frames."""
    codes = []
    for frame in frames:
        value = 0
        for bit in range(BITS):
            row, col = divmod(bit, 4)
            block = frame[:, row * 16 + 4:(row + 1) * 16 - 4, col * 16 + 4:(col + 1) * 16 - 4]
            value |= int(block.float().mean() > 128) << bit
        codes.append(value)
    return codes


def write_video(path: Path, frames: np.ndarray, codec: str = "h264", fps: int = 10, vfr: bool = False,
                extra: list[str] | None = None) -> Path:
    """Encodes uint8 [T, H, W, 3] frames with ffmpeg. ``vfr``: irregular timestamps (a gap after every
    fourth frame up to frame 20, then 30 fps), muxed without frame duplication or dropping."""
    _, options = ENCODERS[codec]
    t, h, w, _ = frames.shape
    filters = []
    if vfr:
        filters = ["-vf", "settb=1/1000,setpts='if(lte(N,20),(N+2*floor(N/4))/10,3+(N-20)/30)/TB'",
                   "-fps_mode", "passthrough", "-enc_time_base", "1:1000"]
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", str(fps), "-i", "pipe:0", *filters, *options, *(extra or []), str(path)]
    subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    frames = code_frames(40)
    out = {}
    for codec, (suffix, _) in ENCODERS.items():
        out[codec] = (write_video(root / f"cfr{suffix}", frames, codec), 40)
        out[f"{codec}_vfr"] = (write_video(root / f"vfr{suffix}", frames, codec, vfr=True), 40)
    return out


NAMES = ["h264", "vp9", "h264_vfr", "vp9_vfr"]


@pytest.mark.parametrize("backend", ["torchcodec", "pyav"])
@pytest.mark.parametrize("name", NAMES)
def test_frame_exact_and_counted(videos, name, backend):
    path, count = videos[name]
    reader = open_video(path, backend=backend)
    try:
        assert reader.backend == backend
        assert reader.num_frames == count
        wanted = [0, 39, 5, 5, 17, 16, 1, 38, 20, 21, 3]
        frames = reader.get_frames(wanted)
        assert frames.dtype == torch.uint8 and frames.shape == (len(wanted), 3, CODE_H, CODE_W)
        assert read_codes(frames) == wanted
        assert read_codes(reader.get_frames(torch.arange(count))) == list(range(count))
    finally:
        reader.close()


@pytest.mark.parametrize("name", ["h264_vfr", "vp9_vfr"])
def test_fixture_is_vfr(videos, name):
    """The VFR fixtures really are VFR: frame durations differ by 3x, so no rate x duration is the count."""
    import av

    path, count = videos[name]
    with av.open(str(path)) as container:
        pts = sorted(p.pts for p in container.demux(video=0) if p.size)
    steps = np.diff(pts)
    assert len(pts) == count and steps.max() > 2.5 * steps.min()


@pytest.mark.parametrize("name", NAMES)
def test_backends_identical(videos, name):
    path, count = videos[name]
    indices = torch.randint(0, count, (12,))
    a = open_video(path, backend="torchcodec").get_frames(indices)
    b = open_video(path, backend="pyav").get_frames(indices)
    assert torch.equal(a, b), f"max abs difference {(a.int() - b.int()).abs().max()}"


def test_out_of_range(videos):
    reader = open_video(videos["h264"][0])
    with pytest.raises(IndexError):
        reader.get_frames([40])


def test_broken_files(tmp_path, videos):
    with pytest.raises(FileNotFoundError):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DecodeError):
        open_video(tmp_path / "empty.mp4")
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for backend in ("auto", "torchcodec", "pyav"):
        with pytest.raises(DecodeError):
            open_video(tmp_path / "random.mp4", backend=backend)
    with pytest.raises(ValueError):
        open_video(videos["h264"][0], backend="decord")


@pytest.mark.parametrize("backend", ["torchcodec", "pyav"])
@pytest.mark.parametrize("codec, suffix, flags, kept", [
    ("h264", ".mp4", ["-movflags", "+faststart"], 0.8),  # the sample table up front promises every frame
    # only the segment's duration promises anything: a shortfall must pass the 1 s container slack
    ("vp9", ".webm", [], 0.5),
])
def test_truncated_tail_is_reported_with_both_counts(tmp_path, backend, codec, suffix, flags, kept):
    full = write_video(tmp_path / f"full{suffix}", code_frames(40), codec, extra=flags)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(decode.TruncatedVideoError, match=r"cut.* promises 40 frames \(4.00 s\) but only \d+ ") as error:
        open_video(cut, backend=backend)
    assert error.value.promised_frames == 40 and 0 < error.value.decodable_frames < 40
    prefix = open_video(cut, backend=backend, allow_truncated=True)  # on request: the decodable prefix
    assert prefix.num_frames == error.value.decodable_frames
    assert read_codes(prefix.get_frames([0])) == [0]
    # the dataset reports it by name with the counts, never as a shorter video
    with pytest.raises(DecodeError, match="promises 40 frames"):
        read_clip(cut, lambda n: torch.arange(4), backend=backend)


@pytest.mark.parametrize("backend", ["torchcodec", "pyav"])
def test_complete_files_are_not_called_truncated(tmp_path, videos, backend):
    """VFR files, and an mp4 whose edit list presents fewer frames than its sample table holds."""
    for name in NAMES:
        assert open_video(videos[name][0], backend=backend).num_frames == 40
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", "1.3", "-i", str(videos["h264"][0]), "-c",
                    "copy", str(tmp_path / "trimmed.mp4")], check=True, capture_output=True)
    trimmed = open_video(tmp_path / "trimmed.mp4", backend=backend)
    assert 0 < trimmed.num_frames < trimmed.header_frames  # presented frames < the sample table's


def test_auto_falls_back_to_pyav(videos, monkeypatch):
    class Broken:
        def __init__(self, *args, **kwargs):
            raise ImportError("no torchcodec here")

    monkeypatch.setitem(decode._READERS, "torchcodec", Broken)
    reader = open_video(videos["vp9"][0])
    assert reader.backend == "pyav"
    assert read_codes(reader.get_frames([7])) == [7]


def test_read_clip_and_timeout(videos):
    frames, indices, count = read_clip(videos["h264"][0], lambda n: torch.tensor([[1, 2], [30, 31]]), timeout_s=30)
    assert frames.shape == (2, 2, 3, CODE_H, CODE_W) and count == 40
    assert read_codes(frames.reshape(4, 3, CODE_H, CODE_W)) == [1, 2, 30, 31]
    start = time.perf_counter()
    with pytest.raises(DecodeTimeout):
        run_with_timeout(lambda: time.sleep(5), 0.2)
    assert time.perf_counter() - start < 2
    with pytest.raises(KeyError):
        run_with_timeout(lambda: {}["x"], 5)


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory):
    """More of the DALI issue's corpus: HEVC, odd size (97x61, 4:4:4), grayscale, a long GOP, a rotation tag."""
    root = tmp_path_factory.mktemp("odd")

    def ffmpeg(*args):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)

    src = ["-f", "lavfi", "-i", "testsrc=size=96x64:rate=8", "-frames:v", "30"]
    ffmpeg(*src, "-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error", str(root / "hevc.mp4"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=97x61:rate=8", "-frames:v", "30", "-c:v", "libx264",
           "-pix_fmt", "yuv444p", str(root / "odd.mp4"))
    ffmpeg(*src, "-c:v", "libx264", "-pix_fmt", "gray", str(root / "gray.mp4"))
    ffmpeg(*src, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "300", "-bf", "3", str(root / "longgop.mp4"))
    ffmpeg("-i", str(root / "longgop.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(root / "rotated.mp4"))
    return root


@pytest.mark.parametrize("name, shape", [("hevc.mp4", (64, 96)), ("odd.mp4", (61, 97)), ("gray.mp4", (64, 96)),
                                         ("longgop.mp4", (64, 96)), ("rotated.mp4", (96, 64))])
def test_corpus_backends_agree(odd_videos, name, shape):
    indices = [29, 0, 13, 14, 2]
    a = open_video(odd_videos / name, backend="torchcodec")
    b = open_video(odd_videos / name, backend="pyav")
    assert a.num_frames == b.num_frames == 30
    x, y = a.get_frames(indices), b.get_frames(indices)
    assert x.shape == (5, 3, *shape)
    assert torch.equal(x, y), f"max abs difference {(x.int() - y.int()).abs().max()}"
