"""LaunchTuner: picks the fastest candidate per key, caches it, skips failing candidates, and runs the
default (first) candidate wherever it must not time anything."""

import pytest
import torch

from internvideo_fast.ops.autotuning import LaunchTuner, length_bucket


def _recording_candidates(calls, failing=()):
    def make(label):
        def launch():
            if label in failing:
                raise RuntimeError(f"{label} cannot run here")
            calls.append(label)
            return label.upper()
        return label, launch
    return [make(label) for label in ("a", "b", "c")]


def _fake_timer(costs):
    def timer(launch):
        label = launch()
        return costs[label.lower()]
    return timer


GPU = torch.device("cuda")  # only its type is read; nothing runs on a GPU


def test_picks_the_fastest_and_caches_it_per_key(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    tuner = LaunchTuner("t", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}))
    calls = []
    assert tuner.run(("k", 64), _recording_candidates(calls), GPU) == ("b", "B")
    assert calls == ["a", "b", "c", "b"]  # each timed once, then the winner runs for real
    calls.clear()
    assert tuner.run(("k", 64), _recording_candidates(calls), GPU) == ("b", "B")
    assert calls == ["b"]  # cached: no more timing
    assert tuner.choices() == {("k", 64): "b"}
    assert tuner.timings[("k", 64)] == {"a": 3.0, "b": 1.0, "c": 2.0}


def test_failing_candidates_are_skipped_and_all_failing_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    tuner = LaunchTuner("t", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}))
    assert tuner.run(1, _recording_candidates([], failing=("b",)), GPU)[0] == "c"
    with pytest.raises(RuntimeError, match="a cannot run"):
        tuner.run(2, _recording_candidates([], failing=("a", "b", "c")), GPU)


@pytest.mark.parametrize("why", ["cpu", "interpreter", "disabled", "not_asked", "one_candidate"])
def test_default_runs_untimed_where_tuning_must_not_happen(monkeypatch, why):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    device, tune = GPU, True
    if why == "cpu":
        device = torch.device("cpu")
    elif why == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif why == "disabled":
        monkeypatch.setenv("IVF_AUTOTUNE", "0")
    elif why == "not_asked":
        tune = False

    def timer(launch):
        raise AssertionError("nothing may be timed here")

    tuner = LaunchTuner("t", timer=timer)
    calls = []
    candidates = _recording_candidates(calls)[:1] if why == "one_candidate" else _recording_candidates(calls)
    assert not tuner.will_time("k", len(candidates), device, tune=tune)
    assert tuner.run("k", candidates, device, tune=tune) == ("a", "A")
    assert calls == ["a"] and tuner.choices() == {}


def test_will_time_says_when_run_times_the_candidates(monkeypatch):
    """Callers that launch in place (overwriting an input) ask first: timing reruns every candidate on the
    same inputs. True exactly on the call that times; False once the key has a choice."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    tuner = LaunchTuner("t", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}))
    assert tuner.will_time("k", 3, GPU)
    calls = []
    tuner.run("k", _recording_candidates(calls), GPU)
    assert len(calls) == 4  # timed
    assert not tuner.will_time("k", 3, GPU)
    assert tuner.will_time("other key", 3, GPU)


def test_compile_mode_runs_every_candidate_once_untimed_and_chooses_nothing(monkeypatch):
    """IVF_AUTOTUNE=compile (gpu-check's cache-warming processes): each candidate compiles by running once;
    a failing one is skipped; the default's result is returned; the key is not run again."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("IVF_AUTOTUNE", "compile")

    def timer(launch):
        raise AssertionError("nothing may be timed here")

    tuner = LaunchTuner("t", timer=timer)
    calls = []
    assert tuner.will_time("k", 3, GPU)  # candidates rerun on the same inputs: no in-place launches
    assert tuner.run("k", _recording_candidates(calls, failing=("b",)), GPU) == ("a", "A")
    assert calls == ["c", "a"] and tuner.choices() == {} and tuner.timings == {}
    calls.clear()
    assert not tuner.will_time("k", 3, GPU)
    assert tuner.run("k", _recording_candidates(calls), GPU) == ("a", "A")
    assert calls == ["a"]
    with pytest.raises(RuntimeError, match="a cannot run"):  # the default's own error is not swallowed
        tuner.run("other", _recording_candidates([], failing=("a",)), GPU)


def test_length_bucket():
    assert [length_bucket(n) for n in (1, 2, 3, 16, 17, 1568, 2056)] == [1, 2, 4, 16, 32, 2048, 4096]


def test_tuning_report_lists_each_timed_choice(monkeypatch):
    from internvideo_fast.ops.autotuning import launch_tuner, tuning_report

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    tuner = launch_tuner("test_report_tuner")
    monkeypatch.setattr(tuner, "_timer", _fake_timer({"a": 3.0, "b": 1.0, "c": 0.5}))
    tuner.run(("shape", 7), _recording_candidates([]), GPU)
    rows = [row for row in tuning_report() if row["tuner"] == "test_report_tuner"]
    assert rows == [{
        "op": "tuning", "tuner": "test_report_tuner", "key": "('shape', 7)", "chosen": "c",
        "candidates_ms": {"a": 3.0, "b": 1.0, "c": 0.5},
    }]
