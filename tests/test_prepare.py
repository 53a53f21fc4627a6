"""`ivf-prepare` (internvideo_fast.data.prepare): re-encoding to a short side and a fixed GOP, resuming,
bad-file handling and the rewritten lists, on tiny synthetic videos."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from internvideo_fast.data import make_sample_dataset
from internvideo_fast.data.lists import read_video_list, read_video_text_list
from internvideo_fast.data.prepare import _Settings, main, prepare_dataset, prepare_video

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="needs the ffmpeg and ffprobe command line tools")

GOP = 4
SHORT = 32
BAD = {
    "videos/train/empty.mp4": ("empty",),
    # ffprobe fails on most garbage but reads the odd one as an audio-only stream: either is the right report
    "videos/train/random.mp4": ("unreadable", "no video stream"),
    "videos/train/truncated.mp4": ("truncated",),
    "videos/train/missing.mp4": ("missing",),
}


def _probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
                          "-show_entries", "stream=width,height,nb_read_packets,avg_frame_rate",
                          "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    stream = json.loads(out)["streams"][0]
    return {"width": int(stream["width"]), "height": int(stream["height"]),
            "frames": int(stream["nb_read_packets"]), "rate": stream["avg_frame_rate"]}


def _key_frames(path: Path) -> list[int]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_frames", "-show_entries",
                          "frame=key_frame", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True).stdout
    flags = [line.strip().split(",")[0] for line in out.splitlines() if line.strip()]
    return [i for i, flag in enumerate(flags) if flag == "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare_src")
    data = make_sample_dataset(root, num_classes=2, clips_per_class=2, val_per_class=1, num_frames=20,
                               size=(64, 48), fps=8)
    train = root / "videos" / "train"
    (train / "empty.mp4").write_bytes(b"")
    (train / "random.mp4").write_bytes(random.Random(4000).randbytes(4000))  # the same garbage every run
    whole = (train / "c0_000.mp4").read_bytes()
    (train / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    good = data.train_list.read_text()
    bad_lines = "".join(f"{path} {k % 2}\n" for k, path in enumerate(BAD))
    # a bad file listed twice is still reported once
    (root / "mixed.txt").write_text(good + bad_lines + "videos/train/empty.mp4 1\n")
    return data


def _check_outputs(out_root: Path, src_root: Path, records) -> None:
    for record in records:
        out = out_root / record.path
        assert out.suffix == ".mp4" and out.is_file()
        info, source = _probe(out), _probe(src_root / record.path)
        assert min(info["width"], info["height"]) == SHORT
        assert info["width"] % 2 == 0 and info["height"] % 2 == 0
        # aspect kept (portrait 48x64 -> 32x42/43, rounded to even)
        assert abs(info["height"] - SHORT * source["height"] / source["width"]) <= 1.0
        assert info["frames"] == source["frames"]  # constant frame rate kept, no frame dropped or added
        assert info["rate"] == source["rate"]
        keys = _key_frames(out)
        assert keys == list(range(0, source["frames"], GOP))


def test_prepare_resizes_keyframes_and_lists_bad_files(dataset, tmp_path):
    src_root = dataset.root
    out_root = tmp_path / "out"
    # an interrupted earlier run left a temporary file: it is not a finished output
    stale = out_root / "videos" / "train" / "c0_001.mp4.tmp4242"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a video")

    summary = prepare_dataset(src_root / "mixed.txt", src_root, out_root, short_side=SHORT, gop=GOP, jobs=2,
                              timeout_s=60)
    good = read_video_list(dataset.train_list)
    assert summary["encoded"] == len(good) and summary["skipped"] == 0
    assert summary["total"] == len(good) + len(BAD)
    bad = dict(summary["bad"])
    assert len(summary["bad"]) == len(bad) == len(BAD)  # each bad file once
    for path, words in BAD.items():
        assert any(word in bad[path].lower() for word in words), (path, bad[path])
    lines = (out_root / "bad_videos.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == list(BAD)
    assert all(line.split("\t")[1] for line in lines)
    assert not stale.exists()
    assert not list(out_root.rglob("*.tmp*"))

    new_list = out_root / "mixed.txt"
    assert summary["out_list"] == str(new_list) and summary["records"] == len(good)
    new = read_video_list(new_list)
    # .mp4 sources keep their name
    assert [(r.path, r.label) for r in new] == [(r.path, r.label) for r in good]
    assert not any(r.path in BAD for r in new)
    _check_outputs(out_root, src_root, new)

    # A second run re-encodes nothing and reports the same bad files.
    mtimes = {p: p.stat().st_mtime_ns for p in out_root.rglob("*.mp4")}
    again = prepare_dataset(src_root / "mixed.txt", src_root, out_root, short_side=SHORT, gop=GOP, jobs=2,
                            timeout_s=60)
    assert again["encoded"] == 0 and again["skipped"] == len(good)
    assert again["bad"] == summary["bad"]
    assert {p: p.stat().st_mtime_ns for p in out_root.rglob("*.mp4")} == mtimes
    assert read_video_list(new_list) == new

    # Interrupted: an output missing with its temp file left behind, another cut short under its final name
    # (newer than its source, but not decodable), a third older than its (updated) source: all redone.
    first, second, third = (out_root / r.path for r in new[:3])
    first.unlink()
    first.with_name(first.name + ".tmp999-1").write_bytes(b"partial")
    second.write_bytes(b"")
    src_third = src_root / new[2].path
    os.utime(src_third, ns=(third.stat().st_mtime_ns + 10**9,) * 2)
    third_stats = third.stat().st_mtime_ns
    third_done = prepare_dataset(src_root / "mixed.txt", src_root, out_root, short_side=SHORT, gop=GOP,
                                 jobs=2, timeout_s=60)
    assert third_done["encoded"] == 3 and third_done["skipped"] == len(good) - 3
    assert not list(out_root.rglob("*.tmp*"))
    assert third.stat().st_mtime_ns != third_stats
    _check_outputs(out_root, src_root, new[:3])


def test_video_text_list_keeps_captions(dataset, tmp_path):
    captions = dataset.caption_list("train")
    listed = captions.parent / "captions_bad.txt"
    listed.write_text(captions.read_text() + "videos/train/missing.mp4\ta caption of nothing\n")
    out_root = tmp_path / "out"
    summary = prepare_dataset(listed, dataset.root, out_root, short_side=SHORT, gop=GOP, jobs=2,
                              out_list=tmp_path / "new_captions.txt")
    assert [path for path, _ in summary["bad"]] == ["videos/train/missing.mp4"]
    old = read_video_text_list(captions)
    new = read_video_text_list(tmp_path / "new_captions.txt")
    assert [(r.path, r.caption) for r in new] == [(r.path, r.caption) for r in old]
    assert summary["encoded"] == len(old)
    _check_outputs(out_root, dataset.root, new[:1])


def test_no_upscale_landscape_and_renamed_suffix(tmp_path):
    small = make_sample_dataset(tmp_path / "small", num_classes=2, clips_per_class=1, val_per_class=1,
                                num_frames=8, size=(24, 40), fps=8)  # landscape, short side 24 < 32
    wide = make_sample_dataset(tmp_path / "wide", num_classes=2, clips_per_class=1, val_per_class=1,
                               num_frames=8, size=(40, 64), fps=8, codecs=("mjpeg",))  # .avi sources
    out_small, out_wide = tmp_path / "out_small", tmp_path / "out_wide"
    prepare_dataset(small.train_list, small.root, out_small, short_side=SHORT, gop=GOP, jobs=2)
    for record in read_video_list(out_small / "train.txt"):
        info = _probe(out_small / record.path)
        assert (info["width"], info["height"]) == (40, 24)
    summary = prepare_dataset(wide.train_list, wide.root, out_wide, short_side=SHORT, gop=GOP, jobs=2)
    assert summary["bad"] == []
    new = read_video_list(out_wide / "train.txt")
    old = read_video_list(wide.train_list)
    assert [r.path for r in new] == [r.path[: -len(".avi")] + ".mp4" for r in old]
    assert [r.label for r in new] == [r.label for r in old]
    for record in new:
        info = _probe(out_wide / record.path)
        assert info["height"] == SHORT and info["width"] % 2 == 0
        assert abs(info["width"] - 64 * SHORT / 40) <= 1
        assert info["frames"] == 8
        assert _key_frames(out_wide / record.path) == [0, 4]


def test_timeout_counts_as_bad(dataset, tmp_path):
    settings = _Settings(short_side=SHORT, gop=GOP, codec="h264", crf=23, preset="fast", threads=1,
                         timeout_s=1e-4, force=False)
    status, reason = prepare_video(dataset.root / "videos/train/c0_000.mp4", tmp_path / "x.mp4", settings)
    assert status == "bad" and ("timed out" in reason or "timeout" in reason), reason
    assert not (tmp_path / "x.mp4").exists()


def test_cli(dataset, tmp_path, capsys):
    out_root = tmp_path / "cli_out"
    code = main([str(dataset.val_list), "--root", str(dataset.root), "--out", str(out_root), "--short-side",
                 str(SHORT), "--gop", str(GOP), "--jobs", "2", "--crf", "30", "--timeout", "60"])
    assert code == 0
    captured = capsys.readouterr()
    assert "encoded" in captured.out
    videos = len(read_video_list(dataset.val_list))
    # Not a terminal: plain progress lines on stderr, the last one when all videos are done.
    progress = [line for line in captured.err.splitlines() if line.startswith("ivf-prepare: ")]
    assert progress and progress[-1].startswith(f"ivf-prepare: {videos}/{videos} videos (100%), elapsed ")
    assert "done" in progress[-1] and "\r" not in captured.err
    assert [r.label for r in read_video_list(out_root / "val.txt")] == [r.label for r in
                                                                        read_video_list(dataset.val_list)]
    assert (out_root / "bad_videos.txt").read_text() == ""
    assert main([str(tmp_path / "no_such_list.txt"), "--out", str(out_root), "-q"]) == 2

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["ivf-prepare"] == "internvideo_fast.data.prepare:main"
