"""The `tal` recipe: time <-> feature-grid conversion by hand, training and ivf-eval on tiny generated
features, and clear errors for missing inputs."""

import json

import numpy as np
import pytest
import torch

from internvideo_fast.errors import ConfigError, UserError
from internvideo_fast.train.tasks import evaluate_task, train_task
from internvideo_fast.train.tasks.tal import grid_to_seconds, make_demo_data, seconds_to_grid, tious_of


def test_time_and_grid_by_hand():
    # stride 4, span 16, 30 fps: feature i is centred on frame 4 i + 8, i.e. (4 i + 8) / 30 s
    assert grid_to_seconds(torch.tensor([0.0, 10.0]), 30, 4, 16).tolist() == pytest.approx([8 / 30, 48 / 30])
    assert seconds_to_grid(torch.tensor([48 / 30]), 30, 4, 16).tolist() == pytest.approx([10.0])
    assert tious_of("activitynet")[0] == 0.5 and len(tious_of("activitynet")) == 10
    assert tious_of([0.5]) == (0.5,)
    with pytest.raises(ConfigError, match="data.tious"):
        tious_of("coco")


def _config(tmp_path, features, annotation_file, **data):
    return {"recipe": "tal",
            "model_args": {"embed_dim": 16, "num_heads": 2, "window": 5, "stem_blocks": 1, "num_levels": 3,
                           "head_dim": 16, "regression_ranges": [[0, 4], [4, 8], [8, 1000]]},
            "data": {**{"features": str(features), "annotations": annotation_file and str(annotation_file), "feature_stride": 1,
                        "feature_span": 1, "batch_size": 4, "max_seq_len": 64}, **data},
            "optim": {"base_lr": 3e-3}, "train": {"epochs": 100, "max_steps": 60, "log_every": 1000,
                                                  "output_dir": str(tmp_path / "run")}}


def test_tal_recipe_trains_and_evaluates(tmp_path):
    features, annotations = make_demo_data(tmp_path, num_classes=2, channels=8, train_videos=8, val_videos=4)
    result = train_task(_config(tmp_path, features, annotations), "cpu")
    assert result["steps"] == 60 and result["losses"][-1] < result["losses"][0]
    assert 0.0 <= result["eval"]["mAP"] <= 1.0 and result["eval"]["videos"] == 4
    assert set(result["eval"]) >= {"mAP@0.3", "mAP@0.7"}
    again = evaluate_task("tal", result["checkpoint"], ["data.tious=[0.5]"], "cpu")
    assert again["mAP"] == pytest.approx(result["eval"]["mAP@0.5"])
    with pytest.raises(UserError, match="a 'tal' checkpoint, not 'open_set'"):
        evaluate_task("open_set", result["checkpoint"], [], "cpu")


def test_tal_recipe_errors(tmp_path):
    features, annotations = make_demo_data(tmp_path, num_classes=2, channels=8, train_videos=2, val_videos=1)
    with pytest.raises(ConfigError, match="data.annotations is required"):
        train_task(_config(tmp_path, features, None), "cpu")
    with pytest.raises(ConfigError, match="no video of subset 'train'"):
        train_task(_config(tmp_path, features, annotations, train_subset="train"), "cpu")
    with pytest.raises(ConfigError, match="model_args.depth"):
        config = _config(tmp_path, features, annotations)
        config["model_args"]["depth"] = 3
        train_task(config, "cpu")
    (features / "video_001.npy").unlink()
    with pytest.raises(UserError, match="video_001.npy: no features for video 'video_001'"):
        train_task(_config(tmp_path, features, annotations), "cpu")
    np.save(features / "video_001.npy", np.zeros(5))
    with pytest.raises(UserError, match=r"must be \[num_windows, C\]"):
        train_task(_config(tmp_path, features, annotations), "cpu")
    data = json.loads(annotations.read_text())
    del data["database"]["video_000"]["fps"]
    annotations.write_text(json.dumps(data))
    (features / "video_001.npy").unlink()
    np.save(features / "video_001.npy", np.zeros((9, 8), dtype=np.float32))
    with pytest.raises(ConfigError, match="data.fps is required"):
        train_task(_config(tmp_path, features, annotations), "cpu")


def test_demo_videos_have_timed_actions(tmp_path):
    from internvideo_fast.data.annotations import read_temporal_annotations
    from internvideo_fast.data.decode import open_video
    from internvideo_fast.extract import read_video_paths
    from internvideo_fast.train.tasks.tal import make_demo_videos

    list_path, annotations_path = make_demo_videos(tmp_path, train_videos=1, val_videos=1)
    videos = read_video_paths(list_path)
    annotations = read_temporal_annotations(annotations_path)
    assert [v for v, _ in videos] == list(annotations.videos) == ["video_000", "video_001"]
    assert [v.subset for v in annotations.videos.values()] == ["training", "validation"]
    for (name, path), video in zip(videos, annotations.videos.values()):
        reader = open_video(path)
        assert reader.num_frames == round(video.duration * video.fps)
        reader.close()
        assert video.segments and all(0 <= s.start < s.end <= video.duration for s in video.segments)
