"""Which implementation runs each op.

Every op has up to four implementations beside its PyTorch reference, and one name per choice:

- ``auto`` (default): on a CUDA tensor the CUDA kernel, else the Triton kernel, else the reference; on a
  CPU tensor the C++ kernel, else the reference.
- ``reference``: the pure-PyTorch reference in the op's module.
- ``triton``: the Triton kernel (CPU tensors need ``TRITON_INTERPRET=1`` set before triton is imported).
- ``cuda``: the CUDA kernel in ``_C``.
- ``cpu``: the C++ CPU kernel in ``_C``.

Set a choice in code with :func:`set_backend` or the :func:`use_backend` context manager, or from the
environment with ``IVF_BACKEND`` (all ops) and ``IVF_BACKEND_<OP>`` (one op, e.g.
``IVF_BACKEND_TUBE_MASK=reference``). Code wins over the environment; a per-op choice wins over the
default. Asking for a backend that cannot run the call is a ``ValueError``, never a silent fallback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import warnings
from collections.abc import Collection, Iterator

import torch

from internvideo_fast._extension import has_kernel

BACKENDS = ("auto", "reference", "triton", "cuda", "cpu")
_ALL_OPS = None  # key for the default choice in _choices
_choices: dict[str | None, str] = {}


def _validate(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def set_backend(backend: str | None, op: str | None = None) -> None:
    """Choose `backend` for `op` (or for all ops when `op` is None); None clears the choice."""
    if backend is None:
        _choices.pop(op, None)
    else:
        _choices[op] = _validate(backend)


@contextlib.contextmanager
def use_backend(backend: str, op: str | None = None) -> Iterator[None]:
    """Run a block with `backend` chosen for `op` (or all ops), then restore the previous choice."""
    previous = _choices.get(op)
    set_backend(backend, op)
    try:
        yield
    finally:
        set_backend(previous, op)


def get_backend(op: str) -> str:
    """The configured choice for `op`, possibly ``auto`` (see the module docstring for precedence)."""
    if op in _choices:
        return _choices[op]
    from_env = os.environ.get(f"IVF_BACKEND_{op.upper()}")
    if from_env:
        return _validate(from_env)
    if _ALL_OPS in _choices:
        return _choices[_ALL_OPS]
    return _validate(os.environ.get("IVF_BACKEND") or "auto")


_TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _find_interpreter_problem() -> str | None:
    """Triton 3.6's interpreter turns a loop bound (a 1-element array) into an int with ``int(array)``,
    which numpy >= 2.4 refuses; every kernel with a loop then fails with an obscure error (Triton 3.8
    squeezes first)."""
    import numpy
    from triton.runtime import interpreter

    try:
        with warnings.catch_warnings():  # numpy 1.25 - 2.3 only deprecate it: no problem, no warning
            warnings.simplefilter("ignore", DeprecationWarning)
            int(numpy.ones(1))
        return None
    except TypeError:
        pass
    if "int(self.handle.data)" in inspect.getsource(interpreter):
        import triton

        return (f"Triton {triton.__version__}'s interpreter cannot run loops with numpy {numpy.__version__} "
                f"(install numpy < 2.4, or Triton >= 3.8)")
    return None


_INTERPRETER_PROBLEM: list[str | None] = []  # found once (at import when the interpreter is on)


def interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run our kernels in this environment, or None."""
    if not _INTERPRETER_PROBLEM:
        _INTERPRETER_PROBLEM.append(_find_interpreter_problem())
    return _INTERPRETER_PROBLEM[0]


def triton_runs_on(device: torch.device) -> bool:
    """Whether a Triton kernel can run on tensors of `device`."""
    if not _TRITON_IMPORTABLE:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and triton_interpreter_on() and interpreter_problem() is None


def available_backends(compiled_op: str, device: torch.device, has_triton: bool = True) -> set[str]:
    """The implementations that can run on `device` in this process: the reference, the kernels that _C
    registered for torch.ops.internvideo_fast.<compiled_op>, and Triton if the op has a Triton kernel."""
    available = {"reference"}
    if device.type == "cpu" and has_kernel(compiled_op, "CPU"):
        available.add("cpu")
    if device.type == "cuda" and has_kernel(compiled_op, "CUDA"):
        available.add("cuda")
    if has_triton and triton_runs_on(device):
        available.add("triton")
    return available


def select_backend(op: str, device: torch.device, available: Collection[str]) -> str:
    """Resolve the configured choice for `op` to one of `available` on `device`."""
    choice = get_backend(op)
    if choice == "auto":
        preference = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpu", "reference")
        return next(backend for backend in preference if backend in available)
    if choice not in available:
        problem = None
        if choice == "triton" and device.type == "cpu" and _TRITON_IMPORTABLE and triton_interpreter_on():
            problem = interpreter_problem()
        why = f" ({problem})" if problem else ""
        raise ValueError(
            f"backend {choice!r} was chosen for {op} but cannot run on {device.type} here{why}; "
            f"available: {sorted(available)}"
        )
    return choice


# Outside any traced code: torch.compile then only reads the answer.
if _TRITON_IMPORTABLE and triton_interpreter_on():
    interpreter_problem()
