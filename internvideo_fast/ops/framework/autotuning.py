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
- Candidates are checked as well as timed when the caller passes ``outputs`` (the tensors a launch wrote,
  from its result): each timed candidate runs once more on NaN-poisoned outputs
  (:mod:`internvideo_fast.ops.framework.outputs`) and must match the first candidate's results (the default, which
  the float64-reference tests pin down on every machine) within rounding. One that disagrees, or leaves
  an element unwritten, is never chosen: it raises a :class:`TuningCandidateRejected` warning (an error in
  the tests) and is listed in :func:`tuning_report`. Alternative kernels may first run on a user's GPU; a
  wrong fast one must cost speed, not correctness.
- ``IVF_AUTOTUNE=compile`` runs every candidate once per key, untimed, then the default, and chooses
  nothing: processes that warm Triton's on-disk kernel cache in parallel (``make gpu-check``) so that the
  process that times finds every candidate compiled. Each candidate is synchronized there, so one that
  faults on the device is named (a line starting with :data:`CRASH_MARK`) and raises
  :class:`TuningCandidateCrashed`; ``make gpu-check`` then leaves it out of the timing process.
- ``IVF_AUTOTUNE_CACHE=<file.json>`` (opt-in): choices are also written to that file and read back by
  later processes on the same GPU model with the same torch, Triton and kernel sources, which then neither
  time nor compile the other candidates: restarts start at full speed, and every process (a resumed run,
  each DDP rank started after the file exists) runs the same plans, hence the same bits where the plan
  uses no atomics. A choice whose label is no longer offered is timed again. Writes merge with the file's
  other entries and replace it atomically.
- ``IVF_AUTOTUNE_EXCLUDE``: ``;``-separated shell patterns over ``tuner:label``; matching candidates are not
  offered (a tuner's default always is). The way around a candidate that breaks the CUDA context on some
  GPU: such a fault cannot be recovered from in-process, so it raises :class:`TuningCandidateCrashed`
  naming the setting that skips it.

:func:`tuning_choices` returns every choice made so far and :func:`tuning_report` every timing, for benchmark
reports (``make gpu-check`` records the report).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path

import torch

from internvideo_fast.ops.framework.agreement import disagreement
from internvideo_fast.ops.framework.backend import triton_interpreter_on
from internvideo_fast.ops.framework.outputs import poison_, poisoned_outputs

Candidate = tuple[str, Callable[[], object]]
# What a candidate's launch wrote, given what it returned (None entries are skipped).
Outputs = Callable[[object], Sequence[torch.Tensor | None]]
_TUNERS: dict[str, LaunchTuner] = {}
_FORCED_PLANS: dict[str, str | int] = {}  # tuner name pattern -> label or position (see force_plan)
CRASH_MARK = "[autotune] crashed: "  # + "tuner:label", printed in IVF_AUTOTUNE=compile mode


class TuningCandidateRejected(RuntimeWarning):
    """A tuning candidate's outputs disagreed with the default's: a kernel bug, avoided by not using it."""


class TuningCandidateCrashed(RuntimeError):
    """A tuning candidate left the CUDA context unusable (e.g. an illegal memory access): the process cannot
    go on, but the message names the candidate and the ``IVF_AUTOTUNE_EXCLUDE`` setting that skips it."""

    def __init__(self, tuner: str, label: str, error: BaseException):
        self.pattern = f"{tuner}:{label}"
        super().__init__(
            f"tuner {tuner!r}: candidate {label!r} broke the CUDA context ({type(error).__name__}: {error}). "
            f"Run with IVF_AUTOTUNE_EXCLUDE='{self.pattern}' to skip it, and please report it with your GPU, "
            "torch and Triton versions."
        )


def autotuning_enabled() -> bool:
    return os.environ.get("IVF_AUTOTUNE", "1") != "0"


def compile_only() -> bool:
    """``IVF_AUTOTUNE=compile``: candidates run once each (compiling them), nothing is timed or chosen."""
    return os.environ.get("IVF_AUTOTUNE") == "compile"


def excluded_patterns() -> list[str]:
    """``IVF_AUTOTUNE_EXCLUDE`` as a list of patterns over ``tuner:label`` (``;``-separated)."""
    patterns = os.environ.get("IVF_AUTOTUNE_EXCLUDE", "").split(";")
    return [pattern.strip() for pattern in patterns if pattern.strip()]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def _device_usable(device: torch.device) -> bool:
    """False once a fault has left the CUDA context unusable (every later call fails with it)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return True
    try:
        torch.ones(1, device=device).add_(1).cpu()
        return True
    except Exception:  # noqa: BLE001 -- the sticky error itself
        return False


@functools.lru_cache(maxsize=None)
def _kernel_sources_digest() -> str:
    """Of every op module (the kernels and their launch plans): a cached choice is only as good as them."""
    digest = hashlib.sha1()
    ops = Path(__file__).parent.parent
    for path in sorted(ops.rglob("*.py")):
        digest.update(path.relative_to(ops).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_context(device: torch.device) -> dict[str, str]:
    """What a cached choice depends on besides its key."""
    import triton

    cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(device) if cuda else device.type,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "kernels": _kernel_sources_digest(),
    }


class _ChoiceCache:
    """The ``IVF_AUTOTUNE_CACHE`` file: ``{"context": ..., "choices": {tuner: {repr(key): label}}}``."""

    def __init__(self, path: Path, context: dict[str, str]):
        self.path, self.context = path, context
        self.choices = self._read()

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # absent or unreadable: written afresh by the first choice
        if not isinstance(stored, dict) or stored.get("context") != self.context:
            return {}  # another GPU, torch, Triton or kernel version: its choices do not apply
        choices = stored.get("choices")
        return choices if isinstance(choices, dict) else {}

    def get(self, tuner: str, key: Hashable) -> str | None:
        return self.choices.get(tuner, {}).get(repr(key))

    def put(self, tuner: str, key: Hashable, label: str) -> None:
        merged = self._read()  # other processes' choices since this one read the file
        for name, entries in self.choices.items():
            merged.setdefault(name, {}).update(entries)
        merged.setdefault(tuner, {})[repr(key)] = label
        self.choices = merged
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"context": self.context, "choices": merged}, indent=1))
            os.replace(partial, self.path)
        except OSError as error:
            warnings.warn(f"internvideo_fast: IVF_AUTOTUNE_CACHE={self.path} cannot be written ({error})",
                          RuntimeWarning, stacklevel=4)


_CHOICE_CACHES: dict[tuple, _ChoiceCache] = {}


def _choice_cache(device: torch.device) -> _ChoiceCache | None:
    """The process's view of ``IVF_AUTOTUNE_CACHE`` for `device` (read once), or None when it is unset."""
    location = os.environ.get("IVF_AUTOTUNE_CACHE")
    if not location:
        return None
    context = _cache_context(device)
    cache_key = (location, tuple(sorted(context.items())))
    if cache_key not in _CHOICE_CACHES:
        _CHOICE_CACHES[cache_key] = _ChoiceCache(Path(location), context)
    return _CHOICE_CACHES[cache_key]


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
        self.rejected: dict[Hashable, dict[str, str]] = {}  # key -> {label: why its outputs disagreed}

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

    def run(
        self,
        key: Hashable,
        candidates: Sequence[Candidate],
        device: torch.device,
        tune: bool = True,
        outputs: Outputs | None = None,
    ):
        """Run the chosen candidate for `key` and return ``(label, result)``. With `outputs` (the tensors a
        launch wrote, from its result) candidates that disagree with the first one are never chosen."""
        if not candidates:
            raise ValueError(f"{self.name}: at least one candidate launch is needed")
        by_label = dict(candidates)
        chosen = self._best.get(key)
        if chosen in by_label:  # the hot path: one dict lookup per call
            return chosen, by_label[chosen]()
        candidates = self._offered(candidates)
        if not self.will_time(key, len(candidates), device, tune):
            label, launch = candidates[0]
            return label, launch()
        cache = None if compile_only() else _choice_cache(device)
        if cache is not None and (stored := cache.get(self.name, key)) in dict(candidates):
            self._best[key] = stored  # chosen, and checked, by an earlier process
            return stored, by_label[stored]()
        if compile_only():
            for label, launch in candidates[1:]:
                try:
                    launch()
                    _synchronize(device)  # a device fault surfaces here, where it can be named
                except Exception as error:  # noqa: BLE001 -- the timing process skips it the same way
                    if not _device_usable(device):
                        print(f"{CRASH_MARK}{self.name}:{label}", file=sys.stderr, flush=True)
                        raise TuningCandidateCrashed(self.name, label, error) from error
            self._compiled.add(key)
            label, launch = candidates[0]
            return label, launch()
        timings: dict[str, float] = {}
        last_results: dict[str, object] = {}
        first_error: Exception | None = None
        for label, launch in candidates:
            try:
                timings[label] = self._timer(_recording(launch, last_results, label))
            except Exception as error:  # noqa: BLE001 -- a candidate this device cannot run is skipped
                if not _device_usable(device):
                    raise TuningCandidateCrashed(self.name, label, error) from error
                first_error = first_error or error
        if not timings:
            raise first_error  # type: ignore[misc]
        self.timings[key] = timings
        usable = dict(timings)
        if outputs is not None and len(timings) > 1:
            for label in self._disagreeing(key, candidates, timings, last_results, outputs):
                del usable[label]
        chosen = min(usable, key=usable.__getitem__)
        self._best[key] = chosen
        if cache is not None:
            cache.put(self.name, key, chosen)
        return chosen, by_label[chosen]()

    def _offered(self, candidates: Sequence[Candidate]) -> Sequence[Candidate]:
        """The candidates ``IVF_AUTOTUNE_EXCLUDE`` leaves (the default always stays)."""
        patterns = excluded_patterns()
        if not patterns:
            return candidates
        return [candidates[0], *(
            (label, launch) for label, launch in candidates[1:]
            if not any(fnmatch.fnmatchcase(f"{self.name}:{label}", pattern) for pattern in patterns)
        )]

    def _disagreeing(self, key, candidates, timings, last_results, outputs: Outputs) -> list[str]:
        """Labels of timed candidates whose outputs, written over poison, differ from the first one's."""
        reference_label, reference = None, None
        rejected: dict[str, str] = {}
        for label, launch in candidates:
            if label not in timings:
                continue
            for tensor in _tensors(outputs(last_results[label])):
                poison_(tensor)  # the buffers launches share: an element this one skips stays NaN
            with poisoned_outputs():  # and the buffers it allocates
                written = _tensors(outputs(launch()))
            if reference is None:
                reference_label, reference = label, [tensor.clone() for tensor in written]
            elif (why := _outputs_disagreement(reference, written)) is not None:
                rejected[label] = why
                warnings.warn(
                    f"internvideo_fast: tuner {self.name!r}, key {key}: candidate {label!r} disagrees with "
                    f"{reference_label!r} ({why}); it will not be used. Please report this with your GPU, "
                    "torch and Triton versions.",
                    TuningCandidateRejected, stacklevel=3,
                )
        if rejected:
            self.rejected[key] = rejected
        return list(rejected)


def _outputs_disagreement(reference: list[torch.Tensor], written: list[torch.Tensor]) -> str | None:
    if len(written) != len(reference):
        return f"{len(written)} outputs against {len(reference)}"
    for index, (expected, got) in enumerate(zip(reference, written)):
        if (reason := disagreement(expected, got)) is not None:
            return f"output {index}: {reason}"
    return None


def _recording(launch: Callable[[], object], results: dict[str, object], label: str) -> Callable[[], object]:
    def run():
        results[label] = launch()
        return results[label]
    return run


def _tensors(values) -> list[torch.Tensor]:
    return [value for value in values if value is not None]


@contextlib.contextmanager
def force_plan(tuner: str, label: str | int) -> Iterator[None]:
    """Within the block, launches of the tuners whose names match `tuner` (a shell pattern) offer one
    candidate instead of their list: the first whose label is `label` or starts with ``label:``, the
    default where none does; an int `label` is a position in the list (the last where it is shorter).
    Tests run every plan this way on every machine, where the tuner alone would run only the default."""
    previous = _FORCED_PLANS.get(tuner)
    _FORCED_PLANS[tuner] = label
    try:
        yield
    finally:
        if previous is None:
            del _FORCED_PLANS[tuner]
        else:
            _FORCED_PLANS[tuner] = previous


def forced_plan(tuner: str) -> str | int | None:
    """The label or position :func:`force_plan` set for the tuner called `tuner`, or None."""
    if not _FORCED_PLANS:
        return None
    for pattern, label in _FORCED_PLANS.items():
        if fnmatch.fnmatchcase(tuner, pattern):
            return label
    return None


def forced_candidates(tuner: str, candidates: Sequence[Candidate]) -> Sequence[Candidate]:
    """`candidates` as :func:`force_plan` leaves them for the tuner called `tuner` (all when none is
    forced). Works on any sequence of tuples whose first item is the label."""
    forced = forced_plan(tuner)
    if forced is None or not candidates:
        return candidates
    if isinstance(forced, int):
        return [candidates[min(forced, len(candidates) - 1)]]
    matching = [c for c in candidates if c[0] == forced or c[0].startswith(forced + ":")]
    return matching[:1] or list(candidates[:1])


def launch_tuner(name: str) -> LaunchTuner:
    """The process-wide tuner called `name` (one per op and kernel family)."""
    if name not in _TUNERS:
        _TUNERS[name] = LaunchTuner(name)
    return _TUNERS[name]


def tuning_choices() -> dict[str, dict[Hashable, str]]:
    """Every tuner's choices so far: ``{tuner name: {key: label}}``."""
    return {name: tuner.choices() for name, tuner in _TUNERS.items() if tuner.choices()}


def tuning_report() -> list[dict]:
    """Every timed choice as JSON-ready rows: tuner, key, the chosen label, each candidate's ms and, where
    some disagreed with the default, why (``rejected``)."""
    return [
        {"op": "tuning", "tuner": name, "key": str(key), "chosen": tuner.choices()[key],
         "candidates_ms": {label: round(ms, 5) for label, ms in timings.items()},
         **({"rejected": tuner.rejected[key]} if key in tuner.rejected else {})}
        for name, tuner in _TUNERS.items()
        for key, timings in tuner.timings.items()
    ]
