"""The `ivf` command line."""

import subprocess
import sys


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
