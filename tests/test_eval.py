"""Honest evaluation: every listed video is scored or named as dropped (both loaders), `ivf-eval` fails with
one line when none could be scored or more than eval.max_bad_fraction were dropped, takes official checkpoints
with --model, and names the list line of a label beyond the model's classes."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from internvideo_fast.data import DataConfig, build_loader, make_sample_dataset, read_video_list
from internvideo_fast.eval.__main__ import main as ivf_eval
from internvideo_fast.eval.evaluate import evaluate
from internvideo_fast.models import create_model
from internvideo_fast.models.checkpoint import save_official
from internvideo_fast.train.config import load_config

MODEL = "videomae_vit_micro_patch16"
DATA = ["data.num_frames=4", "data.stride=2", "data.img_size=32", "data.batch_size=2", "data.decode_timeout_s=20"]


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    """The sample val clips (3 classes x 2), a list with two bad files among them, an all-bad, an empty list
    and one whose third line has a label beyond 3 classes."""
    root = tmp_path_factory.mktemp("eval")
    sample = make_sample_dataset(root, num_classes=3, clips_per_class=1, val_per_class=2, num_frames=12,
                                 size=(32, 40), fps=8, seed=2)
    (root / "bad").mkdir()
    (root / "bad" / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    good = read_video_list(sample.val_list)
    lines = [f"{r.path} {r.label}\n" for r in good]
    out = {"good": sample.val_list, "root": root}
    for name, text in (("mixed", lines[:2] + ["bad/random.mp4 0\n"] + lines[2:] + ["bad/missing.mp4 1\n"]),
                       ("all_bad", ["bad/random.mp4 0\n", "bad/missing.mp4 1\n"]),
                       ("empty", ["# nothing listed\n"]),
                       ("label", lines[:2] + ["# a comment\n", f"{good[2].path} 7\n"])):
        (root / f"{name}.txt").write_text("".join(text))
        out[name] = root / f"{name}.txt"
    return out


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "official_ft.pth"
    save_official(create_model(MODEL, num_classes=3, img_size=32, num_frames=4), path)  # {"model": sd}
    return path


def _loader(list_file, **fields):
    cfg = DataConfig(list_file=str(list_file), train=False, num_frames=4, stride=2, img_size=32, batch_size=2,
                     decode_timeout_s=20, **fields)
    return build_loader(cfg, split="val")


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_loader_keeps_skip_reports(lists, caplog, workers):
    loader = _loader(lists["mixed"], num_workers=workers)
    with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.loader"):
        seen = torch.cat([batch["index"] for batch in loader]).tolist()
    records = read_video_list(lists["mixed"])
    bad_positions = [i for i, r in enumerate(records) if r.path.startswith("bad/")]
    assert sorted(seen) == [i for i in range(len(records)) if i not in bad_positions]
    assert sorted(loader.skipped()) == bad_positions
    bad = {Path(p).relative_to(lists["root"]).as_posix(): why for p, why in loader.bad_videos().items()}
    assert set(bad) == {"bad/random.mp4", "bad/missing.mp4"} and "FileNotFoundError" in bad["bad/missing.mp4"]
    assert loader.summary()["bad_videos"] == 2 and loader.summary()["skipped"] == 2
    for name in bad:  # named once each, with "skipped"
        messages = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert len(messages) == 1 and "skipped" in messages[0], messages


def test_dali_loader_keeps_skip_reports(lists):
    from internvideo_fast.data.dali import dali_available

    if not dali_available():
        pytest.skip("DALI is not installed")
    # The CPU DALI decoder reads VP8/VP9/MJPEG only: the H.264 sample clips are dropped by the probe and
    # named too, so every listed video is accounted for.
    loader = _loader(lists["mixed"], loader="dali", extra={"dali_device": "cpu"})
    scored = [i for batch in loader for i in batch["index"].tolist()]
    records = read_video_list(lists["mixed"])
    assert sorted(set(scored) | set(loader.skipped())) == list(range(len(records)))
    names = {Path(p).relative_to(lists["root"]).as_posix() for p in loader.bad_videos()}
    assert {"bad/random.mp4", "bad/missing.mp4"} <= names
    assert {records[i].path for i in loader.skipped()} <= names


class _Constant(torch.nn.Module):
    """Logits favouring class 0 for every clip, whatever it holds."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.classes = classes

    def forward(self, video):
        return torch.arange(self.classes, 0, -1, dtype=torch.float32).expand(video.shape[0], -1)


def test_evaluate_counts_and_names_dropped_videos(lists):
    result = evaluate(_Constant(), _loader(lists["mixed"]), "cpu")
    assert result["videos"] == 6 and result["listed"] == 8 and result["dropped"] == 2
    assert {Path(p).name for p in result["dropped_videos"]} == {"random.mp4", "missing.mp4"}
    assert result["top1"] == pytest.approx(2 / 6)  # class 0 for all: the two class-0 clips
    empty = evaluate(_Constant(), _loader(lists["all_bad"]), "cpu")
    assert empty["videos"] == 0 and empty["dropped"] == 2 and np.isnan(empty["top1"])


def test_label_beyond_the_classes_names_the_list_line(lists):
    from internvideo_fast.errors import UserError

    with pytest.raises(UserError, match=r"label.txt:4: label 7 is outside the model's 3 classes"):
        evaluate(_Constant(), _loader(lists["label"]), "cpu")


def test_training_checks_labels_before_the_first_step(lists, tmp_path):
    from internvideo_fast.errors import UserError
    from internvideo_fast.train.loop import train

    config = load_config(None, [f"model={MODEL}", "model_args.num_classes=3", "model_args.img_size=32",
                                "model_args.num_frames=4", "recipe=finetune", f"data.train_list={lists['label']}",
                                f"train.output_dir={tmp_path / 'run'}", "train.tensorboard=false", *DATA])
    with pytest.raises(UserError, match=r"label.txt:4: label 7 is outside the model's 3 classes"):
        train(config, device="cpu")


def _run(capsys, *argv):
    """ivf-eval's exit code, stdout and stderr less its progress lines (plain lines off a terminal)."""
    code = ivf_eval(list(argv))
    out, err = capsys.readouterr()
    assert "\r" not in err
    return code, out, "".join(line + "\n" for line in err.splitlines() if not PROGRESS.match(line))


PROGRESS = re.compile(r"^ivf-eval: \d+/\d+ batches")


def test_ivf_eval_official_checkpoint_needs_model(lists, official_checkpoint, capsys):
    code, out, err = _run(capsys, "--checkpoint", str(official_checkpoint), f"data.val_list={lists['good']}", *DATA)
    assert code == 2 and err.count("\n") == 1 and "was not written by ivf-train" in err and "--model" in err
    code, out, err = _run(capsys, "--checkpoint", str(official_checkpoint), "--model", MODEL,
                          "model_args.num_classes=3", "model_args.img_size=32", "model_args.num_frames=4",
                          f"data.val_list={lists['good']}", *DATA)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["videos"] == 6 and result["dropped"] == 0 and result["listed"] == 6
    # another model's file: one line naming the file, not a traceback
    code, out, err = _run(capsys, "--checkpoint", str(official_checkpoint), "--model", "uniformerv2_tiny",
                          "model_args.num_classes=3", f"data.val_list={lists['good']}", *DATA)
    assert code == 2 and err.count("\n") == 1 and "official_ft.pth does not fit UniFormerV2" in err


def _trained_checkpoint(tmp_path, val_list) -> Path:
    """A checkpoint as ivf-train writes it: model, config (and more)."""
    config = load_config(None, [f"model={MODEL}", "model_args.num_classes=3", "model_args.img_size=32",
                                "model_args.num_frames=4", "recipe=finetune", f"data.val_list={val_list}", *DATA])
    model = create_model(MODEL, **config["model_args"])
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "config": config, "step": 1}, path)
    return path


def test_ivf_eval_fails_on_dropped_videos(lists, tmp_path, capsys):
    checkpoint = str(_trained_checkpoint(tmp_path, lists["good"]))
    code, out, err = _run(capsys, "--checkpoint", checkpoint, f"data.val_list={lists['mixed']}")
    assert code == 2 and err.count("\n") == 1
    assert "2 of 8 videos of" in err and "could not be scored" in err and "random.mp4" in err
    assert "dropped" in out and "missing.mp4" in out  # the result names them before the error
    code, out, err = _run(capsys, "--checkpoint", checkpoint, f"data.val_list={lists['mixed']}",
                          "eval.max_bad_fraction=0.25")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["dropped"] == 2 and result["videos"] == 6
    code, out, err = _run(capsys, "--checkpoint", checkpoint, f"data.val_list={lists['all_bad']}",
                          "eval.max_bad_fraction=1")
    assert code == 2 and "none of the 2 videos" in err
    code, out, err = _run(capsys, "--checkpoint", checkpoint, f"data.val_list={lists['empty']}")
    assert code == 2 and "lists no video" in err
    code, out, err = _run(capsys, "--checkpoint", checkpoint, f"data.val_list={lists['label']}")
    assert code == 2 and "label.txt:4: label 7" in err


def test_ivf_eval_shows_its_progress(lists, tmp_path, capsys):
    checkpoint = str(_trained_checkpoint(tmp_path, lists["good"]))
    assert ivf_eval(["--checkpoint", checkpoint]) == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if PROGRESS.match(line)]
    assert progress and "(100%)" in progress[-1] and "done" in progress[-1], progress


def test_ivf_eval_one_line_errors_and_debug(tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 100)
    code, out, err = _run(capsys, "--checkpoint", str(garbage))
    assert code == 2 and err.count("\n") == 1 and "garbage.pth" in err
    from internvideo_fast.errors import CheckpointError

    with pytest.raises(CheckpointError):
        ivf_eval(["--checkpoint", str(garbage), "--debug"])
