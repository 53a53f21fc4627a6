"""The loader choice (``data.loader: auto | torch | dali``) and the data package's import graph."""

from __future__ import annotations

import ast
import importlib
import logging

import pytest

from internvideo_fast.data import DataConfig, build_loader, choose_loader, make_sample_dataset
from internvideo_fast.data import build as build_module
from internvideo_fast.data.loader import VideoLoader
from internvideo_fast.errors import ConfigError


def _imports(module_name: str) -> set[str]:
    """Every module ``module_name``'s source imports, at any depth of its functions."""
    module = importlib.import_module(module_name)
    with open(module.__file__) as handle:
        tree = ast.parse(handle.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_import_cycle_between_loader_and_dali():
    """loader.py (the contract and the torch loader) imports neither the DALI loader nor the chooser."""
    loader_imports = _imports("internvideo_fast.data.loader")
    assert not {name for name in loader_imports if name.startswith(("internvideo_fast.data.dali",
                                                                    "internvideo_fast.data.build"))}
    assert "internvideo_fast.data.loader" in _imports("internvideo_fast.data.dali")
    assert "internvideo_fast.data.build" not in _imports("internvideo_fast.data.dali")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("choice"), num_classes=2, clips_per_class=1,
                               val_per_class=1, num_frames=8, size=(32, 24), fps=8, seed=1)


def _pretend(monkeypatch, cuda: bool, dali_error: str | None):
    monkeypatch.setattr(build_module.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(build_module, "dali_import_error", lambda: dali_error)
    monkeypatch.setattr(build_module, "_LOGGED", set())


@pytest.mark.parametrize("cuda,dali_error,expected", [
    (False, None, "torch"), (True, "ModuleNotFoundError: No module named 'nvidia'", "torch"), (True, None, "dali")])
def test_auto_choice(monkeypatch, cuda, dali_error, expected):
    _pretend(monkeypatch, cuda, dali_error)
    choice, reason = choose_loader(DataConfig(list_file="x.txt", loader="auto"))
    assert choice == expected
    if dali_error:
        assert "DALI is not installed" in reason and "nvidia-dali-cuda130" in reason
    assert choose_loader(DataConfig(list_file="x.txt", loader="torch"))[0] == "torch"
    # video-text lists take the same choice (the DALI loader carries their captions and tokens)
    assert choose_loader(DataConfig(list_file="x.txt", loader="auto", text=True))[0] == expected


def test_auto_without_dali_logs_one_line_and_builds_torch(monkeypatch, caplog, sample):
    _pretend(monkeypatch, True, "ModuleNotFoundError: No module named 'nvidia'")
    cfg = DataConfig(list_file=str(sample.val_list), train=False, img_size=24, batch_size=1, loader="auto")
    with caplog.at_level(logging.INFO, logger="internvideo_fast.data.build"):
        loaders = [build_loader(cfg) for _ in range(3)]
    assert all(type(loader) is VideoLoader for loader in loaders)
    lines = [r.getMessage() for r in caplog.records if r.name == "internvideo_fast.data.build"]
    assert len(lines) == 1 and lines[0].startswith("loader auto: torch (NVIDIA DALI is not installed"), lines
    batch = next(iter(loaders[0]))
    assert batch["video"].shape == (1, 3, 16, 24, 24)


def test_explicit_dali_without_dali_names_the_key(monkeypatch):
    _pretend(monkeypatch, True, "ImportError: libcuda.so.1: cannot open shared object file")
    with pytest.raises(ConfigError, match=r"^data.loader: 'dali' needs NVIDIA DALI.*libcuda.*hint: pip install"):
        choose_loader(DataConfig(list_file="x.txt", loader="dali"))


def test_auto_picks_dali_when_present(monkeypatch, sample):
    """With a GPU and DALI present, auto builds the DALI loader (its pipeline is built on first iteration)."""
    pytest.importorskip("nvidia.dali")
    from internvideo_fast.data.dali import DaliVideoLoader

    _pretend(monkeypatch, True, None)
    cfg = DataConfig(list_file=str(sample.val_list), train=False, loader="auto", extra={"dali_device": "cpu"})
    assert isinstance(build_loader(cfg), DaliVideoLoader)
