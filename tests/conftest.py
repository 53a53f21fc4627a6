"""Test set-up shared by every test: the interpreter for Triton on CPU, seeding, the `gpu` marker."""

import os

# Triton reads this at import, so it must be set before anything imports triton: with no GPU, every
# Triton kernel runs in the interpreter on CPU tensors.
import torch  # torch itself does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random
import zlib

import pytest
from hypothesis import settings

# Hypothesis: deterministic in CI, no deadline (the interpreter and first compiles are slow).
settings.register_profile("ivf", deadline=None, derandomize=True, max_examples=25, print_blob=True)
settings.load_profile("ivf")

HAS_CUDA = torch.cuda.is_available()

# Under pytest-xdist each worker gets its share of the cores: tiny ops lose more to threads competing for
# the same cores than they gain from them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def pytest_configure(config):
    # A tuner dropping a candidate that disagreed with its default is a kernel bug: it fails the test it ran
    # in. (Here, not in pyproject.toml: resolving the class imports the package, and that must come after
    # TRITON_INTERPRET is set above.)
    rejected = "internvideo_fast.ops.framework.autotuning.TuningCandidateRejected"
    config.addinivalue_line("filterwarnings", f"error::{rejected}")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_everything(request):
    """A fresh, reproducible seed per test: derived from the test's id, so reruns see the same inputs
    while different tests see different ones."""
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    torch.manual_seed(seed)
    yield
