"""`pip wheel .` (the CPU-only build) installed into a fresh environment that holds the same torch: the wheel
pins that torch, records it, ships the configs, imports from outside the checkout and runs an op on `_C`.

The build runs on a copy of the sources, so the checkout's own build folder and `_C` stay as they are.
Select these tests with `-m wheel` (about a minute on 2 cores, most of it compiling the CPU ops)."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from internvideo_fast._extension import public_version

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
# What a build reads: the files of the sdist (MANIFEST.in) and the package.
SOURCES = ["setup.py", "pyproject.toml", "CMakeLists.txt", "MANIFEST.in", "README.md", "csrc", "kernels",
           "configs", "requirements", "internvideo_fast"]
BUILD_OUTPUTS = shutil.ignore_patterns("__pycache__", "*.so", "_build_info.json")
CONFIGS = sorted(path.name for path in (ROOT / "configs").glob("*.yaml"))
TORCH_PIN = f"torch=={public_version(torch.__version__)}"


def _environment(**extra: str) -> dict:
    # Nothing may lead the fresh environment back to the checkout or to a switch of the caller's.
    dropped = ("PYTHONPATH", "IVF_ALLOW_REFERENCE", "IVF_CUDA", "PIP_REQUIRE_VIRTUALENV")
    environment = {key: value for key, value in os.environ.items() if key not in dropped}
    return dict(environment, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", **extra)


def _run(command: list, cwd: Path, timeout: int = 600, **extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=_environment(**extra))
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """A copy of the sources and the wheel built from it in dist/, made once per test run: pytest-xdist's
    workers share the run's temporary folder and take turns through a lock."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder; each worker's own is below it
    copy = shared / "wheel-source"
    with FileLock(shared / "wheel-source.lock"):
        if not list((copy / "dist").glob("internvideo_fast-*.whl")):
            shutil.rmtree(copy, ignore_errors=True)
            for entry in SOURCES:
                if (ROOT / entry).is_dir():
                    shutil.copytree(ROOT / entry, copy / entry, ignore=BUILD_OUTPUTS)
                else:
                    copy.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / entry, copy / entry)
            _run([sys.executable, "-m", "pip", "wheel", ".", "--no-build-isolation", "--no-deps", "--no-index",
                  "-w", "dist"], cwd=copy, IVF_CUDA="0", MAX_JOBS="2")
    return copy


@pytest.fixture(scope="module")
def wheel(source_copy) -> Path:
    (built,) = (source_copy / "dist").glob("internvideo_fast-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_python(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """(python, site-packages) of a new venv holding only the wheel, plus a .pth line to the site-packages
    of this torch (torch, triton, numpy...; .pth files there are not run, so no editable install leaks in)."""
    root = tmp_path_factory.mktemp("fresh")
    _run([sys.executable, "-m", "venv", "--without-pip", root / "env"], cwd=root)
    python = root / "env" / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", site, wheel],
         cwd=root)
    (site / "torch_environment.pth").write_text(f"{Path(torch.__file__).resolve().parents[1]}\n")
    return python, site


def test_wheel_pins_its_torch_and_ships_configs_and_build_record(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode().splitlines()
        requirements = [line.split(":", 1)[1].strip() for line in metadata
                        if line.startswith("Requires-Dist")]
        build_info = json.loads(archive.read("internvideo_fast/_build_info.json"))
    torch_requirements = [r.replace(" ", "") for r in requirements if re.match(r"torch\b(?![-_.\w])", r)]
    assert torch_requirements == [TORCH_PIN], requirements
    assert build_info["torch"] == torch.__version__ and build_info["cuda_archs"] == [], build_info
    assert build_info["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert [n for n in names if n.startswith("internvideo_fast/_C.") and n.endswith(".so")], names
    assert sorted(n.removeprefix("internvideo_fast/configs/") for n in names
                  if n.startswith("internvideo_fast/configs/")) == CONFIGS


def test_installed_wheel_imports_outside_the_checkout_and_runs_on_C(fresh_python, tmp_path):
    python, site = fresh_python
    script = textwrap.dedent(
        f"""
        import importlib.metadata, sys, warnings
        from pathlib import Path
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the references would warn
        import torch
        import internvideo_fast
        from internvideo_fast import _extension
        from internvideo_fast.builtin_configs import find_config
        from internvideo_fast.ops import tube_mask, tube_mask_ref, use_backend
        from internvideo_fast.train.config import load_config

        site = Path({str(site)!r})
        assert Path(internvideo_fast.__file__).is_relative_to(site), internvideo_fast.__file__
        assert internvideo_fast.HAS_C, _extension.LOAD_ERROR
        assert Path(_extension._C.__file__).is_relative_to(site), _extension._C.__file__
        assert _extension.BUILD_INFO["torch"] == torch.__version__, _extension.BUILD_INFO
        assert {TORCH_PIN!r} in [r.replace(" ", "") for r in importlib.metadata.requires("internvideo-fast")]
        with use_backend("cpu", "tube_mask"):
            out = tube_mask(3, 2, 4, 5, 0.6, seed=7)  # 12 of 20 positions masked
        reference = tube_mask_ref(torch.tensor(7), 3, 2, 4, 5, 12)
        assert torch.equal(out.mask, reference.mask) and torch.equal(out.ids_keep, reference.ids_keep)
        assert find_config("demo_pretrain") == site / "internvideo_fast" / "configs" / "demo_pretrain.yaml"
        assert load_config("demo_pretrain")["recipe"] == "mae_pretrain"
        print(_extension._C.__file__)
        """
    )
    result = _run([python, "-c", script], cwd=tmp_path)
    compiled = result.stdout.strip().splitlines()[-1]
    dynamic = _run(["readelf", "-d", compiled], cwd=tmp_path).stdout
    assert "libtorch" in dynamic and "RPATH" not in dynamic and "RUNPATH" not in dynamic, dynamic
    listed = _run([python, "-m", "internvideo_fast.cli", "configs"], cwd=tmp_path).stdout
    assert [line.split()[0] for line in listed.splitlines()] == [Path(name).stem for name in CONFIGS]


def test_installed_wheel_against_another_torch_names_the_reinstall(fresh_python, tmp_path):
    python, _ = fresh_python
    script = ("import torch; from torch.torch_version import TorchVersion; "
              "torch.__version__ = TorchVersion('2.0.0'); import internvideo_fast")
    result = subprocess.run([str(python), "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=_environment())
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last_line.startswith("ImportError:"), result.stderr[-3000:]
    for expected in (f"built against torch {torch.__version__}", "torch 2.0.0 is installed",
                     "pip install --no-build-isolation --no-deps --force-reinstall", TORCH_PIN):
        assert expected in last_line, (expected, last_line)


def test_sdist_holds_what_the_wheel_is_built_from(source_copy, tmp_path):
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", tmp_path], cwd=source_copy)
    (sdist,) = tmp_path.glob("internvideo_fast-*.tar.gz")
    import tarfile

    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    expected = {"CMakeLists.txt", "setup.py", "pyproject.toml", "csrc/ops.cpp", "csrc/philox.h",
                *(f"configs/{name}" for name in CONFIGS),
                *(p.relative_to(ROOT).as_posix() for p in (ROOT / "kernels").iterdir() if p.is_file())}
    assert not expected - names, sorted(expected - names)
