"""The `stal` recipe on tiny AVA-style data: keyframe grouping by hand, training, ivf-eval --task stal with
proposals, and a missing video reported by name."""

import subprocess

import numpy as np
import pytest
import torch

from internvideo_fast.data.annotations import BoxDetection
from internvideo_fast.errors import ConfigError
from internvideo_fast.train.tasks import evaluate_task, train_task
from internvideo_fast.train.tasks.stal import keyframes


def test_keyframes_group_boxes_into_multi_hot_rows():
    rows = [BoxDetection("v", 902, (0.1, 0.1, 0.5, 0.5), 3), BoxDetection("v", 902, (0.1, 0.1, 0.5, 0.5), 1),
            BoxDetection("v", 902, (0.5, 0.5, 0.9, 0.9), 2), BoxDetection("v", 903, (0.1, 0.1, 0.5, 0.5), 2)]
    items = keyframes(rows, 3, "x.csv")
    assert [(i["video"], i["timestamp"], len(i["boxes"])) for i in items] == [("v", 902, 2), ("v", 903, 1)]
    assert items[0]["labels"].tolist() == [[1, 0, 1], [0, 1, 0]]
    with pytest.raises(ConfigError, match=r"x.csv: action id 4 outside 1..3"):
        keyframes(rows + [BoxDetection("v", 1, (0, 0, 1, 1), 4)], 3, "x.csv")


def test_stal_recipe_trains_and_evaluates(tmp_path, capsys):
    frames = np.random.default_rng(0).integers(0, 256, size=(30, 36, 48, 3), dtype=np.uint8)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "48x36",
                    "-r", "10", "-i", "pipe:0", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(tmp_path / "clipA.mp4")],
                   input=frames.tobytes(), check=True)
    (tmp_path / "train.csv").write_text(
        "clipA,1,0.1,0.1,0.5,0.9,1,0\nclipA,1,0.1,0.1,0.5,0.9,3,0\nclipA,1,0.5,0.2,0.9,0.8,2,1\n"
        "clipA,2,0.2,0.1,0.6,0.9,1,0\nmissing,1,0.1,0.1,0.5,0.5,1,0\n")
    (tmp_path / "proposals.csv").write_text("clipA,1,0.1,0.1,0.5,0.9,1,0.9\nclipA,2,0.7,0.1,0.9,0.3,1,0.8\n")
    config = {"recipe": "stal", "model": "videomae_vit_micro_patch16",
              "model_args": {"resolution": 2, "dropout": 0.0, "encoder_args": {"img_size": 32, "num_frames": 4}},
              "data": {"root": str(tmp_path), "train_csv": str(tmp_path / "train.csv"),
                       "val_csv": str(tmp_path / "train.csv"), "num_classes": 3, "fps": 10, "num_frames": 4,
                       "frame_stride": 2, "img_size": 32, "batch_size": 2, "num_workers": 0},
              "train": {"epochs": 2, "log_every": 1, "output_dir": str(tmp_path / "run")}}
    result = train_task(config, "cpu")
    assert result["steps"] == 4 and all(np.isfinite(result["losses"]))
    out = capsys.readouterr().out
    assert "stal: bad video" in out and "missing.mp4" in out
    assert result["eval"]["keyframes"] == 3 and result["eval"]["classes"] == 3 and 0 <= result["eval"]["mAP"] <= 1
    proposals = evaluate_task("stal", result["checkpoint"], [f"data.proposals_csv={tmp_path / 'proposals.csv'}"],
                              "cpu")
    assert proposals["keyframes"] == 2
    assert evaluate_task("stal", result["checkpoint"], [], "cpu")["mAP"] == pytest.approx(result["eval"]["mAP"])
    # the first proposal is the keyframe-1 box with actions 1 and 3; the second overlaps nothing. Action 1
    # has 2 truths (recall at most 1/2), action 2's box is never proposed, action 3 can be found: at most
    # (1/2 + 0 + 1) / 3
    assert proposals["mAP"] <= 0.5 + 1e-6
    assert torch.load(result["checkpoint"], weights_only=True)["config"]["recipe"] == "stal"
