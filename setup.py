"""Builds internvideo_fast and its C++/CUDA extension `_C` by driving CMake (CMakeLists.txt lists the
sources). Environment: IVF_CUDA=0 builds the CPU ops only; TORCH_CUDA_ARCH_LIST picks the CUDA
architectures (default "8.0;9.0a"); MAX_JOBS caps parallel compile jobs. The CMake build folder is
build/cmake-<python>, kept between builds, so `pip install -e . --no-build-isolation` is incremental."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _cmake_executable() -> str:
    try:  # PyPI's cmake (>= 3.28 handles CUDA's C++ dialects; Debian's 3.25 does not)
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        found = shutil.which("cmake")
        if found is None:
            raise RuntimeError("CMake is required to build internvideo_fast: pip install 'cmake>=3.28' ninja")
        return found


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        build_dir = ROOT / "build" / f"cmake-py{sys.version_info.major}{sys.version_info.minor}"
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


setup(ext_modules=[CMakeExtension("internvideo_fast._C")], cmdclass={"build_ext": CMakeBuild})
