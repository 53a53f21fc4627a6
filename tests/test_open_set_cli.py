"""The downstream recipes through the command lines: ivf-train (recipe dispatch), ivf-eval --task and
ivf demo --task."""

import json

import yaml

from internvideo_fast.train.tasks.open_set import make_demo_data


def test_open_set_through_ivf_train_eval_and_demo(tmp_path, capsys):
    from internvideo_fast import cli
    from internvideo_fast.eval.__main__ import main as eval_main
    from internvideo_fast.train.__main__ import main as train_main

    features, train_list, val_list = make_demo_data(tmp_path, known=3, unknown=1, channels=8,
                                                    train_per_class=6, val_per_class=3, noise=0.5)
    config = tmp_path / "open_set.yaml"
    config.write_text(yaml.safe_dump({
        "recipe": "open_set", "data": {"features": str(features), "train_list": str(train_list),
                                       "val_list": str(val_list), "batch_size": 6},
        "train": {"epochs": 5, "output_dir": str(tmp_path / "run")}}))
    assert train_main(["--config", str(config), "--device", "cpu", "optim.base_lr=0.01"]) == 0
    assert "open_set validation: AUROC" in capsys.readouterr().out
    assert eval_main(["--checkpoint", str(tmp_path / "run" / "checkpoint.pth"), "--task", "open_set",
                      "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["known"] == 9 and result["unknown"] == 3
    # the run-folder rules of every recipe: no silent overwrite, no resume, the config beside the checkpoint
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert train_main(["--config", str(config), "--device", "cpu"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert train_main(["--config", str(config), "--device", "cpu", "--resume", "auto"]) == 2
    assert "does not resume" in capsys.readouterr().err
    assert train_main(["--config", str(config), "--device", "cpu", "--overwrite"]) == 0
    capsys.readouterr()
    assert cli.main(["demo", "--task", "open_set", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    assert "open-set demo: AUROC" in capsys.readouterr().out
