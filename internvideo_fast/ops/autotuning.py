"""Run-time choice between whole launch plans, keyed on what the caller says matters (shapes, bucketed
lengths).

``triton.autotune`` tunes one kernel's constexprs. Some choices span several kernels or different kernels
(the cross-attention backward with or without atomics; a matmul with pointer loads or TMA descriptors), so
a :class:`LaunchTuner` times whole *candidates* -- a label and a closure that runs the complete launch and
writes every output -- once per key on the GPU, caches the fastest label and runs it from then on.

Rules:

- Candidates must be idempotent: each call rewrites its outputs completely (a candidate that accumulates
  with atomics zeroes its buffer inside the closure), so timing runs leave nothing behind.
- The first candidate is the *default*. It runs, untimed and uncached, under the Triton interpreter, on
  CPU tensors, while a CUDA graph is being captured, and whenever ``IVF_AUTOTUNE=0`` is set. Callers that
  promise bitwise-reproducible results across processes (``deterministic=True``) pass a single candidate.
- A candidate that raises while being timed (e.g. Triton's ``OutOfResources`` on a smaller GPU) is
  skipped; if every candidate fails, the default's error is raised.
- ``IVF_AUTOTUNE=compile`` runs every candidate once per key, untimed, then the default, and chooses
  nothing: processes that warm Triton's on-disk kernel cache in parallel (``make gpu-check``) so that the
  process that times finds every candidate compiled.

:func:`tuning_choices` returns every choice made so far and :func:`tuning_report` every timing, for benchmark
reports (``make gpu-check`` records the report).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence

import torch

from internvideo_fast.ops.backend import triton_interpreter_on

Candidate = tuple[str, Callable[[], object]]
_TUNERS: dict[str, LaunchTuner] = {}


def autotuning_enabled() -> bool:
    return os.environ.get("IVF_AUTOTUNE", "1") != "0"


def compile_only() -> bool:
    """``IVF_AUTOTUNE=compile``: candidates run once each (compiling them), nothing is timed or chosen."""
    return os.environ.get("IVF_AUTOTUNE") == "compile"


def length_bucket(length: int) -> int:
    """Lengths grouped for tuning keys: the next power of two (1, 2, 4, ..., 1024, 2048, ...)."""
    return 1 << max(0, int(length) - 1).bit_length()


def _time_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=5, rep=25))


class LaunchTuner:
    """Picks the fastest candidate launch per key; see the module docstring."""

    def __init__(self, name: str, timer: Callable[[Callable[[], object]], float] | None = None):
        self.name = name
        self._timer = timer or _time_ms
        self._best: dict[Hashable, str] = {}
        self._compiled: set[Hashable] = set()  # keys whose candidates ran once under IVF_AUTOTUNE=compile
        self.timings: dict[Hashable, dict[str, float]] = {}

    def choices(self) -> dict[Hashable, str]:
        return dict(self._best)

    def will_time(self, key: Hashable, candidates: int, device: torch.device, tune: bool = True) -> bool:
        """Whether :meth:`run` with that many candidates times them now (each runs several times on the same
        inputs, so a caller whose launch overwrites its input must not launch in place then)."""
        return not (
            key in self._best
            or key in self._compiled
            or not tune
            or candidates <= 1
            or device.type != "cuda"
            or triton_interpreter_on()
            or not autotuning_enabled()
            or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
        )

    def run(self, key: Hashable, candidates: Sequence[Candidate], device: torch.device, tune: bool = True):
        """Run the chosen candidate for `key` and return ``(label, result)``."""
        if not candidates:
            raise ValueError(f"{self.name}: at least one candidate launch is needed")
        by_label = dict(candidates)
        chosen = self._best.get(key)
        if chosen in by_label:
            return chosen, by_label[chosen]()
        if not self.will_time(key, len(candidates), device, tune):
            label, launch = candidates[0]
            return label, launch()
        if compile_only():
            for _, launch in candidates[1:]:
                try:
                    launch()
                except Exception:  # noqa: BLE001 -- the timing process skips it the same way
                    pass
            self._compiled.add(key)
            label, launch = candidates[0]
            return label, launch()
        timings: dict[str, float] = {}
        first_error: Exception | None = None
        for label, launch in candidates:
            try:
                timings[label] = self._timer(launch)
            except Exception as error:  # noqa: BLE001 -- a candidate this device cannot run is skipped
                first_error = first_error or error
        if not timings:
            raise first_error  # type: ignore[misc]
        chosen = min(timings, key=timings.__getitem__)
        self._best[key] = chosen
        self.timings[key] = timings
        return chosen, by_label[chosen]()


def launch_tuner(name: str) -> LaunchTuner:
    """The process-wide tuner called `name` (one per op and kernel family)."""
    if name not in _TUNERS:
        _TUNERS[name] = LaunchTuner(name)
    return _TUNERS[name]


def tuning_choices() -> dict[str, dict[Hashable, str]]:
    """Every tuner's choices so far: ``{tuner name: {key: label}}``."""
    return {name: tuner.choices() for name, tuner in _TUNERS.items() if tuner.choices()}


def tuning_report() -> list[dict]:
    """Every timed choice as JSON-ready rows: tuner, key, the chosen label and each candidate's ms."""
    return [
        {"op": "tuning", "tuner": name, "key": str(key), "chosen": tuner.choices()[key],
         "candidates_ms": {label: round(ms, 5) for label, ms in timings.items()}}
        for name, tuner in _TUNERS.items()
        for key, timings in tuner.timings.items()
    ]
