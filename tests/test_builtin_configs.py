"""Shipped configs found by name: `ivf-train --config demo_pretrain` in a checkout or an installed wheel."""

import subprocess
import sys
from pathlib import Path

import pytest

from internvideo_fast import builtin_configs
from internvideo_fast.builtin_configs import find_config, shipped_configs
from internvideo_fast.errors import UserError
from internvideo_fast.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY_CONFIGS = sorted(path.stem for path in (ROOT / "configs").glob("*.yaml"))


def test_a_checkout_ships_every_config_of_its_configs_folder():
    assert REPOSITORY_CONFIGS and list(shipped_configs()) == REPOSITORY_CONFIGS
    assert all(path == ROOT / "configs" / f"{name}.yaml" for name, path in shipped_configs().items())


@pytest.mark.parametrize("given", ["demo_pretrain", "demo_pretrain.yaml"])
def test_a_shipped_config_is_found_by_name(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: only the shipped one can answer
    assert find_config(given) == ROOT / "configs" / "demo_pretrain.yaml"


def test_a_path_that_exists_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo_pretrain.yaml").write_text("recipe: finetune\n")
    assert find_config("demo_pretrain.yaml") == Path("demo_pretrain.yaml")
    assert load_config("demo_pretrain.yaml")["recipe"] == "finetune"
    assert load_config("demo_pretrain")["recipe"] == "mae_pretrain"  # no such file: the shipped one


def test_load_config_takes_a_shipped_name():
    assert load_config("demo_pretrain") == load_config(ROOT / "configs" / "demo_pretrain.yaml")


@pytest.mark.parametrize("given", ["demo_pretrian", "elsewhere/demo_pretrain.yaml", "nothing_like_it"])
def test_an_unknown_config_is_an_error_listing_the_shipped_names(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        find_config(given)
    message = str(caught.value)
    assert repr(given) in message and "no such file" in message
    assert all(name in message for name in REPOSITORY_CONFIGS), message
    assert ("did you mean 'demo_pretrain'?" in message) == (given != "nothing_like_it"), message


def test_an_installed_package_reads_its_own_copy(tmp_path, monkeypatch):
    """A wheel holds the configs in internvideo_fast/configs/; that copy is used, not a folder beside."""
    package = tmp_path / "site-packages" / "internvideo_fast"
    (package / "configs").mkdir(parents=True)
    (package / "configs" / "only_here.yaml").write_text("recipe: finetune\n")
    (tmp_path / "site-packages" / "configs").mkdir()  # another distribution's folder, not ours
    (tmp_path / "site-packages" / "configs" / "stray.yaml").write_text("recipe: cma\n")
    monkeypatch.setattr(builtin_configs, "PACKAGE_DIR", package)
    assert shipped_configs() == {"only_here": package / "configs" / "only_here.yaml"}
    (package / "configs" / "only_here.yaml").unlink()
    (package / "configs").rmdir()
    assert shipped_configs() == {}  # site-packages is no checkout: its configs/ is not ours


def test_ivf_configs_lists_them():
    result = subprocess.run([sys.executable, "-m", "internvideo_fast.cli", "configs"], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split()[0] for line in result.stdout.splitlines()] == REPOSITORY_CONFIGS
