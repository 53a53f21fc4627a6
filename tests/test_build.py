"""The extension build: one source list, sm_90a device code for every CUDA file, a CPU-only switch, and
a package that still imports (with one warning) when _C is missing, and a `_C` that is never loaded into a
torch it was not built for."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import triton

import internvideo_fast
from internvideo_fast import _extension

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "kernels").glob("*.cu"))
CPP_SOURCES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").glob("*.cpp"))
TOOLKIT = shutil.which("nvcc") is not None and torch.version.cuda is not None


def test_cmakelists_is_the_one_complete_source_list():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for source in CPP_SOURCES + CUDA_SOURCES:
        assert re.search(rf"^\s+{re.escape(source)}\s*$", cmake, re.M), f"{source} is not listed in CMakeLists.txt"
    assert ".cpp" not in (ROOT / "setup.py").read_text() and ".cu" not in (ROOT / "setup.py").read_text()


def test_extension_loads():
    assert internvideo_fast.HAS_C, _extension.LOAD_ERROR
    import internvideo_fast._C as compiled

    assert hasattr(torch.ops.internvideo_fast, "tube_mask")
    assert compiled.with_cuda == int(TOOLKIT and os.environ.get("IVF_CUDA", "1") != "0")


def test_cutlass_kernels_built_where_they_can_be():
    """The CUTLASS sm_90a kernels are in every CUDA build with an sm_90a target and CUTLASS's headers
    (requirements/build.txt installs them), and their CUDA implementation is registered then only."""
    import internvideo_fast._C as compiled

    try:
        import cutlass_library  # noqa: F401
        headers = True
    except ImportError:
        headers = bool(os.environ.get("IVF_CUTLASS_DIR"))
    expected = bool(compiled.with_cuda) and "90a" in compiled.cuda_archs and headers
    assert compiled.with_cutlass_sm90 == int(expected)
    assert _extension.has_kernel("mlp_gemm_bias_act", "CPU")
    assert _extension.has_kernel("mlp_gemm_bias_act", "CUDA") == bool(compiled.with_cutlass_sm90)


@pytest.mark.skipif(not TOOLKIT, reason="no CUDA toolkit or a CPU build of torch")
def test_every_cuda_file_has_sm90a_device_code():
    """cuobjdump lists the sm_90a cubin, and in it an entry function from every kernels/*.cu (kernels live in
    anonymous namespaces, whose mangled names carry the file's name)."""
    import internvideo_fast._C as compiled

    cuobjdump = shutil.which("cuobjdump") or str(Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump")
    library = compiled.__file__
    elves = subprocess.run([cuobjdump, "--list-elf", library], capture_output=True, text=True, check=True).stdout
    assert "sm_90a" in elves, elves
    symbols = subprocess.run(
        [cuobjdump, "-arch", "sm_90a", "-symbols", library], capture_output=True, text=True, check=True
    ).stdout
    entries = [line for line in symbols.splitlines() if "STO_ENTRY" in line]
    for source in CUDA_SOURCES:
        stem = Path(source).stem
        assert any(f"_{len(stem) + 3}{stem}_cu_" in line or f"{stem}_cu_" in line for line in entries), (
            f"no sm_90a kernel from {source} in {library}"
        )


# SASS instructions a CUTLASS MLP kernel may have. Its epilogue is unrolled over 8 subtiles per tile, so
# the activation's code appears 8 times; at 13.6k instructions (a branch on the activation per element and
# IEEE division) every tile re-fetches its epilogue past the instruction cache and the kernel runs 3x
# slower on an H100 than at 8.8k (one branch per fragment, __fdividef; bench/results/NOTES.md). gelu from the
# fitted erfc form, not erff, keeps them near 7.0k.
CUTLASS_MAX_SASS_INSTRUCTIONS = 7_500


@pytest.mark.skipif(not TOOLKIT, reason="no CUDA toolkit or a CPU build of torch")
def test_cutlass_kernels_fit_the_instruction_cache():
    import internvideo_fast._C as compiled

    if not compiled.with_cutlass_sm90:
        pytest.skip("built without the CUTLASS kernels")
    bundled = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    cuobjdump = shutil.which("cuobjdump") or str(bundled)
    sass = subprocess.run([cuobjdump, "-arch", "sm_90a", "-sass", compiled.__file__], capture_output=True,
                          text=True, check=True).stdout
    sizes, kernel = {}, None
    for line in sass.splitlines():
        if match := re.match(r"\s*Function : (\S+)", line):
            kernel = match.group(1) if "GemmUniversal" in match.group(1) else None
            if kernel:
                sizes[kernel] = 0
        elif kernel and re.match(r"\s*/\*[0-9a-f]{4,}\*/\s", line):
            sizes[kernel] += 1
    assert len(sizes) == 4, list(sizes)  # 2 schedules x 2 dtypes
    assert max(sizes.values()) <= CUTLASS_MAX_SASS_INSTRUCTIONS, sorted(sizes.values())


def test_cpu_only_switch(tmp_path):
    """IVF_CUDA=OFF configures a build without any CUDA source (configure only: a full build is what
    `make test` already did)."""
    import cmake

    result = subprocess.run(
        [
            str(Path(cmake.CMAKE_BIN_DIR) / "cmake"), str(ROOT), "-GNinja", "-DIVF_CUDA=OFF",
            f"-DPython_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release",
        ],
        cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "building the CPU ops only" in result.stdout
    ninja = (tmp_path / "build.ninja").read_text()
    assert "tube_mask_cpu.cpp" in ninja
    assert not any(source in ninja for source in CUDA_SOURCES)


# Imports the package in a fresh interpreter after `prelude` and prints "ok" once `body` passes.
def _run_import(prelude: str, body: str, **env: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(prelude) + textwrap.dedent(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import internvideo_fast
        ours = [str(w.message) for w in caught if "internvideo_fast._C" in str(w.message)]
        """
    ) + textwrap.dedent(body) + "\nprint('ok')\n"
    environment = {key: value for key, value in os.environ.items() if key != "IVF_ALLOW_REFERENCE"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env=dict(environment, **env))


# Makes the import of internvideo_fast._C raise `error` (a missing or an unloadable extension).
BLOCK_C = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "internvideo_fast._C":
            raise {error}
sys.meta_path.insert(0, Block())
"""
# Pretends that another torch release is installed than the one _C was built against.
OTHER_TORCH = """
import torch
from torch.torch_version import TorchVersion
torch.__version__ = TorchVersion("2.0.0")
"""
CHECKS_REFERENCE_RUNS = """
from internvideo_fast.ops import tube_mask, tube_mask_ref
import torch
out = tube_mask(2, 2, 4, 4, 0.5, seed=3)
assert not internvideo_fast.HAS_C
assert torch.equal(out.mask, tube_mask_ref(torch.tensor(3), 2, 2, 4, 4, 8).mask)
assert len(ours) == 1, ours
print(ours[0])
"""


def test_package_imports_without_extension_and_warns_once():
    """A source checkout before its build: the package imports, warns once and runs the references."""
    error = 'ModuleNotFoundError("No module named \'internvideo_fast._C\'", name=name)'
    result = _run_import(BLOCK_C.format(error=error), CHECKS_REFERENCE_RUNS)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
    assert "is not built" in result.stdout and "--no-build-isolation" in result.stdout, result.stdout


def test_extension_built_for_another_torch_is_an_error_naming_both_versions():
    built = _extension.BUILD_INFO
    assert built is not None, "the build wrote no internvideo_fast/_build_info.json beside _C"
    result = _run_import(OTHER_TORCH, "")
    assert result.returncode != 0 and "ok" not in result.stdout
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: internvideo_fast._C was built against torch"), last_line
    for expected in (built["torch"], "torch 2.0.0 is installed", "pip install -e . --no-build-isolation",
                     f"torch=={_extension.public_version(built['torch'])}", "IVF_ALLOW_REFERENCE=1"):
        assert expected in last_line, (expected, last_line)


def test_allow_reference_runs_the_references_against_another_torch():
    assert _extension.BUILD_INFO is not None
    result = _run_import(OTHER_TORCH, CHECKS_REFERENCE_RUNS, IVF_ALLOW_REFERENCE="1")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
    assert f"built against torch {_extension.BUILD_INFO['torch']}" in result.stdout
    assert "torch 2.0.0 is installed" in result.stdout


def test_extension_that_does_not_load_is_an_error():
    """A `_C` that is there but does not load (an undefined symbol: a torch of another build) is an error
    with the loader's message, unless IVF_ALLOW_REFERENCE=1."""
    block = BLOCK_C.format(error='ImportError("_C.so: undefined symbol: _ZN3c104cuda9SetDeviceEa")')
    result = _run_import(block, "")
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0, result.stdout
    assert last_line.startswith("ImportError: internvideo_fast._C could not be loaded"), last_line
    assert "undefined symbol" in last_line, last_line
    assert f"torch {torch.__version__} is installed" in last_line, last_line
    assert "IVF_ALLOW_REFERENCE=1" in last_line
    allowed = _run_import(block, CHECKS_REFERENCE_RUNS, IVF_ALLOW_REFERENCE="1")
    assert allowed.returncode == 0 and "ok" in allowed.stdout, allowed.stderr[-3000:]


@pytest.mark.parametrize(
    ("built", "running", "mismatch"),
    [("2.14.1+cu130", "2.14.1+cu130", False), ("2.14.1+cu130", "2.14.1", False), ("2.14.1", "2.14.0", True),
     ("2.13.0+cu128", "2.14.1+cu130", True), ("2.15.0.dev20261201", "2.15.0.dev20261202", True)],
)
def test_torch_mismatch_compares_releases(built, running, mismatch):
    message = _extension.torch_mismatch({"torch": built}, running)
    assert (message is not None) == mismatch
    if mismatch:
        assert built in message and running in message
    assert _extension.torch_mismatch(None, running) is None  # nothing built: nothing to compare


def test_build_record_matches_the_extension():
    """_build_info.json describes the _C beside it: this torch and Python, and _C's own CUDA architectures."""
    import internvideo_fast._C as compiled

    built = _extension.BUILD_INFO
    assert built is not None
    assert _extension.public_version(built["torch"]) == _extension.public_version(torch.__version__)
    assert built["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert " ".join(built["cuda_archs"]) == compiled.cuda_archs
    assert built["cutlass_sm90"] == bool(compiled.with_cutlass_sm90)
    assert (built["cuda"] is not None) == bool(compiled.with_cuda)


def test_extension_has_no_runpath_into_the_build_environment():
    """torch's libraries are found because `import torch` loaded them, not through a RUNPATH/RPATH that
    names the environment _C was built in (which a wheel installed elsewhere does not have)."""
    import internvideo_fast._C as compiled

    readelf = shutil.which("readelf")
    assert readelf is not None, "readelf (binutils) is needed to read _C's dynamic section"
    dynamic = subprocess.run([readelf, "-d", compiled.__file__], capture_output=True, text=True,
                             check=True).stdout
    assert "libc10.so" in dynamic  # the section was read
    paths = [line for line in dynamic.splitlines() if "(RPATH)" in line or "(RUNPATH)" in line]
    assert not paths, paths


def _run_setup_py(monkeypatch) -> tuple[dict, dict]:
    """setup.py's globals and the arguments it passes to setuptools.setup, without building anything."""
    import runpy

    import setuptools

    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.setattr(sys, "argv", ["setup.py", "--version"])
    return runpy.run_path(str(ROOT / "setup.py")), captured


def test_setup_pins_the_torch_it_builds_against(monkeypatch):
    _, arguments = _run_setup_py(monkeypatch)
    requirements = arguments["install_requires"]
    assert f"torch=={_extension.public_version(torch.__version__)}" in requirements, requirements
    assert sum(r.startswith("torch") for r in requirements) == 1, requirements


def test_cmake_build_folder_is_keyed_by_python_and_torch(monkeypatch):
    from importlib import metadata

    setup_globals, _ = _run_setup_py(monkeypatch)
    folder = setup_globals["cmake_build_dir"]()
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert folder == ROOT / "build" / f"cmake-{python}-torch{metadata.version('torch')}"
