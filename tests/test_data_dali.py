"""DALI loader: on the CPU (device_id=None, VP9) it returns the torch loader's batches (same labels, indices,
frame numbers, views, and frames within a colour-conversion tolerance), shards like it, and survives a
bad-video corpus reporting each file once. GPU-only parts (NVDEC H.264, fn.readers.video) are marked gpu."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")

from internvideo_fast.data import DataConfig, build_loader, make_sample_dataset, read_video_list  # noqa: E402
from internvideo_fast.data.dali import (  # noqa: E402
    DaliVideoLoader, build_dali_loader, dali_error_summary, probe_video,
)
from internvideo_fast.data.decode import open_video  # noqa: E402
from internvideo_fast.data.loader import VideoLoader  # noqa: E402

# Normalized units: 1/255/0.225 ~ 0.017 per grey level. DALI's CPU YUV->RGB conversion and chroma
# upsampling differ from swscale's: on these small, sharp-edged synthetic frames by ~4 levels on average
# (R and B more than G) and up to ~55 levels at colour edges; resizes with the same geometry add a little.
ATOL_MEAN = 0.12
ATOL_MAX = 1.6


def _ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def vp9(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali")
    sample = make_sample_dataset(root, num_classes=2, clips_per_class=3, val_per_class=2, num_frames=20,
                                 size=(32, 40), fps=8, seed=2, codecs=("vp9",))
    bad = root / "bad"
    bad.mkdir()
    (bad / "random.webm").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    (bad / "empty.webm").write_bytes(b"")
    source = ["-f", "lavfi", "-i", "testsrc=size=40x32:rate=8", "-frames:v", "24"]
    _ffmpeg([*source, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", str(bad / "full.webm")])
    _ffmpeg([*source, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(bad / "h264.mp4")])
    _ffmpeg([*source[:-1], "1", "-c:v", "libvpx-vp9", "-deadline", "realtime", str(bad / "one_frame.webm")])
    data = (bad / "full.webm").read_bytes()
    (bad / "cut.webm").write_bytes(data[: len(data) // 2])
    good = read_video_list(sample.train_list)
    bad_names = ["bad/random.webm", "bad/empty.webm", "bad/missing.webm", "bad/h264.mp4", "bad/one_frame.webm",
                 "bad/cut.webm"]
    lines = [f"{r.path} {r.label}\n" for r in good[:3]] + [f"{n} 1\n" for n in bad_names[:3]] + \
            [f"{r.path} {r.label}\n" for r in good[3:]] + [f"{n} 0\n" for n in bad_names[3:]]
    (root / "mixed.txt").write_text("".join(lines))
    return root, sample, bad_names


def _cfg(list_file, **kw) -> DataConfig:
    base = dict(list_file=str(list_file), img_size=32, batch_size=2, decode_timeout_s=20,
                extra={"dali_device": "cpu", "dali_threads": 1})
    base.update(kw)
    return DataConfig(**base)


def _torch(cfg: DataConfig, **kw) -> VideoLoader:
    return build_loader(dataclasses.replace(cfg, loader="torch", extra={}), **kw)


def _compare(dali_batches, torch_batches, exact_video: bool = True):
    assert len(dali_batches) == len(torch_batches)
    for d, t in zip(dali_batches, torch_batches):
        for key in ("label", "index", "frame_indices", "view"):
            assert torch.equal(d[key], t[key]), key
        assert d["video"].shape == t["video"].shape and d["video"].dtype == torch.float32
        diff = (d["video"].cpu() - t["video"]).abs()
        assert diff.mean() < ATOL_MEAN, float(diff.mean())
        if exact_video:
            assert diff.max() < ATOL_MAX, float(diff.max())


def test_decoded_frames_match_torch_reader(vp9):
    """fn.decoders.video (CPU, frames=...) returns the same frames as our reader for unsorted, repeated indices."""
    from nvidia.dali import fn, pipeline_def

    root, sample, _ = vp9
    path = str(root / read_video_list(sample.train_list)[0].path)
    wanted = [19, 0, 5, 5, 12, 3]
    encoded = np.fromfile(path, dtype=np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        data = fn.external_source(source=lambda: [encoded], batch=True)
        return fn.decoders.video(data, device="cpu", frames=wanted)

    p = pipe()
    p.build()
    dali = torch.from_numpy(np.array(p.run()[0].at(0))).permute(0, 3, 1, 2).to(torch.int16)  # [T, C, H, W]
    reader = open_video(path)
    ours = reader.get_frames(wanted).to(torch.int16)
    reader.close()
    assert dali.shape == ours.shape
    diff = (dali - ours).abs().float()
    assert diff.mean() < 6.0 and diff.max() <= 90, (float(diff.mean()), float(diff.max()))
    # frame identity: each DALI frame is closest to the torch frame with the same number
    for i in range(len(wanted)):
        distances = [(dali[i] - ours[j]).abs().float().mean() for j in range(len(wanted))]
        assert wanted[int(np.argmin(distances))] == wanted[i]


@pytest.mark.parametrize("sampling", ["dense", "segment"])
def test_test_mode_matches_torch_loader(vp9, sampling):
    """Multi-clip x 3-crop testing: same rows, labels, indices, frame numbers; frames within tolerance."""
    root, sample, _ = vp9
    cfg = _cfg(sample.val_list, train=False, sampling=sampling, num_frames=4, stride=3, test_clips=2,
               test_crops=3, loader="dali")
    dali_loader = build_loader(cfg)
    assert isinstance(dali_loader, DaliVideoLoader)
    dali_batches = list(dali_loader)
    torch_batches = list(_torch(cfg))
    assert dali_batches[0]["video"].shape == (2 * 2 * 3, 3, 4, 32, 32)
    _compare(dali_batches, torch_batches)
    assert dali_loader.bad_videos() == {}


def test_train_mode_matches_torch_loader(vp9):
    """Training: multiscale crops + flips + repeated augmentation, shuffled, sharded, resumed: the same plan."""
    root, sample, _ = vp9
    cfg = _cfg(sample.train_list, train=True, num_frames=4, stride=2, img_size=24, flip=True, repeated_aug=2,
               crop="multiscale", loader="dali")
    for rank in range(2):
        dali_loader = build_dali_loader(cfg, rank=rank, world_size=2, seed=5)
        torch_loader = _torch(cfg, rank=rank, world_size=2, seed=5)
        for epoch in (0, 1):
            dali_loader.set_epoch(epoch)
            torch_loader.set_epoch(epoch)
            _compare(list(dali_loader), list(torch_loader), exact_video=False)
        assert len(dali_loader) == len(torch_loader)
    resumed = build_dali_loader(cfg, seed=5, start_step=1)
    full = list(build_dali_loader(cfg, seed=5))
    rest = list(resumed)
    assert len(rest) == len(full) - 1
    for a, b in zip(rest, full[1:]):
        assert torch.equal(a["frame_indices"], b["frame_indices"]) and torch.equal(a["video"], b["video"])


def test_video_text_lists_carry_the_torch_loaders_captions_and_tokens(vp9, tmp_path):
    """A video-text list through DALI: the caption, token and cut-caption fields of the torch loader's batches."""
    root, sample, _ = vp9
    records = read_video_list(sample.train_list)
    captions = ["a square moving left", "a square moving to the right across the whole frame quickly", "up"]
    text_list = tmp_path / "captions.txt"
    text_list.write_text("".join(f"{r.path}\t{captions[i % 3]}\n" for i, r in enumerate(records)))
    cfg = _cfg(text_list, root=str(root), train=True, text=True, max_text_len=8, num_frames=4, stride=2,
               repeated_aug=2, loader="dali")
    dali_batches, torch_batches = list(build_loader(cfg, seed=3)), list(_torch(cfg, seed=3))
    _compare(dali_batches, torch_batches, exact_video=False)
    for d, t in zip(dali_batches, torch_batches):
        assert d["caption"] == t["caption"] and torch.equal(d["tokens"], t["tokens"])
        assert d["captions_cut"] == t["captions_cut"]
    cut = [i for batch in dali_batches for i in batch["captions_cut"]]
    assert sorted(cut) == [i for i in range(len(records)) if i % 3 == 1]


def test_random_resized_crop_matches(vp9):
    root, sample, _ = vp9
    cfg = _cfg(sample.train_list, train=True, num_frames=3, stride=5, img_size=16, crop="random_resized",
               loader="dali", batch_size=3)
    _compare(list(build_loader(cfg, seed=1)), list(_torch(cfg, seed=1)), exact_video=False)


def test_bad_corpus_never_crashes(vp9, caplog):
    root, _, bad_names = vp9
    for train in (True, False):
        cfg = _cfg(root / "mixed.txt", train=train, num_frames=4, stride=2, short_video="error",
                   test_clips=1, loader="dali")
        loader = build_loader(cfg, seed=3)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.dali"):
            batches = [b for _ in range(2) for b in loader]
        assert batches
        good = {i for i, r in enumerate(read_video_list(root / "mixed.txt")) if not r.path.startswith("bad/")}
        for batch in batches:
            assert set(batch["index"].tolist()) <= good
            assert batch["video"].shape[1:] == (3, 4, 32, 32)
        reported = {Path(p).relative_to(root).as_posix() for p in loader.bad_videos()}
        must = set(bad_names) - {"bad/cut.webm"}  # a cut webm may still be readable up to the cut
        assert must <= reported <= set(bad_names)
        for name in reported:
            assert sum(name in r.getMessage() for r in caplog.records) == 1, name
        assert "codec" in loader.bad_videos()[str(root / "bad/h264.mp4")]
        if not train:  # skipped, not replaced: the good records exactly once
            assert sorted(i for b in batches[: len(batches) // 2] for i in b["index"].tolist()) == sorted(good)


def test_dali_failure_falls_back_to_torch(vp9, caplog):
    """If DALI raises mid-pass, the rest of the pass is decoded by the torch dataset: same batches, no crash."""
    root, sample, _ = vp9
    cfg = _cfg(sample.val_list, train=False, num_frames=4, stride=3, batch_size=1, loader="dali")
    loader = build_loader(cfg)
    build = loader._build_frames_pipeline

    def failing_after_one():
        pipe, iterator = build()

        def gen():
            yield next(iter(iterator))
            raise RuntimeError("simulated DALI decode error")
        return pipe, gen()

    loader._build_frames_pipeline = failing_after_one
    with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.dali"):
        batches = list(loader)
    assert loader.fallback_batches == len(batches) // 2 > 0  # DALI, torch, DALI (new pipeline), torch, ...
    assert any("simulated DALI decode error" in r.getMessage() for r in caplog.records)
    _compare(batches, list(_torch(cfg)))


def test_frame_past_the_end_is_not_black(vp9, caplog, monkeypatch):
    """A file whose frame count was overestimated: DALI (pad_mode="none") raises instead of returning black
    frames; that batch comes from the torch dataset (its own exact count), and the pass goes on with DALI.
    The truncated file stands for one whose header promises nothing the decoders could check, so the
    truncation check (which names cut.webm as truncated otherwise) is off here."""
    from internvideo_fast.data import decode

    monkeypatch.setattr(decode, "check_complete", lambda reader: None)
    root, sample, _ = vp9
    records = read_video_list(sample.val_list)
    (root / "cut.txt").write_text(f"{records[0].path} 0\nbad/cut.webm 1\n{records[1].path} 1\n")
    cfg = _cfg(root / "cut.txt", train=False, num_frames=4, stride=6, batch_size=1, loader="dali")
    loader = build_loader(cfg)
    info = loader.probe()
    real = info[1][0]
    assert real < 19  # truncated: fewer frames counted than the 24 written
    info[1] = (24, *info[1][1:])  # pretend the probe believed the container
    with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.dali"):
        batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0], [1], [2]]
    assert loader.fallback_batches == 1
    assert [Path(p).name for p in loader.fallbacks[0]["paths"]] == ["cut.webm"]
    assert "out-of-bounds" in loader.fallbacks[0]["error"], loader.fallbacks
    assert "fn.decoders.video" in loader.fallbacks[0]["error"]
    assert "dali.py" not in loader.fallbacks[0]["error"]  # DALI's traceback (our file's path) is left out
    assert sum("cut.webm" in r.getMessage() and "DALI failed" in r.getMessage() for r in caplog.records) == 1
    assert int(batches[1]["frame_indices"].max()) < real
    assert batches[1]["video"].std(dim=(0, 1, 3, 4)).min() > 0.1  # no black (constant) frame
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.dali"):
        again = list(loader)  # the same file fails DALI again: decoded by torch again, not logged again
    assert [b["index"].tolist() for b in again] == [[0], [1], [2]] and loader.fallback_batches == 2
    assert not any("DALI failed" in r.getMessage() for r in caplog.records)


def test_dali_error_summary_drops_the_traceback():
    """The fallback line names the operator and the cause whatever the length of the caller's path."""
    deep = "/" + "/".join(["very-long-checkout-folder"] * 30) + "/internvideo_fast/data/dali.py"
    error = RuntimeError(
        "Critical error in pipeline: Error in CPU operator `nvidia.dali.fn.decoders.video`, which was used in "
        f"the pipeline definition with the following traceback:\n  File \"{deep}\", line 342, in pipeline\n"
        "    video = fn.decoders.video(encoded)\n\nencountered:\n\nUnexpected out-of-bounds\nStacktrace (3):\n#0 x")
    summary = dali_error_summary(error)
    assert summary == "RuntimeError: nvidia.dali.fn.decoders.video (CPU): Unexpected out-of-bounds"
    assert dali_error_summary(ValueError("x " * 400)).startswith("ValueError: x x")
    assert len(dali_error_summary(ValueError("x " * 400))) == 300


def test_probe_reports_frames(vp9):
    root, sample, _ = vp9
    path = str(root / read_video_list(sample.train_list)[0].path)
    assert probe_video(path, codecs=("vp9",)) == (20, 32, 40)
    with pytest.raises(FileNotFoundError):
        probe_video(str(root / "nope.webm"))


def test_probe_cache(vp9, tmp_path):
    root, _, bad_names = vp9
    cache = tmp_path / "probe.json"
    cfg = _cfg(root / "mixed.txt", train=False, loader="dali",
               extra={"dali_device": "cpu", "dali_probe_cache": str(cache), "dali_probe_workers": 2})
    first = build_loader(cfg)
    info = first.probe()
    assert cache.exists()
    second = build_loader(cfg)
    second.probe()
    assert second._info == info and second.bad_videos() == first.bad_videos()
    # the rest: one_frame.webm too short; cut.webm is named as truncated (its header promises 24 frames)
    probe_bad = {"bad/random.webm", "bad/empty.webm", "bad/missing.webm", "bad/h264.mp4", "bad/cut.webm"}
    assert {Path(p).relative_to(root).as_posix() for p in first.bad_videos()} == probe_bad


def test_auto_is_torch_without_gpu(vp9):
    root, sample, _ = vp9
    loader = build_loader(_cfg(sample.val_list, train=False, loader="auto"))
    assert isinstance(loader, DaliVideoLoader) == torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------------
# GPU only
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_clips(tmp_path_factory) -> dict[str, Path]:
    """Real H.264 and HEVC clips for the GPU tests, set name -> list file (``path label`` lines beside the
    clips): the device kit's (``IVF_KIT_CLIPS``, for a GPU machine without ffmpeg) or small ones made here."""
    kit = os.environ.get("IVF_KIT_CLIPS")
    names = ("prepared_320p", "hevc_320p", "h264_720p")
    if kit and all((Path(kit) / name / "list.txt").is_file() for name in names):
        return {name: Path(kit) / name / "list.txt" for name in names}
    if shutil.which("ffmpeg") is None:
        pytest.skip("no clips: IVF_KIT_CLIPS (bench/device_kit.py) or the ffmpeg command line tool")
    root = tmp_path_factory.mktemp("gpu-clips")
    encoders = {"prepared_320p": ["-c:v", "libx264", "-g", "16"], "h264_720p": ["-c:v", "libx264", "-g", "60"],
                "hevc_320p": ["-c:v", "libx265", "-tag:v", "hvc1", "-x265-params", "log-level=error"]}
    lists = {}
    for name, codec in encoders.items():
        folder = root / name
        folder.mkdir()
        for clip in range(3):
            _ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=128x72:rate=30", "-vf", f"hue=h={50 * clip}",
                     "-frames:v", "90", *codec, "-pix_fmt", "yuv420p", str(folder / f"clip{clip}.mp4")])
        (folder / "list.txt").write_text("".join(f"clip{clip}.mp4 {clip % 2}\n" for clip in range(3)))
        lists[name] = folder / "list.txt"
    return lists


def _assert_no_black_frames(video: torch.Tensor) -> None:
    """Every frame of every row has content (testsrc2 is never flat; a padding frame is constant)."""
    spread = video.float().std(dim=(1, 3, 4))  # [B, T]
    assert spread.min() > 0.05, spread.min()


@pytest.mark.gpu
@pytest.mark.parametrize("codec_set", ["prepared_320p", "hevc_320p"])
def test_gpu_nvdec_matches_torch_loader(gpu_clips, codec_set):
    """NVDEC (fn.decoders.video on mixed) H.264 and HEVC: the torch loader's rows, frame numbers and pixels."""
    cfg = _cfg(gpu_clips[codec_set], train=False, num_frames=8, stride=4, img_size=64, test_clips=2,
               test_crops=1, loader="dali", extra={"dali_device": "gpu"})
    loader = build_loader(cfg)
    dali_batches = list(loader)
    assert dali_batches and dali_batches[0]["video"].is_cuda
    assert loader.bad_videos() == {} and loader.fallback_batches == 0
    _compare(dali_batches, list(_torch(cfg)))
    for batch in dali_batches:
        _assert_no_black_frames(batch["video"])


@pytest.mark.gpu
@pytest.mark.parametrize("codec_set", ["h264_720p", "hevc_320p"])
def test_gpu_reader_frame_numbers(gpu_clips, codec_set):
    """fn.readers.video: frame numbers start + stride * k, labels looked up by record, no padding frames."""
    cfg = _cfg(gpu_clips[codec_set], train=True, num_frames=8, stride=4, img_size=48, crop="random_resized",
               loader="dali", extra={"dali_device": "gpu", "dali_decoder": "reader"})
    loader = build_loader(cfg, rank=0, world_size=1, seed=1)
    records = read_video_list(gpu_clips[codec_set])
    batches = list(loader)
    assert batches
    for batch in batches:
        assert batch["video"].is_cuda and batch["video"].shape[1:] == (3, 8, 48, 48)
        starts = batch["frame_indices"][:, :1]
        assert torch.equal(batch["frame_indices"], starts + 4 * torch.arange(8)[None])
        assert batch["label"].tolist() == [records[i].label for i in batch["index"].tolist()]
        _assert_no_black_frames(batch["video"])


@pytest.mark.gpu
def test_gpu_bad_corpus_skipped_and_named(gpu_clips, tmp_path, caplog):
    """On the GPU path as on the CPU: bad files never crash a pass, each is reported once by name."""
    source = gpu_clips["prepared_320p"]
    good = read_video_list(source)
    root = tmp_path
    for record in good:
        (root / record.path).write_bytes((source.parent / record.path).read_bytes())
    data = (source.parent / good[0].path).read_bytes()
    (root / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    (root / "empty.mp4").write_bytes(b"")
    (root / "head_only.mp4").write_bytes(data[:2000])
    bad_names = ["random.mp4", "empty.mp4", "missing.mp4", "head_only.mp4"]
    lines = [f"{r.path} {r.label}\n" for r in good] + [f"{name} 1\n" for name in bad_names]
    (root / "mixed.txt").write_text("".join(lines))
    for train in (True, False):
        cfg = _cfg(root / "mixed.txt", train=train, num_frames=8, stride=4, img_size=48, loader="dali",
                   extra={"dali_device": "gpu"})
        loader = build_loader(cfg, seed=3)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.dali"):
            batches = list(loader)
        assert batches
        for batch in batches:
            assert set(batch["index"].tolist()) <= set(range(len(good)))
            _assert_no_black_frames(batch["video"])
        reported = {Path(p).name for p in loader.bad_videos()}
        assert reported == set(bad_names), reported
        for name in reported:
            assert sum(name in r.getMessage() for r in caplog.records) == 1, name


@pytest.fixture(scope="module")
def odd_vp9(tmp_path_factory):
    """The rest of the issue's corpus as the DALI CPU backend sees it: variable frame rate, a long GOP and an
    odd size in VP9 (decodable), HEVC and grayscale H.264 (codecs DALI 2.4 cannot decode on the CPU)."""
    root = tmp_path_factory.mktemp("dali-odd")
    src = ["-f", "lavfi", "-i", "testsrc=size=48x32:rate=8", "-frames:v", "40"]
    vp9 = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p"]
    # VFR: every 4th frame held 3x as long (setpts), timestamps kept (-fps_mode passthrough).
    _ffmpeg([*src, "-vf", "setpts='N/8/TB+floor(N/4)*2/8/TB'", "-fps_mode", "passthrough", *vp9,
             str(root / "vfr.webm")])
    _ffmpeg([*src, *vp9, "-g", "300", str(root / "longgop.webm")])
    _ffmpeg(["-f", "lavfi", "-i", "testsrc=size=97x61:rate=8", "-frames:v", "40", *vp9, str(root / "odd.webm")])
    _ffmpeg([*src, "-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error",
             str(root / "hevc.mp4")])
    _ffmpeg([*src, "-c:v", "libx264", "-pix_fmt", "gray", str(root / "gray.mp4")])
    names = ["vfr.webm", "longgop.webm", "odd.webm", "hevc.mp4", "gray.mp4"]
    (root / "list.txt").write_text("".join(f"{name} {i % 2}\n" for i, name in enumerate(names)))
    return root


def test_odd_corpus_through_the_dali_cpu_loader(odd_vp9, caplog):
    """VFR, long-GOP and odd-size VP9 give the torch loader's frames (same indices, colour tolerance); HEVC
    and grayscale H.264 are reported once by name (codec) and skipped, never crash."""
    root = odd_vp9
    cfg = _cfg(root / "list.txt", train=False, num_frames=8, stride=4, batch_size=1, test_clips=1,
               short_side=32, crop="center", loader="dali")
    with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.dali"):
        loader = build_loader(cfg, seed=0)
        dali = list(loader)
    reported = {Path(p).name: reason for p, reason in loader.bad_videos().items()}
    assert set(reported) == {"hevc.mp4", "gray.mp4"}, reported
    assert all("codec" in reason for reason in reported.values()), reported
    for name in reported:
        assert sum(name in r.getMessage() for r in caplog.records) == 1, name
    reference = [b for b in _torch(cfg, seed=0) if int(b["index"][0]) < 3]
    assert [int(b["index"][0]) for b in dali] == [0, 1, 2]
    for d, t in zip(dali, reference):
        for key in ("label", "index", "frame_indices", "view"):
            assert torch.equal(d[key], t[key]), key
        # Frame-exact: each DALI frame is nearest to the torch frame with the same number. (Colours differ
        # more than in _compare: testsrc's saturated bars at 48x32 are all chroma edges.)
        frames = d["video"].shape[2]
        for f in range(frames):
            distances = [float((d["video"][0, :, f] - t["video"][0, :, g]).abs().mean()) for g in range(frames)]
            assert int(np.argmin(distances)) == f, (int(d["index"][0]), f, distances)
        assert float((d["video"] - t["video"]).abs().mean()) < 0.35
