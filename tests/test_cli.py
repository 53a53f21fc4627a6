"""The `ivf` command line."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from internvideo_fast.errors import ConfigError
from internvideo_fast.train.config import RECIPES, load_config

ROOT = Path(__file__).resolve().parents[1]


def _ivf(*args):
    return subprocess.run([sys.executable, "-m", "internvideo_fast.cli", *args], capture_output=True, text=True, timeout=300)


def test_info():
    result = _ivf("info")
    assert result.returncode == 0, result.stderr
    assert "_C: loaded" in result.stdout
    assert any(line.startswith("tube_mask") and "cpu" in line and "'cpu'" in line for line in result.stdout.splitlines())


def test_masks_cross_checks_backends():
    result = _ivf("masks", "--batch", "3", "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert "every backend draws the same mask for seed 5: True" in result.stdout
    mask_rows = [line.strip() for line in result.stdout.splitlines() if set(line.strip()) <= {"#", "."} and line.strip()]
    assert len(mask_rows) == 14 and sum(row.count("#") for row in mask_rows) == int(0.9 * 196)


def _one_line_error(code, err, *expected):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert all(text in lines[0] for text in expected), lines[0]


def test_ivf_train_answers_mistakes_in_one_line(tmp_path, capsys):
    from internvideo_fast.train.__main__ import main

    config = tmp_path / "run.yaml"
    config.write_text(f"recipe: finetune\ndata: {{train_list: {tmp_path / 'list.txt'}}}\n"
                      f"train: {{output_dir: {tmp_path / 'run'}}}\n")
    _one_line_error(main(["--config", str(config), "pretrianed=x.pth"]), capsys.readouterr().err,
                    "ivf-train: error:", "pretrianed", "did you mean pretrained?")
    _one_line_error(main(["--config", str(tmp_path / "missing.yaml")]), capsys.readouterr().err,
                    "missing.yaml does not exist")
    _one_line_error(main(["--config", str(config), "--resume", str(tmp_path / "gone.pth"), "--device", "cpu"]),
                    capsys.readouterr().err, "train.resume:", "gone.pth does not exist")
    _one_line_error(main(["--config", str(config), "data.batch_size=0"]), capsys.readouterr().err,
                    "data.batch_size must be >= 1, got 0")
    with pytest.raises(ConfigError):  # --debug: the traceback instead
        main(["--config", str(config), "train.epochss=2", "--debug"])


def test_ivf_train_prints_the_resolved_config_and_lists_every_recipe(tmp_path, capsys):
    from internvideo_fast.train.__main__ import main

    assert main(["--config", str(ROOT / "configs" / "demo_pretrain.yaml"), "--print-config", "train.epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config(ROOT / "configs" / "demo_pretrain.yaml", ["train.epochs=3"])
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert all(recipe in help_text for recipe in RECIPES) and "--overwrite" in help_text


def test_the_console_entry_points_exit_2_with_one_stderr_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "internvideo_fast.train", "--config", str(tmp_path / "no.yaml")],
                            capture_output=True, text=True, timeout=300)
    _one_line_error(result.returncode, result.stderr, "ivf-train: error: config file", "no.yaml does not exist")


def test_ivf_visualize_and_prepare_and_ivf_answer_mistakes_in_one_line(tmp_path, capsys):
    from internvideo_fast.cli import main as ivf
    from internvideo_fast.data.prepare import main as prepare
    from internvideo_fast.train.visualize import main as visualize

    _one_line_error(visualize(["--checkpoint", str(tmp_path / "none.pth")]), capsys.readouterr().err,
                    "ivf-visualize-mae: error:", "none.pth does not exist")
    _one_line_error(prepare([str(tmp_path / "no_list.txt"), "--out", str(tmp_path / "out"), "-q"]),
                    capsys.readouterr().err, "ivf-prepare: error:", "no_list.txt")
    _one_line_error(ivf(["masks", "--batch", "0"]), capsys.readouterr().err, "ivf: error: --batch must be at least 1")
