"""Builds internvideo_fast and its C++/CUDA extension `_C` by driving CMake (CMakeLists.txt lists the
sources). Environment: IVF_CUDA=0 builds the CPU ops only; TORCH_CUDA_ARCH_LIST picks the CUDA
architectures (default "8.0;9.0a"); MAX_JOBS caps parallel compile jobs.

`_C` links against the exact torch present at build time, so:
- the package requires that torch (`torch==X.Y.Z`, the installed torch's version without its local label);
- `internvideo_fast/_build_info.json` (written by CMake, shipped beside `_C`) records the torch, CUDA,
  architectures and Python it was built for; `internvideo_fast._extension` checks it before loading `_C`;
- the CMake build folder is build/cmake-py<python>-torch<version>, kept between builds, so
  `pip install -e . --no-build-isolation` is incremental and a torch upgrade starts a fresh folder.
The shipped configs (top-level configs/*.yaml) go into the package as internvideo_fast/configs/."""

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUILD_INFO = "_build_info.json"
# Everything but torch; torch is pinned to the build's version below.
RUNTIME_REQUIREMENTS = ["triton>=3.6", "numpy", "pyyaml", "pillow", "regex"]


def _torch_version() -> str | None:
    """The installed torch's version, read from its metadata (importing torch costs seconds per call)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def _public_version(version: str) -> str:
    return version.split("+", 1)[0]


def _install_requires() -> list[str]:
    version = _torch_version()
    # Without torch nothing can be compiled; only metadata (an sdist) is made then, and the wheel built
    # from it pins the torch of its own build.
    torch_requirement = f"torch=={_public_version(version)}" if version else "torch>=2.11"
    return [torch_requirement, *RUNTIME_REQUIREMENTS]


def _cmake_executable() -> str:
    try:  # PyPI's cmake (>= 3.28 handles CUDA's C++ dialects; Debian's 3.25 does not)
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        found = shutil.which("cmake")
        if found is None:
            raise RuntimeError("CMake is required to build internvideo_fast: pip install 'cmake>=3.28' ninja")
        return found


def cmake_build_dir() -> Path:
    """build/cmake-py<major><minor>-torch<version>: one folder per Python and torch linked against."""
    torch_version = re.sub(r"[^\w.+-]", "_", _torch_version() or "none")
    return ROOT / "build" / f"cmake-py{sys.version_info.major}{sys.version_info.minor}-torch{torch_version}"


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        build_dir = cmake_build_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        cmake = _cmake_executable()
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-GNinja",
            f"-DIVF_CUDA={'OFF' if os.environ.get('IVF_CUDA', '1') in ('0', 'OFF', 'off') else 'ON'}",
        ]
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        subprocess.run([cmake, str(ROOT), *args], cwd=build_dir, check=True, env=env)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_dir, check=True, env=env)
        # Written only once the build succeeded, so a recorded version always describes the _C beside it.
        info = json.loads((build_dir / BUILD_INFO).read_text())
        pinned = _torch_version()
        if pinned is None or _public_version(info["torch"]) != _public_version(pinned):
            raise RuntimeError(f"CMake built against torch {info['torch']}, but the installed torch's "
                               f"metadata says {pinned}: {sys.executable} sees two torch installations")
        shutil.copyfile(build_dir / BUILD_INFO, out_dir / BUILD_INFO)

    def copy_extensions_to_source(self) -> None:
        """`--inplace` and editable installs copy `_C` into the source tree; its build record goes with it."""
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
            shutil.copyfile(Path(regular_file).parent / BUILD_INFO, Path(inplace_file).parent / BUILD_INFO)


class BuildPyWithConfigs(build_py):
    """Ships configs/*.yaml (the repository's layout) as internvideo_fast/configs/ in the package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # a source checkout reads configs/ where it is
            return
        target = Path(self.build_lib) / "internvideo_fast" / "configs"
        target.mkdir(parents=True, exist_ok=True)
        for config in sorted((ROOT / "configs").glob("*.yaml")):
            shutil.copyfile(config, target / config.name)


setup(
    install_requires=_install_requires(),
    ext_modules=[CMakeExtension("internvideo_fast._C")],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPyWithConfigs},
)
