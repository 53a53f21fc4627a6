"""`ivf demo` end to end at a few steps: sample clips, MAE pretraining, fine-tuning from its checkpoint,
evaluation, the reconstruction PNG, video-text pretraining and CMA (the full-length run is `make demo`)."""

import subprocess
import sys

from PIL import Image


def test_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "internvideo_fast.cli", "demo", "--out", str(out), "--pretrain-steps", "6",
         "--finetune-steps", "6", "--multimodal-steps", "4", "--clips-per-class", "4", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[demo] MAE pretraining: loss" in result.stdout
    assert "validation top-1" in result.stdout and "(chance 25.0%)" in result.stdout
    assert "[demo] video-text pretraining: loss" in result.stdout and "zero-shot top-1" in result.stdout
    assert "[demo] cross-model attention" in result.stdout
    for path in ("pretrain/checkpoint.pth", "finetune/checkpoint.pth", "pretrain/metrics.csv", "finetune/eval.csv"):
        assert (out / path).exists(), path
    image = Image.open(out / "mae_reconstruction.png")
    assert image.size[0] > image.size[1] > 64  # 8 frames across, 3 rows down

    evaluation = subprocess.run(
        [sys.executable, "-m", "internvideo_fast.eval", "--checkpoint", str(out / "finetune" / "checkpoint.pth"),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "top1" in evaluation.stdout
