"""The device kit (bench/device_kit.py) on a small synthetic payload: the DALI folder packed for one Python,
split into parts with checksums, a missing or corrupted part named, joined and installed into a temporary
folder (pip --target and plain unzip), importable from the PYTHONPATH it prints."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "device_kit.py"
_spec = importlib.util.spec_from_file_location("device_kit", _PATH)
device_kit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(device_kit)


def _wheel(folder: Path, name: str = "tinykit", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel: one module and its dist-info."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


@pytest.fixture()
def fake_dali(tmp_path, monkeypatch):
    """A DALI-like installation: the package folder with several Pythons' extension modules and a dist-info."""
    site = tmp_path / "site-packages"
    package = site / "nvidia" / "dali"
    (package / "plugin").mkdir(parents=True)
    (package / "__init__.py").write_text("__version__ = 'fake'\nfrom nvidia.dali.plugin import pytorch\n")
    (package / "plugin" / "__init__.py").write_text("")
    (package / "plugin" / "pytorch.py").write_text("READY = True\n")
    (package / "libdali.so").write_bytes(b"\x7fELF" + bytes(3000))
    for tag in ("310", "311", "312", "314t"):
        (package / f"backend_impl.cpython-{tag}-x86_64-linux-gnu.so").write_bytes(tag.encode() * 100)
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.pyc").write_bytes(b"0")
    dist_info = site / "nvidia_dali_cuda130-2.4.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Name: nvidia-dali-cuda130\nVersion: 2.4.0\n")
    monkeypatch.setattr(device_kit, "dali_package_dir", lambda: package)
    return package


def test_keeps_only_the_target_pythons_extensions():
    keeps = device_kit._keeps
    assert keeps("nvidia/dali/backend_impl.cpython-312-x86_64-linux-gnu.so", "312")
    assert not keeps("nvidia/dali/backend_impl.cpython-311-x86_64-linux-gnu.so", "312")
    assert not keeps("nvidia/dali/python_function_plugin.cpython-314t-x86_64-linux-gnu.so", "314")
    assert keeps("nvidia/dali/libdali_operators.so", "312") and keeps("nvidia/dali/ops/__init__.py", "312")


def test_pack_dali_drops_other_pythons(fake_dali, tmp_path):
    out = tmp_path / "dali.tar.xz"
    info = device_kit.pack_dali(out, "312", xz_preset=1)
    with tarfile.open(out) as archive:
        names = set(archive.getnames())
    assert "nvidia/dali/backend_impl.cpython-312-x86_64-linux-gnu.so" in names
    assert not any("cpython-31" in n and "cpython-312" not in n for n in names), names
    assert not any("__pycache__" in n for n in names)
    assert {"nvidia/__init__.py", "nvidia/dali/libdali.so", "nvidia_dali_cuda130-2.4.0.dist-info"} <= names
    assert info["version"] == "2.4.0" and info["dropped_files"] >= 3 and "nvimgcodec" in info["dropped_packages"]


def test_split_and_verify(tmp_path):
    payload = tmp_path / "kit.tar"
    data = bytes(range(256)) * 41  # 10496 bytes: two full parts of 4096 and a partial one
    payload.write_bytes(data)
    parts = device_kit.split_file(payload, tmp_path / "parts", 4096)
    assert [p.stat().st_size for p in parts] == [4096, 4096, 2304]
    assert b"".join(p.read_bytes() for p in parts) == data
    exact = tmp_path / "exact.tar"
    exact.write_bytes(data[:8192])
    assert [p.stat().st_size for p in device_kit.split_file(exact, tmp_path / "exact", 4096)] == [4096, 4096]
    assert len(device_kit.verify_parts(tmp_path / "parts")) == 3
    with pytest.raises(device_kit.KitError, match="positive"):
        device_kit.split_file(payload, tmp_path / "none", 0)


def _build(tmp_path: Path, part_bytes: int = 8192) -> Path:
    wheel = _wheel(tmp_path)
    clip = tmp_path / "clip0.mp4"
    clip.write_bytes(bytes(5000))
    out = tmp_path / "kit"
    device_kit.build_kit(out, part_mib=part_bytes / 2**20, dali=True, wheels=False, clips=False,
                         extra_files={f"wheels/{wheel.name}": wheel, "clips/h264_320p/clip0.mp4": clip})
    return out / "parts"


@pytest.mark.parametrize("use_pip", [True, False])
def test_build_join_install(fake_dali, tmp_path, use_pip, capsys):
    parts_dir = _build(tmp_path)
    manifest = json.loads((parts_dir / "manifest.json").read_text())
    parts = sorted(parts_dir.glob("kit.tar.part*"))
    assert len(parts) == len(manifest["parts"]) >= 2
    assert all(p.stat().st_size <= 8192 for p in parts)
    assert (parts_dir / "device_kit.py").is_file()  # the joiner travels with the parts
    target = tmp_path / "target"
    argv = ["join", "--parts", str(parts_dir), "--target", str(target)] + ([] if use_pip else ["--no-pip"])
    assert device_kit.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"PYTHONPATH={target / 'site'}"
    assert device_kit.main(["verify", "--parts", str(parts_dir)]) == 0
    result = json.loads(printed[-2])
    assert result["wheels"] == {"tinykit-1.0-py3-none-any.whl": "pip" if use_pip else "unzip"}
    assert (target / "clips" / "h264_320p" / "clip0.mp4").stat().st_size == 5000
    assert "PYTHONPATH" in (target / "env.sh").read_text()
    assert not (target / "kit.tar").exists()
    site = target / "site"
    assert sorted(p.name for p in (site / "nvidia" / "dali").glob("backend_impl*")) == [
        "backend_impl.cpython-312-x86_64-linux-gnu.so"]
    code = "import nvidia.dali, tinykit; print(nvidia.dali.__version__, tinykit.VALUE)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert done.stdout.split() == ["fake", "42"], done.stderr


def test_corrupted_or_missing_part_fails_by_name(fake_dali, tmp_path, capsys):
    parts_dir = _build(tmp_path)
    second = parts_dir / "kit.tar.part001"
    data = bytearray(second.read_bytes())
    data[100] ^= 0xFF
    second.write_bytes(bytes(data))
    (parts_dir / "kit.tar.part002").unlink()
    assert device_kit.main(["join", "--parts", str(parts_dir), "--target", str(tmp_path / "t")]) == 1
    error = capsys.readouterr().err
    assert "kit.tar.part001: SHA-256" in error and "corrupted" in error
    assert "kit.tar.part002: missing" in error
    assert "kit.tar.part000" not in error
    assert not (tmp_path / "t" / "site" / "nvidia").exists()
    assert device_kit.main(["verify", "--parts", str(parts_dir)]) == 1
    assert "kit.tar.part002: missing" in capsys.readouterr().err


def test_checksum_list_errors(tmp_path):
    with pytest.raises(device_kit.KitError, match="SHA256SUMS: checksum list missing"):
        device_kit.verify_parts(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("nonsense\n")
    with pytest.raises(device_kit.KitError, match=r"SHA256SUMS:1: not a"):
        device_kit.verify_parts(tmp_path)


def test_parts_of_different_builds_fail_the_whole_check(fake_dali, tmp_path):
    parts_dir = _build(tmp_path)
    manifest = json.loads((parts_dir / "manifest.json").read_text())
    manifest["sha256"] = "0" * 64
    (parts_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(device_kit.KitError, match="different builds"):
        device_kit.install_kit(parts_dir, tmp_path / "t")


def test_gpu_dali_dry_run(tmp_path):
    """bench/gpu_dali.py --dry-run on CPU: installs a kit from its parts, collects the GPU tests, runs both
    benchmarks in their dry modes and writes one JSON with every stage."""
    spec = importlib.util.spec_from_file_location("gpu_dali", _PATH.parent / "gpu_dali.py")
    gpu_dali = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_dali)
    wheel = _wheel(tmp_path)
    out = tmp_path / "kit"
    device_kit.build_kit(out, part_mib=0.01, dali=False, wheels=False, clips=False,
                         extra_files={f"wheels/{wheel.name}": wheel})
    target, results = tmp_path / "installed", tmp_path / "out"
    code = gpu_dali.main(["--dry-run", "--parts", str(out / "parts"), "--kit-target", str(target),
                          "--out", str(results)])
    result = json.loads((results / "gpu-dali.json").read_text())
    assert code == 0, {name: stage["tail"][-800:] for name, stage in result["stages"].items()}
    assert [name for name in result["stages"]] == ["install", "tests", "loader", "train"]
    assert all(stage["status"] == "ok" for stage in result["stages"].values()), result["stages"]
    assert (target / "site" / "tinykit.py").is_file()
    assert gpu_dali._installed_build(target) == result["kit"]["sha256"]  # a second call skips the install
    assert "test_gpu_nvdec_matches_torch_loader" in result["stages"]["tests"]["tail"]
    assert {row["loader"] for row in result["loader"]["rows"]} >= {"torch+pyav"}
    feeds = {row["feed"]: row for row in result["train"]["rows"]}
    assert feeds["synthetic"]["clips_per_s"] > 0 and feeds["torch"]["of_synthetic"] > 0
    assert feeds["torch-uint8"]["of_synthetic"] > 0


def test_loader_bench_on_kit_style_clips(tmp_path):
    """bench/loader.py --clips-dir: one row per loader and set of <set>/list.txt folders, repeated lists,
    the set's codec from its name, a per-set summary."""
    from internvideo_fast.data import make_sample_dataset

    spec = importlib.util.spec_from_file_location("loader_bench", _PATH.parent / "loader.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sample = make_sample_dataset(tmp_path / "clips" / "vp9_320p", num_classes=2, clips_per_class=1, val_per_class=1,
                                 num_frames=24, size=(48, 32), fps=8, codecs=("vp9",))
    (sample.root / "list.txt").write_text(sample.train_list.read_text())
    out = tmp_path / "loader.json"
    assert bench.main(["--dry-run", "--clips-dir", str(tmp_path / "clips"), "--list-repeats", "3",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["setup"]["sets"] == ["vp9_320p"] and result["setup"]["list_repeats"] == 3
    rows = result["rows"]
    assert {row["set"] for row in rows} == {"vp9_320p"} and {row["codec"] for row in rows} == {"vp9"}
    assert all(row["clips_per_s"] > 0 for row in rows), rows
    assert "torch+pyav" in {row["loader"] for row in rows}
    assert result["summary"]["vp9_320p"]["best_cpu"]["clips_per_s"] > 0
    with pytest.raises(SystemExit, match="nope/list.txt"):
        bench.main(["--dry-run", "--clips-dir", str(tmp_path / "clips"), "--sets", "nope"])
