"""LaunchTuner: picks the fastest candidate per key, caches it, skips failing candidates, and runs the
default (first) candidate wherever it must not time anything."""

import importlib

import pytest
import torch

from helpers import needs_triton
from internvideo_fast.ops.framework.autotuning import (
    LaunchTuner,
    TuningCandidateRejected,
    force_plan,
    forced_candidates,
    forced_plan,
    length_bucket,
)


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


def test_force_plan_leaves_one_candidate_by_label_prefix_or_position():
    """A forced label picks the first candidate named it or ``label:...``, the default where none is; a
    position picks that candidate, the last where the list is shorter; other tuners and the time outside
    the block keep every candidate."""
    candidates = [("split:a", 0), ("atomic:b", 1), ("atomic:c", 2), ("split_tma:d", 3)]
    assert forced_plan("cross_attention_bwd") is None
    with force_plan("cross_attention_bwd", "atomic"):
        assert forced_plan("cross_attention_bwd") == "atomic"
        assert forced_candidates("cross_attention_bwd", candidates) == [("atomic:b", 1)]
        assert forced_candidates("cross_attention_fwd", candidates) == candidates
        with force_plan("cross_attention_bwd", "split"):
            assert forced_candidates("cross_attention_bwd", candidates) == [("split:a", 0)]
        assert forced_candidates("cross_attention_bwd", candidates) == [("atomic:b", 1)]
    with force_plan("cross_attention_bwd", "missing"):
        assert forced_candidates("cross_attention_bwd", candidates) == [("split:a", 0)]
    with force_plan("cross_attention_fwd*", 2):
        assert forced_candidates("cross_attention_fwd_split", candidates) == [("atomic:c", 2)]
        assert forced_candidates("cross_attention_fwd", candidates[:2]) == [("atomic:b", 1)]
    assert forced_plan("cross_attention_fwd") is None
    assert forced_candidates("cross_attention_bwd", candidates) == candidates


def test_tuning_report_lists_each_timed_choice(monkeypatch):
    from internvideo_fast.ops.framework.autotuning import launch_tuner, tuning_report

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


# ----------------------------------------------------------------------------------------------------
# Candidates are checked against the default before one is chosen (outputs=...)
# ----------------------------------------------------------------------------------------------------
def _writing_candidates(out, writers):
    """Candidates that write `out` in place (as the ops' launches do) with `writers[label](out)`."""
    def make(label, write):
        def launch():
            write(out)
        return label, launch
    return [make(label, write) for label, write in writers.items()]


def _timer_by_order(costs):
    """Costs in the candidates' order (the tuner times them in order)."""
    order = iter(costs)

    def timer(launch):
        launch()
        return next(order)
    return timer


def test_a_fast_candidate_with_wrong_outputs_is_never_chosen(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    expected = torch.randn(37, 5)
    out = torch.empty_like(expected)
    candidates = _writing_candidates(out, {
        "default": lambda o: o.copy_(expected),
        "wrong": lambda o: o.copy_(expected.flip(0)),  # a wrong index
        "right": lambda o: o.copy_(expected + 1e-3 * expected.abs().max()),  # summation-order noise
    })
    tuner = LaunchTuner("t", timer=_timer_by_order([3.0, 1.0, 2.0]))
    with pytest.warns(TuningCandidateRejected, match="'wrong' disagrees with 'default'"):
        label, _ = tuner.run("k", candidates, GPU, outputs=lambda _: (out,))
    assert label == "right" and tuner.choices() == {"k": "right"}
    assert set(tuner.rejected["k"]) == {"wrong"} and "differ beyond rounding" in tuner.rejected["k"]["wrong"]
    assert tuner.timings["k"] == {"default": 3.0, "wrong": 1.0, "right": 2.0}  # the report keeps its time
    torch.testing.assert_close(out, expected + 1e-3 * expected.abs().max())  # the chosen one ran last


def test_an_element_left_unwritten_is_caught_by_the_poison(monkeypatch):
    """The default fills the shared buffer first; a candidate that skips the last row would leave the
    default's (right) values there and agree, were the buffer not poisoned before its check."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    expected = torch.randn(17, 3, dtype=torch.float16)
    out = torch.empty_like(expected)

    def skips_last_row(o):
        o[:-1].copy_(expected[:-1])

    candidates = _writing_candidates(out, {"default": lambda o: o.copy_(expected), "tail": skips_last_row})
    tuner = LaunchTuner("t", timer=_timer_by_order([2.0, 1.0]))
    with pytest.warns(TuningCandidateRejected, match="non-finite"):
        assert tuner.run("k", candidates, GPU, outputs=lambda _: (out,))[0] == "default"
    assert torch.equal(out, expected)


def test_candidates_allocating_their_outputs_are_checked_through_their_results(monkeypatch):
    from internvideo_fast.ops.framework.outputs import new_output

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    expected = torch.randn(9, 4)

    def default():
        return new_output(expected, expected.shape).copy_(expected), None

    def forgets_a_column():
        out = new_output(expected, expected.shape)  # poisoned while the tuner checks it
        out[:, 1:] = expected[:, 1:]
        return out, None

    def bf16_rounded():
        return expected.bfloat16().float(), None

    tuner = LaunchTuner("t", timer=_timer_by_order([3.0, 1.0, 2.0]))
    candidates = [("default", default), ("column", forgets_a_column), ("rounded", bf16_rounded)]
    with pytest.warns(TuningCandidateRejected, match="'column'"):
        label, (out, _) = tuner.run("k", candidates, GPU, outputs=lambda result: result)
    assert label == "rounded" and set(tuner.rejected["k"]) == {"column"}


def test_without_outputs_nothing_is_checked(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    tuner = LaunchTuner("t", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}))
    calls = []
    assert tuner.run("k", _recording_candidates(calls), GPU)[0] == "b"
    assert calls == ["a", "b", "c", "b"] and tuner.rejected == {}


def test_tuning_report_lists_rejected_candidates(monkeypatch):
    from internvideo_fast.ops.framework.autotuning import launch_tuner, tuning_report

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    tuner = launch_tuner("test_rejection_report_tuner")
    monkeypatch.setattr(tuner, "_timer", _timer_by_order([2.0, 1.0]))
    out = torch.empty(4)
    candidates = _writing_candidates(out, {"a": lambda o: o.fill_(1.0), "b": lambda o: o.fill_(2.0)})
    with pytest.warns(TuningCandidateRejected):
        tuner.run("key", candidates, GPU, outputs=lambda _: (out,))
    [row] = [row for row in tuning_report() if row["tuner"] == "test_rejection_report_tuner"]
    assert row["chosen"] == "a" and set(row["rejected"]) == {"b"}


@pytest.mark.parametrize("chunk", [3, 1 << 22])
def test_disagreement_tolerates_rounding_and_names_real_differences(chunk):
    from internvideo_fast.ops.framework.agreement import disagreement

    torch.manual_seed(0)
    reference = torch.randn(7, 11)
    assert disagreement(reference, reference.clone(), chunk) is None
    assert disagreement(reference, reference.bfloat16().float(), chunk) is None  # one bf16 rounding
    shifted = reference.clone()
    shifted[3, 4] += 0.5 * reference.abs().max()
    assert "1 of 77 elements differ beyond rounding" in disagreement(reference, shifted, chunk)
    with_nan = reference.clone()
    with_nan[0, 0] = float("nan")
    assert disagreement(with_nan, with_nan.clone(), chunk) is None  # the default's own NaN, matched
    assert "non-finite" in disagreement(reference, with_nan, chunk)
    assert "non-finite" in disagreement(with_nan, reference, chunk)
    infinite = reference.clone()
    infinite[1, 1] = float("-inf")
    assert disagreement(infinite, infinite.clone(), chunk) is None  # e.g. the lse of a fully masked row
    flipped = infinite.clone()
    flipped[1, 1] = float("inf")
    assert "non-finite" in disagreement(infinite, flipped, chunk)
    assert "against" in disagreement(reference, reference[:, :5], chunk)
    integers = torch.arange(10)
    assert disagreement(integers, integers.clone(), chunk) is None
    assert "1 of 10 elements differ" in disagreement(integers, integers.where(integers != 4, 0), chunk)


# ----------------------------------------------------------------------------------------------------
# The ops hand their outputs to the tuner: on CPU, with tuning forced on, every candidate is checked
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def tuning_on_cpu(monkeypatch):
    """Tuners time and check candidates on CPU tensors as they do on a GPU. The fake timer runs each
    candidate once and finds each later one faster, so the last candidate that agrees is chosen."""
    import itertools

    from internvideo_fast.ops.framework import autotuning

    monkeypatch.setattr(autotuning, "_TUNERS", {})
    calls = itertools.count(1)

    def fake_time_ms(launch):
        launch()
        return 1.0 / next(calls)

    def will_time(self, key, candidates, device, tune=True):
        return tune and candidates > 1 and key not in self._best and autotuning.autotuning_enabled()

    monkeypatch.setattr(autotuning, "_time_ms", fake_time_ms)
    monkeypatch.setattr(autotuning.LaunchTuner, "will_time", will_time)
    return autotuning._TUNERS


def _tuned_op_steps(dtype, device="cpu", sizes=(37, 32, 96, 17, 31)):
    """Forward + backward of each tuned op on fixed random inputs: {name: step}, where step() returns the
    outputs and the input gradients (fresh tensors, nothing accumulates, so a step can be graph-captured)."""
    from internvideo_fast.ops import cross_attention, dropout_add_layer_norm, linear_act
    from internvideo_fast.ops.linear_act import fused_mlp

    generator = torch.Generator().manual_seed(7)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(device, dtype).requires_grad_()

    def step_of(fn, *leaves):
        example = fn(*leaves)
        grads_out = [torch.randn(o.shape, generator=generator).to(device, dtype)
                     for o in (example if isinstance(example, tuple) else (example,))]

        def step():
            outputs = fn(*leaves)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            return [o.detach() for o in outputs] + list(torch.autograd.grad(outputs, leaves, grads_out))
        return step

    rows, width, hidden, sq, sk = sizes
    x, residual, weight, bias = leaf(rows, width), leaf(rows, width), leaf(width), leaf(width)
    w1, b1 = leaf(hidden, width, scale=width**-0.5), leaf(hidden)
    w2, b2 = leaf(width, hidden, scale=hidden**-0.5), leaf(width)
    q, k, v = leaf(2, sq, 2, 32), leaf(2, sk, 2, 32), leaf(2, sk, 2, 32)
    wide = leaf(5, 300), leaf(5, 300), leaf(300), leaf(300)  # the forward's loop plans start at D = 257
    return {
        "cross_attention": step_of(lambda *t: cross_attention(*t), q, k, v),
        "dropout_add_layer_norm": step_of(
            lambda *t: dropout_add_layer_norm(*t, 0.1, 1e-6, seed=3), x, residual, weight, bias),
        "dropout_add_layer_norm_wide": step_of(
            lambda *t: dropout_add_layer_norm(*t, 0.1, 1e-6, seed=3), *wide),
        "linear_act": step_of(lambda *t: linear_act(*t, "gelu"), x, w1, b1),
        "fused_mlp": step_of(lambda *t: fused_mlp(*t, "gelu"), x, w1, b1, w2, b2),
    }


def _tuned_op_calls(dtype):
    """One step of each tuned op: {name: (outputs and input grads)}."""
    return {name: step() for name, step in _tuned_op_steps(dtype).items()}


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["cross_attention", "dropout_add_layer_norm", "linear_act", "fused_mlp"])
def test_gpu_tuned_ops_replay_from_a_cuda_graph(op):
    """No tuned op syncs with the host in its forward + backward: once the tuners have chosen (eager warm-up
    on a side stream, as torch.cuda.graph wants), the step captures into a CUDA graph whose replay equals
    the eager step (the same chosen plans; atomics may reorder fp32 adds). What the bench's "graph" rows and
    torch.compile's "reduce-overhead" mode rely on."""
    step = _tuned_op_steps(torch.bfloat16, "cuda", sizes=(8 * 197, 768, 3072, 257, 1568))[op]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            eager = step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for tensor in captured:
        tensor.fill_(float("nan"))  # the replay must write every output
    graph.replay()
    torch.cuda.synchronize()
    for index, (expected, actual) in enumerate(zip(eager, captured)):
        torch.testing.assert_close(actual, expected, msg=lambda m: f"{op} output {index}: {m}")


@needs_triton
def test_every_tuned_op_checks_its_candidates(tuning_on_cpu, monkeypatch):
    """Each op's tuner gets its outputs: all candidates (the GPU's tiles and plans, under the interpreter)
    agree with the default, so the last one is chosen, and the results match the untuned ones."""
    from internvideo_fast.ops import use_backend

    la_fused = importlib.import_module("internvideo_fast.ops.linear_act.fused_mlp")
    dh_plans = la_fused._dh_plans  # offer the fused dh kernels beside the default, as on a GPU
    monkeypatch.setattr(la_fused, "_dh_plans",
                        lambda *args, with_fused: dh_plans(*args, with_fused=True))
    with use_backend("triton"):
        monkeypatch.setenv("IVF_AUTOTUNE", "0")
        untuned = _tuned_op_calls(torch.float16)
        assert not any(tuner.timings for tuner in tuning_on_cpu.values())
        monkeypatch.delenv("IVF_AUTOTUNE")
        tuned = _tuned_op_calls(torch.float16)  # a disagreeing candidate's warning fails the test (pyproject)
    timed = {name: tuner for name, tuner in tuning_on_cpu.items() if tuner.timings}
    assert {"cross_attention_fwd", "cross_attention_bwd", "dropout_add_layer_norm_fwd",
            "dropout_add_layer_norm_bwd", "linear_act_fwd", "fused_mlp_dh"} <= set(timed)
    for name, tuner in timed.items():
        assert tuner.rejected == {}, name
        for key, timings in tuner.timings.items():
            assert len(timings) > 1 and tuner.choices()[key] == list(timings)[-1], (name, key)
    for op, results in untuned.items():
        for index, (expected, actual) in enumerate(zip(results, tuned[op])):
            torch.testing.assert_close(actual, expected, rtol=2e-2, atol=2e-2,
                                       msg=lambda m: f"{op} {index}: {m}")


@needs_triton
def test_a_wrong_candidate_in_an_op_is_dropped_and_its_result_not_used(tuning_on_cpu, monkeypatch):
    from internvideo_fast.ops import linear_act, linear_act_ref, use_backend

    la_launch = importlib.import_module("internvideo_fast.ops.linear_act.launch")
    fwd_plans = la_launch._fwd_plans

    def with_a_wrong_plan(x, weight, bias, seed, y, pre, *rest):
        plans = fwd_plans(x, weight, bias, seed, y, pre, *rest)
        return plans + [("wrong", lambda: (plans[0][1](), y[-1].zero_()))]  # forgets the last row's values

    monkeypatch.setattr(la_launch, "_fwd_plans", with_a_wrong_plan)
    x, weight, bias = torch.randn(5, 40), torch.randn(100, 40) / 40**0.5, torch.randn(100)
    expected_warning = pytest.warns(TuningCandidateRejected, match="'wrong' disagrees with 'pointer'")
    with use_backend("triton"), expected_warning:
        y = linear_act(x, weight, bias, "gelu")
    torch.testing.assert_close(y, linear_act_ref(x, weight, bias, "gelu"))
    [tuner] = [tuner for name, tuner in tuning_on_cpu.items() if name == "linear_act_fwd"]
    [rejected] = tuner.rejected.values()
    assert list(rejected) == ["wrong"] and "differ beyond rounding" in rejected["wrong"]
    assert list(tuner.choices().values()) == ["cublas"]


# ----------------------------------------------------------------------------------------------------
# Candidates that break the CUDA context are named; IVF_AUTOTUNE_EXCLUDE leaves them out
# ----------------------------------------------------------------------------------------------------
def test_excluded_candidates_are_not_offered_but_the_default_always_is(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    monkeypatch.setenv("IVF_AUTOTUNE_EXCLUDE", "t:a; t:b ;other:c")  # a is t's default: kept
    tuner = LaunchTuner("t", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}))
    calls = []
    assert tuner.run("k", _recording_candidates(calls), GPU)[0] == "c"
    assert tuner.timings["k"] == {"a": 3.0, "c": 2.0}
    monkeypatch.setenv("IVF_AUTOTUNE_EXCLUDE", "t:*")
    assert tuner.run("k2", _recording_candidates([]), GPU)[0] == "a"  # only the default left: not timed
    assert "k2" not in tuner.timings


def _broken_device(monkeypatch, failing_label):
    """Candidate `failing_label` raises and leaves the (fake) device unusable, as an illegal memory access
    does to a CUDA context."""
    from internvideo_fast.ops.framework import autotuning

    broken = []
    monkeypatch.setattr(autotuning, "_device_usable", lambda device: not broken)

    def make(label):
        def launch():
            if label == failing_label:
                broken.append(label)
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return label.upper()
        return label, launch
    return [make(label) for label in ("a", "b", "c")]


def test_a_candidate_that_breaks_the_device_is_named_with_the_setting_that_skips_it(monkeypatch):
    from internvideo_fast.ops.framework import autotuning
    from internvideo_fast.ops.framework.autotuning import TuningCandidateCrashed

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    tuner = LaunchTuner("t", timer=lambda launch: float(len(launch())))
    with pytest.raises(TuningCandidateCrashed, match="candidate 'b' broke the CUDA context") as raised:
        tuner.run("k", _broken_device(monkeypatch, "b"), GPU)
    assert "IVF_AUTOTUNE_EXCLUDE='t:b'" in str(raised.value) and raised.value.pattern == "t:b"
    # A candidate that merely cannot run (the device still works) is skipped as before.
    monkeypatch.setattr(autotuning, "_device_usable", lambda device: True)
    tuner = LaunchTuner("t", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}))
    assert tuner.run("k", _recording_candidates([], failing=("b",)), GPU)[0] == "c"


def test_compile_mode_names_a_crashing_candidate_on_its_own_line(monkeypatch, capsys):
    """gpu-check's warming processes: the line lets the timing process run without that candidate."""
    from internvideo_fast.ops.framework.autotuning import CRASH_MARK, TuningCandidateCrashed

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("IVF_AUTOTUNE", "compile")
    tuner = LaunchTuner("t", timer=lambda launch: pytest.fail("nothing may be timed here"))
    with pytest.raises(TuningCandidateCrashed):
        tuner.run("k", _broken_device(monkeypatch, "c"), GPU)
    assert f"{CRASH_MARK}t:c\n" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# IVF_AUTOTUNE_CACHE: choices persist across processes (same GPU model, versions and kernel sources)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def choice_cache(monkeypatch, tmp_path):
    """IVF_AUTOTUNE_CACHE set to a fresh file; `new_process()` forgets what this process read."""
    from internvideo_fast.ops.framework import autotuning

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    import types

    path = tmp_path / "tuning" / "choices.json"  # its folder is made by the first write
    monkeypatch.setenv("IVF_AUTOTUNE_CACHE", str(path))
    monkeypatch.setattr(autotuning, "_CHOICE_CACHES", {})
    return types.SimpleNamespace(path=path, new_process=autotuning._CHOICE_CACHES.clear)


def _untimed(launch):
    raise AssertionError("a cached choice must not be timed")


def test_a_cached_choice_is_reused_by_the_next_process_without_timing(choice_cache):
    import json

    first = LaunchTuner("t", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}))
    assert first.run(("k", 64), _recording_candidates([]), GPU)[0] == "b"
    stored = json.loads(choice_cache.path.read_text())
    assert stored["choices"] == {"t": {"('k', 64)": "b"}}
    assert set(stored["context"]) == {"device", "torch", "triton", "kernels"}
    choice_cache.new_process()
    calls = []
    later = LaunchTuner("t", timer=_untimed)
    assert later.run(("k", 64), _recording_candidates(calls), GPU) == ("b", "B")
    assert calls == ["b"] and later.choices() == {("k", 64): "b"} and later.timings == {}


def test_choices_of_another_context_or_no_longer_offered_are_timed_again(choice_cache):
    import json

    LaunchTuner("t", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0})).run(
        "k", _recording_candidates([]), GPU)
    stored = json.loads(choice_cache.path.read_text())
    # The chosen candidate is no longer offered (excluded, or the candidate list changed).
    choice_cache.new_process()
    tuner = LaunchTuner("t", timer=_fake_timer({"a": 3.0, "c": 2.0}))
    assert tuner.run("k", [c for c in _recording_candidates([]) if c[0] != "b"], GPU)[0] == "c"
    assert json.loads(choice_cache.path.read_text())["choices"] == {"t": {"'k'": "c"}}
    # Another GPU model (or torch, Triton, kernel sources): the file's choices do not apply.
    choice_cache.path.write_text(json.dumps(dict(stored, context=dict(stored["context"], device="another GPU"))))
    choice_cache.new_process()
    tuner = LaunchTuner("t", timer=_fake_timer({"a": 1.0, "b": 3.0, "c": 2.0}))
    assert tuner.run("k", _recording_candidates([]), GPU)[0] == "a"
    assert json.loads(choice_cache.path.read_text()) == dict(stored, choices={"t": {"'k'": "a"}})


def test_processes_writing_the_cache_merge_their_choices(choice_cache):
    import json

    from internvideo_fast.ops.framework import autotuning

    one = LaunchTuner("one", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}))
    one.run("k", _recording_candidates([]), GPU)
    cache_of_process_one = autotuning._CHOICE_CACHES.copy()
    choice_cache.new_process()  # a second process, started before the first wrote anything more
    LaunchTuner("two", timer=_fake_timer({"a": 1.0, "b": 3.0, "c": 2.0})).run(
        "k", _recording_candidates([]), GPU)
    autotuning._CHOICE_CACHES.update(cache_of_process_one)
    one.run("k2", _recording_candidates([]), GPU)  # the first process again: keeps the second's entry
    assert json.loads(choice_cache.path.read_text())["choices"] == {
        "one": {"'k'": "b", "'k2'": "b"}, "two": {"'k'": "a"}}


def test_an_unwritable_cache_warns_and_tuning_goes_on(monkeypatch, tmp_path):
    from internvideo_fast.ops.framework import autotuning

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("IVF_AUTOTUNE", raising=False)
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("IVF_AUTOTUNE_CACHE", str(blocker / "choices.json"))  # its parent is a file
    monkeypatch.setattr(autotuning, "_CHOICE_CACHES", {})
    tuner = LaunchTuner("t", timer=_fake_timer({"a": 3.0, "b": 1.0, "c": 2.0}))
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        assert tuner.run("k", _recording_candidates([]), GPU)[0] == "b"
