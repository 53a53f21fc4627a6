"""The `vqa` recipe on real (tiny) video files: training, ivf-eval --task vqa, the answer vocabulary, a bad
video reported by name, and mixed choice counts rejected."""

import json
import subprocess

import numpy as np
import pytest

from internvideo_fast.data.annotations import QARecord
from internvideo_fast.errors import ConfigError
from internvideo_fast.train.tasks import evaluate_task, train_task
from internvideo_fast.train.tasks.vqa_data import answer_vocabulary


def _write_video(path, seed):
    frames = np.random.default_rng(seed).integers(0, 256, size=(10, 36, 48, 3), dtype=np.uint8)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "48x36",
                    "-r", "10", "-i", "pipe:0", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
                   input=frames.tobytes(), check=True)


def test_answer_vocabulary_takes_the_most_frequent():
    records = [QARecord("v", "q", a) for a in ["Dog", "cat", "dog", "bird", "cat", "dog"]]
    records.append(QARecord("v", "q", 0, ("a", "b")))
    assert answer_vocabulary(records, 2) == ["dog", "cat"]


def test_vqa_recipe_trains_and_evaluates(tmp_path, capsys):
    for index in range(3):
        _write_video(tmp_path / f"video{index}.mp4", index)
    (tmp_path / "video9.mp4").write_bytes(b"broken" * 20)
    questions = [{"video_id": 0, "question": "what is shown?", "answer": "noise"},
                 {"video_id": 1, "question": "what is shown?", "answer": "static"},
                 {"video_id": 2, "question": "", "choices": ["noise", "a cat", "a dog"], "answer": 0},
                 {"video_id": 9, "question": "what is shown?", "answer": "noise"}]
    (tmp_path / "qa.json").write_text(json.dumps(questions))
    config = {"recipe": "vqa", "model": "internvideo_mm_tiny",
              "model_args": {"dim": 16, "depth": 1, "num_heads": 2},
              "data": {"root": str(tmp_path), "video_name": "video{}", "train_qa": str(tmp_path / "qa.json"),
                       "val_qa": str(tmp_path / "qa.json"), "num_frames": 4, "img_size": 32, "context_length": 16,
                       "batch_size": 4, "num_workers": 0},
              "train": {"epochs": 3, "log_every": 1, "output_dir": str(tmp_path / "run")}}
    result = train_task(config, "cpu")
    assert result["steps"] == 3 and all(np.isfinite(result["losses"]))
    out = capsys.readouterr().out
    assert "vqa: bad video" in out and "video9.mp4" in out
    assert result["eval"]["questions"] == 4 and result["eval"]["answered"] == 3
    assert 0 <= result["eval"]["open_ended_accuracy"] <= 1 and "multiple_choice_accuracy" in result["eval"]
    again = evaluate_task("vqa", result["checkpoint"], [], "cpu")
    assert again == result["eval"]
    questions.append({"video_id": 1, "question": "", "choices": ["x", "y"], "answer": 1})
    (tmp_path / "mixed.json").write_text(json.dumps(questions))
    with pytest.raises(ConfigError, match=r"data.train_qa: .*\[2, 3\] choices"):
        train_task({**config, "data": {**config["data"], "train_qa": str(tmp_path / "mixed.json")},
                    "train": {**config["train"], "output_dir": str(tmp_path / "mixed")}}, "cpu")
