"""Loads the compiled extension `internvideo_fast._C` once, after checking that it fits the running torch.

`_C` links against the exact torch it was compiled with (C++ symbols and ABI change between releases), and
`_build_info.json` beside it records that torch with the CUDA toolkit, architectures and Python of the
build (CMake writes it; see setup.py). Loading goes:

- `_C` not built (a source checkout before `make build`): the package imports, warns once, and every op
  runs on its PyTorch reference.
- `_C` built against another torch release (the recorded version, local label aside, differs from
  `torch.__version__`), or present but not loadable: an ImportError that names both torch versions and the
  rebuild command; `_C` is never loaded into a torch it was not built for.
  With `IVF_ALLOW_REFERENCE=1` that error is one warning instead and every op runs on its reference.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_INFO_FILE = PACKAGE_DIR / "_build_info.json"
ALLOW_REFERENCE_VARIABLE = "IVF_ALLOW_REFERENCE"


def read_build_info(path: Path = BUILD_INFO_FILE) -> dict | None:
    """What `_C` was built against ({"torch", "torch_cuda", "cuda", "cuda_archs", "cutlass_sm90", "python",
    "cxx11_abi"}), or None where nothing was built."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def public_version(version: str) -> str:
    """`2.14.1+cu130` -> `2.14.1`: the release, whose C++ ABI `_C` depends on (the local label names the
    CUDA variant, which the loader itself checks: a CUDA `_C` needs torch's CUDA libraries)."""
    return version.split("+", 1)[0]


def rebuild_command(package_dir: Path = PACKAGE_DIR) -> str:
    """How to rebuild `_C` against the installed torch: in place for a source checkout, else a reinstall
    from the source folder (the torch in the environment is used as is: no build isolation)."""
    checkout = package_dir.parent
    if (checkout / "setup.py").is_file() and (checkout / "CMakeLists.txt").is_file():
        return f"`pip install -e . --no-build-isolation --no-deps` in {checkout} (or `make build`)"
    return "`pip install --no-build-isolation --no-deps --force-reinstall <internvideo-fast source folder>`"


def torch_mismatch(build_info: dict | None, running_torch: str) -> str | None:
    """The error when `_C` was built against another torch release than `running_torch`; None when they
    agree or nothing is recorded."""
    if build_info is None or public_version(build_info["torch"]) == public_version(running_torch):
        return None
    built = build_info["torch"]
    return f"internvideo_fast._C was built against torch {built}, but torch {running_torch} is installed"


def _remedy(build_info: dict | None) -> str:
    torch_pin = f", or install torch=={public_version(build_info['torch'])}" if build_info else ""
    return (f"rebuild it against this torch with {rebuild_command()}{torch_pin}; "
            f"or set {ALLOW_REFERENCE_VARIABLE}=1 to run every op on its (slow) PyTorch reference instead")


def _allow_reference() -> bool:
    return os.environ.get(ALLOW_REFERENCE_VARIABLE, "") not in ("", "0")


def _load(build_info: dict | None) -> tuple[ModuleType | None, str | None]:
    """(`_C` or None, why it is not loaded)."""
    problem = torch_mismatch(build_info, torch.__version__)
    if problem is None:
        try:
            # Loading registers torch.ops.internvideo_fast.*.
            return importlib.import_module("internvideo_fast._C"), None
        except ModuleNotFoundError as error:
            if error.name != "internvideo_fast._C":
                raise
            reason = "internvideo_fast._C is not built"
            warnings.warn(
                f"{reason}: the C++/CUDA kernels are unavailable and every op runs on its PyTorch reference; "
                f"build it with {rebuild_command()}",
                RuntimeWarning,
                stacklevel=3,
            )
            return None, reason
        except ImportError as error:
            recorded = build_info["torch"] if build_info else None
            built = f"torch {recorded}" if recorded else "a torch not recorded (no _build_info.json)"
            problem = (f"internvideo_fast._C could not be loaded ({error}); it was built against {built} "
                       f"and torch {torch.__version__} is installed")
    if not _allow_reference():
        raise ImportError(f"{problem}: {_remedy(build_info)}")
    warnings.warn(f"{problem}; {ALLOW_REFERENCE_VARIABLE}=1: every op runs on its PyTorch reference",
                  RuntimeWarning, stacklevel=3)
    return None, problem


BUILD_INFO = read_build_info()
_C, LOAD_ERROR = _load(BUILD_INFO)
HAS_C = _C is not None
CUDA_ARCHS: str = _C.cuda_archs if _C is not None else ""


_HAS_KERNEL: dict[tuple[str, str], bool] = {}


@torch.compiler.assume_constant_result  # registrations do not change once _C is loaded
def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether `_C` registered a kernel for torch.ops.internvideo_fast.<op> under `dispatch_key`
    ("CPU" or "CUDA"). Remembered per pair: every op call asks, and the dispatcher lookups cost host time.
    (A dict, not functools.lru_cache: Dynamo traces through lru_cache wrappers, not into this constant.)"""
    known = _HAS_KERNEL.get((op, dispatch_key))
    if known is None:
        name = f"internvideo_fast::{op}"
        # _C may not define this op at all (a Triton-only or Python-only op).
        defined = HAS_C and torch._C._dispatch_has_kernel(name)
        known = bool(defined) and torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key)
        _HAS_KERNEL[op, dispatch_key] = known
    return known
