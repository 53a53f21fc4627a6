"""Backend selection: precedence of code and environment, auto's choices, and clear errors."""

import pytest
import torch

from internvideo_fast import HAS_C
from internvideo_fast.ops.framework import backend as backend_module
from internvideo_fast.ops import get_backend, set_backend, tube_mask, use_backend
from internvideo_fast.ops.framework.backend import available_backends, select_backend


@pytest.fixture(autouse=True)
def _clean_choices(monkeypatch):
    monkeypatch.setattr(backend_module, "_choices", {})
    monkeypatch.delenv("IVF_BACKEND", raising=False)
    monkeypatch.delenv("IVF_BACKEND_TUBE_MASK", raising=False)


def test_precedence(monkeypatch):
    assert get_backend("tube_mask") == "auto"
    monkeypatch.setenv("IVF_BACKEND", "reference")
    assert get_backend("tube_mask") == "reference"
    monkeypatch.setenv("IVF_BACKEND_TUBE_MASK", "cpu")
    assert get_backend("tube_mask") == "cpu"  # per-op environment beats the default
    set_backend("triton", "tube_mask")
    assert get_backend("tube_mask") == "triton"  # code beats the environment
    with use_backend("reference", "tube_mask"):
        assert get_backend("tube_mask") == "reference"
    assert get_backend("tube_mask") == "triton"
    set_backend(None, "tube_mask")
    assert get_backend("tube_mask") == "cpu"


def test_auto_prefers_kernels():
    cpu = torch.device("cpu")
    assert select_backend("tube_mask", cpu, {"reference", "cpu"}) == "cpu"
    assert select_backend("tube_mask", cpu, {"reference"}) == "reference"
    cuda = torch.device("cuda")
    assert select_backend("tube_mask", cuda, {"reference", "triton", "cuda"}) == "cuda"
    assert select_backend("tube_mask", cuda, {"reference", "triton"}) == "triton"


def test_unknown_or_unavailable_backend_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        set_backend("fast")
    monkeypatch.setenv("IVF_BACKEND", "gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend("tube_mask")
    monkeypatch.delenv("IVF_BACKEND")
    with use_backend("cuda", "tube_mask"), pytest.raises(ValueError, match="'cuda' was chosen for tube_mask"):
        tube_mask(1, 1, 4, 4, 0.5, seed=0)


@pytest.mark.skipif(not HAS_C, reason="needs _C")
def test_available_backends_on_cpu():
    available = available_backends("tube_mask", torch.device("cpu"))
    assert {"reference", "cpu"} <= available and "cuda" not in available


@pytest.mark.skipif(not backend_module.triton_interpreter_on(), reason="the interpreter is off (a GPU run)")
def test_the_interpreter_runs_our_kernels_with_these_versions():
    """The CPU tests run every Triton kernel under the interpreter; an environment where it cannot (Triton
    3.6 with numpy >= 2.4) fails here, with the reason, instead of skipping them all."""
    assert backend_module.interpreter_problem() is None


def test_an_interpreter_that_cannot_run_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backend_module, "interpreter_problem", lambda: "Triton 3.6 with numpy 2.4")
    cpu = torch.device("cpu")
    assert not backend_module.triton_runs_on(cpu)
    assert "triton" not in available_backends("tube_mask", cpu)
    with use_backend("triton", "tube_mask"), pytest.raises(ValueError, match="Triton 3.6 with numpy 2.4"):
        select_backend("tube_mask", cpu, available_backends("tube_mask", cpu))
