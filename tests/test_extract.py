"""ivf-extract: sliding windows, per-video .npy features equal to the model on those windows, resume,
sharding and bad videos reported by name."""

import subprocess

import numpy as np
import pytest
import torch

from internvideo_fast.data.decode import open_video
from internvideo_fast.errors import UserError
from internvideo_fast.extract import (
    ExtractConfig, extract_features, feature_function, main, preprocess, read_video_paths, window_indices,
)
from internvideo_fast.models import create_model


def _write_video(path, num_frames, height=36, width=48, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                    "-s", f"{width}x{height}", "-r", "10", "-i", "pipe:0", "-c:v", "libx264", "-pix_fmt",
                    "yuv420p", str(path)], input=frames.tobytes(), check=True)


def test_window_indices_by_hand():
    # 10 frames, windows of 3 frames every 2nd frame (span 5), a new window every 3 frames: (10 - 5) // 3 + 1 = 2
    assert window_indices(10, 3, 2, 3).tolist() == [[0, 2, 4], [3, 5, 7]]
    # a video shorter than one span: one window, the last frame repeated
    assert window_indices(3, 3, 2, 3).tolist() == [[0, 2, 2]]
    assert window_indices(8, 4, 1, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError):
        window_indices(0, 3, 1, 1)


def test_read_video_paths(tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text("# THUMOS\na/video_1.mp4 3\n\n/abs/video_2.avi\n")
    assert read_video_paths(listing, root="/data") == [("video_1", "/data/a/video_1.mp4"),
                                                      ("video_2", "/abs/video_2.avi")]
    listing.write_text("a/v.mp4\nb/v.mkv\n")
    with pytest.raises(UserError, match=r"videos.txt:2: video id 'v' repeats line 1"):
        read_video_paths(listing)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    _write_video(root / "long.mp4", 22, seed=1)
    _write_video(root / "short.mp4", 3, seed=2)
    (root / "broken.mp4").write_bytes(b"not a video at all" * 10)
    return root


def _micro():
    torch.manual_seed(0)
    return create_model("videomae_vit_micro_patch16", img_size=32, num_frames=4, num_classes=0).eval()


def test_features_are_the_model_on_each_window(clips, tmp_path):
    model = _micro()
    config = ExtractConfig(frames=4, frame_stride=2, stride=3, size=32, batch=2)  # batches split windows
    videos = [("long", str(clips / "long.mp4")), ("broken", str(clips / "broken.mp4")),
              ("short", str(clips / "short.mp4"))]
    messages = []
    result = extract_features(model, videos, tmp_path, config, log=messages.append)
    assert sorted(result["done"]) == ["long", "short"] and list(result["bad"]) == ["broken"]
    assert "broken.mp4" in result["bad"]["broken"] and any("broken" in m for m in messages)
    features = np.load(tmp_path / "long.npy")
    windows = window_indices(22, 4, 2, 3)  # span 7: (22 - 7) // 3 + 1 = 6 windows
    assert features.shape == (6, 96) and features.dtype == np.float32
    reader = open_video(clips / "long.mp4")
    features_of, norm = feature_function(model)
    from internvideo_fast.data.transforms import mean_std

    mean, std = mean_std(norm)
    with torch.no_grad():
        for index in (0, 3, 5):
            frames = reader.get_frames(windows[index])[None]
            expected = features_of(preprocess(frames, 32, 32, mean, std))[0]
            torch.testing.assert_close(torch.from_numpy(features[index]), expected, rtol=1e-4, atol=1e-5)
    assert np.load(tmp_path / "short.npy").shape == (1, 96)
    assert not list(tmp_path.glob("*partial*"))
    # resume: finished videos are skipped, the bad one is tried again
    again = extract_features(model, videos, tmp_path, config, log=messages.append)
    assert sorted(again["skipped"]) == ["long", "short"] and again["done"] == [] and list(again["bad"]) == ["broken"]


def test_preprocess_resizes_crops_and_normalizes():
    frames = torch.full((1, 2, 3, 20, 40), 255, dtype=torch.uint8)
    frames[..., 6:34] = 0  # black columns 6..33 -> 3..16 at 10x20, around the centre crop (columns 5..14)
    out = preprocess(frames, 10, 10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.shape == (1, 3, 2, 10, 10)
    torch.testing.assert_close(out, torch.full_like(out, -1.0))


def test_cli_shards_by_rank_and_reports_bad_videos(clips, tmp_path, monkeypatch, capsys):
    listing = tmp_path / "videos.txt"
    listing.write_text("long.mp4\nbroken.mp4\nshort.mp4\n")
    model = _micro()
    checkpoint = tmp_path / "run" / "checkpoint.pth"
    checkpoint.parent.mkdir()
    config = {"model": "videomae_vit_micro_patch16", "model_args": {"img_size": 32, "num_frames": 4, "num_classes": 0}}
    torch.save({"model": model.state_dict(), "config": config}, checkpoint)
    out = tmp_path / "feats"
    common = ["--list", str(listing), "--root", str(clips), "--out", str(out), "--checkpoint", str(checkpoint),
              "--frames", "4", "--stride", "4", "--size", "32", "--device", "cpu"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(common) == 0  # rank 1 of 2: the second video only
    assert sorted(p.name for p in out.iterdir()) == ["bad_videos.rank1.txt"]
    assert "broken" in (out / "bad_videos.rank1.txt").read_text()
    assert "bad: broken" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    assert main(common) == 0
    assert "ivf-extract: 2/2 videos (100%)" in capsys.readouterr().err  # progress: plain lines off a terminal
    assert sorted(p.name for p in out.glob("*.npy")) == ["long.npy", "short.npy"]
    assert np.load(out / "long.npy").shape == ((22 - 4) // 4 + 1, 96)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="RANK=2"):
        main(common)


@pytest.mark.parametrize("name, args, width, norm", [
    ("uniformerv2_tiny", {"num_classes": 0}, 64, "clip"),
    ("internvideo_mm_tiny", {"with_caption": False}, 32, "clip"),
    ("internvideo_cma_tiny", {"num_classes": 3, "mae_args": {"img_size": 32, "num_frames": 4},
                              "mm_args": {"img_size": 32}}, 128, "imagenet"),
    ("videomae_pretrain_vit_micro_patch16", {"img_size": 32, "num_frames": 4}, 96, "imagenet"),
])
def test_every_encoder_family_gives_one_feature_per_clip(name, args, width, norm):
    model = create_model(name, **args).eval()
    features_of, expected_norm = feature_function(model)
    with torch.no_grad():
        features = features_of(torch.randn(2, 3, 4, 32, 32))
    assert features.shape == (2, width) and expected_norm == norm
    if name == "internvideo_mm_tiny":  # the video-text model's embedding is L2-normalized
        torch.testing.assert_close(features.norm(dim=1), torch.ones(2))


def test_an_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="does not know how to pool a Linear"):
        feature_function(torch.nn.Linear(2, 2))
