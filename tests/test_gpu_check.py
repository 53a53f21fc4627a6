"""`make gpu-check`'s script, in its dry mode on CPU: every stage runs and one JSON comes out."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = list(tmp_path.glob("gpu-check-*-dry-run.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["machine"]["torch"] and report["machine"]["dry_run"] is True
    assert report["stages"]["tests"]["status"] == "ok" and report["stages"]["tests"]["collected"] > 0
    assert report["stages"]["bench"]["status"] == "ok"
    warm = report["stages"]["warm"]
    assert warm["status"] == "ok" and "[warm 0]" in warm["tail"] and "[warm 1]" in warm["tail"], warm
    providers = {(row["op"], row["provider"]) for row in report["benchmarks"]}
    assert ("tube_mask", "official-numpy") in providers and ("tube_mask", "reference") in providers
    assert all("ms" in row and "error" not in row for row in report["benchmarks"])
    assert ("ceiling copy", "torch") in providers and ("ceiling matmul", "torch") in providers
    # The whole training step of every provider that runs without a GPU, its matmul rate and breakdown.
    assert {("train_step_pretrain", p) for p in ("official", "reference", "ours", "ours graphed")} <= providers
    assert ("train_step_finetune", "ours graphed") in providers
    _assert_train_step_extras(report["extras"])
    assert any(row["op"] == "ffn memory" for row in report["extras"])  # extra_rows of bench_linear_act
    host = [row for row in report["extras"] if row["op"].startswith("host overhead: ")]
    assert len(host) == 4 and all(row["eager_path_us"] > 0 and row["custom_op_us"] > 0 for row in host)
    primitives = [row for row in report["extras"] if row["op"] == "host primitives"]
    assert len(primitives) == 1 and primitives[0]["python_autograd_fwd_bwd_us"] > 0, primitives
    profiles = [row for row in report["extras"] if row["op"].startswith("host profile: ")]
    assert len(profiles) == 4 and all(row["top"] and row["top"][0]["own_us_per_call"] > 0 for row in profiles)
    # The table is printed last.
    assert "written:" in result.stdout.strip().splitlines()[-1]


def _assert_train_step_extras(extras):
    rate = [row for row in extras if row["op"] == "train matmul rate"]
    assert len(rate) == 1 and rate[0]["TFLOP/s"] > 0
    breakdown = [row for row in extras if row["op"] == "train step breakdown"]
    assert len(breakdown) == 1 and breakdown[0]["gemm_floor_ms"] > 0 and breakdown[0]["gemms"] > 0, breakdown
    assert {"GEMMs", "optimizer", "LayerNorm"} <= set(breakdown[0]["groups_ms"])


def test_gpu_focus_dry_run(tmp_path):
    """bench/gpu_focus.py --dry-run: every group on CPU, the train-step rows among them, one JSON."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_focus.py"), "--dry-run"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ, OUT=str(tmp_path)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = tmp_path.glob("gpu-check-*-focus-dry-run.json")
    report = json.loads(path.read_text())
    steps = {row["provider"]: row for row in report["benchmarks"] if row["op"] == "train_step_pretrain"}
    assert set(steps) == {"official", "reference", "ours", "ours graphed"}
    assert all(row["ms"] > 0 for row in steps.values())
    _assert_train_step_extras(report["extras"])
    assert "written:" in result.stdout.strip().splitlines()[-1]


def test_step_breakdown_groups_kernels_by_what_they_do(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from profile_step import group_of

    expected = {
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "GEMMs",
        "_linear_act_fwd_kernel": "GEMMs",
        "cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm>": "GEMMs",
        "aten::addmm": "GEMMs",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop": "attention",
        "_dropout_add_layer_norm_bwd_kernel": "LayerNorm",
        "aten::native_layer_norm": "LayerNorm",
        "mae_targets_kernel": "loss and targets",
        "tube_mask_kernel": "masking / gathers",
        "CatArrayBatchedCopy_contig": "masking / gathers",
        "void at::native::(anonymous namespace)::fused_adamw_kernel": "optimizer",
        "multi_tensor_apply_kernel<TensorListMetadata<1>, UnaryOpFunctor>": "optimizer",
        "void at::native::bfloat16_copy_kernel_cuda": "copies",
        "Memcpy DtoD (Device -> Device)": "copies",
        "void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>": "other elementwise",
    }
    assert {name: group_of(name) for name in expected} == expected


def test_the_gemm_floor_replays_the_steps_gemm_shapes(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from profile_step import gemms_alone, record_gemms

    x, w = torch.randn(5, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    gemms = record_gemms(lambda: torch.nn.functional.linear(x, w).sum().backward())
    assert [name for name, _ in gemms] == ["mm", "mm", "mm"]  # forward, and both gradients
    assert gemms[0][1][0][0] == (5, 3)
    gemms_alone(gemms, torch.device("cpu"))()


def test_e2e_summary_gives_clips_mfu_and_memory(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import e2e_train

    rows = [{"op": "train_step_pretrain", "size": "videomae,B=32,16x224x224", "provider": "ours graphed",
             "ms": 20.0, "TFLOP/s": 314.0, "speedup": 2.5}]
    extras = [{"op": "train matmul rate", "TFLOP/s": 785.0},
              {"op": "train step memory", "step": "train_step_pretrain", "size": "videomae,B=32,16x224x224",
               "provider": "ours graphed", "peak_GiB": 30.5}]
    line = e2e_train.summary(rows, extras).splitlines()[1]
    assert "1600.0" in line and "40.0%" in line and "30.5" in line and "2.50x" in line


def test_launch_probe_kernel_computes_its_rows(monkeypatch):
    """bench/launch_probe's kernel (whose launches host_overhead times on a GPU) is a real kernel: under the
    interpreter it writes x * scale + shift into the first row of each program."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from launch_probe import scale_rows_kernel

    x = torch.randn(8, 40)
    y = torch.full_like(x, float("nan"))
    stats = torch.empty(8)
    scale_rows_kernel[(4,)](x, y, stats, stats, stats, stats, 8, 40, 40, 40, 2, 8, 1, 0, 2.0, 0.5,
                            BLOCK_D=64, HAS_WEIGHT=True, HAS_BIAS=True, HAS_STATS=False)
    torch.testing.assert_close(y[0::2], x[0::2] * 2.0 + 0.5)
    assert y[1::2].isnan().all()


def test_bench_modules_own_tests_pass():
    """The bench modules' own tests: their cases called once, the attention tile sweep under the
    interpreter, the tuning and memory rows (`make bench` runs only the timed cases)."""
    import os

    result = subprocess.run(
        [sys.executable, "-m", "pytest", ".", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-o", "python_files=bench_*.py", "--benchmark-disable"],
        cwd=ROOT / "bench", capture_output=True, text=True, timeout=600,
        # bench/ is the working folder: this checkout's package comes first, whichever one is installed.
        env=dict(os.environ, TRITON_INTERPRET="1",
                 PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-1000:]


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    import torch

    if not torch.cuda.is_available():
        assert result.returncode == 2 and "--dry-run" in result.stderr


def test_plots_of_a_committed_gpu_result(tmp_path):
    """bench/plot_results.py draws the three plots from the H100 result file committed in bench/results."""
    import importlib.util

    import pytest

    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("plot_results", ROOT / "bench" / "plot_results.py")
    plot_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_results)
    result = ROOT / "bench" / "results" / "gpu-check-2026-11-26-nvidia-h100-80gb-hbm3-run2.json"
    written = plot_results.plot_report(result, tmp_path)
    suffixes = ("-cross-attention-grid.png", "-cross-attention-internvideo.png", "-ffn.png")
    assert len(written) == 3 and all(p.name.endswith(end) for p, end in zip(written, suffixes)), written
    assert all(p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_plots_add_a_row_for_cuda_graph_replays(tmp_path):
    """With `... graph` rows (FFN, LayerNorm and attention replayed from CUDA graphs) a plot gets a second
    row of panels, so it is taller than the same plot without them."""
    import importlib.util
    import json

    import pytest

    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("plot_results", ROOT / "bench" / "plot_results.py")
    plot_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_results)
    report = json.loads((ROOT / "bench" / "results" / "gpu-check-2026-11-27-nvidia-h100-80gb-hbm3-run4.json")
                        .read_text())
    report["benchmarks"] = [row for row in report["benchmarks"] if row["op"].startswith("cross_attention")]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(report))
    graphed_rows = [dict(row, op=row["op"] + " graph") for row in report["benchmarks"]]
    graphed = tmp_path / "graphed.json"
    graphed.write_text(json.dumps(dict(report, benchmarks=report["benchmarks"] + graphed_rows)))
    from PIL import Image

    heights = []
    for path, out in ((plain, tmp_path / "a"), (graphed, tmp_path / "b")):
        out.mkdir()
        (written,) = plot_results.plot_report(path, out)
        heights.append(Image.open(written).size[1])
    assert heights[1] > 1.5 * heights[0]


def test_test_counts_from_a_log_cut_short():
    """A GPU test run killed by its timeout writes no JUnit file: the verbose log still counts each test
    once (plain and xdist line formats; the failure summary repeats a test without counting it twice)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    log = """
[gw0] [  1%] PASSED tests/test_a.py::test_one[bf16]
[gw1] [  2%] FAILED tests/test_a.py::test_two
tests/test_b.py::test_three SKIPPED (needs DALI)                         [  3%]
tests/test_b.py::test_four PASSED                                         [  4%]
[gw1] [  5%] ERROR tests/test_c.py::test_five
[gw0] [  6%] PASSED tests/test_e.py::test_shape[(3, 2, 64, 0.9)-cuda]
tests/test_e.py::test_shape[(3, 2, 64, 0.9)-triton] PASSED                [  7%]
FAILED tests/test_a.py::test_two - AssertionError: out
"""
    assert gpu_check.log_counts(log) == {"tests": 7, "failures": 1, "errors": 1, "skipped": 1, "passed": 4}
    # Cut short under xdist: how many were collected, which started without an outcome, how many never ran.
    cut = ("8 workers [10 items]\ntests/test_a.py::test_one[bf16] \ntests/test_d.py::test_six \n"
           "tests/test_e.py::test_shape[(1, 1, 8, 0.5)-cuda] \n" + log)
    assert gpu_check.log_counts(cut) == {"tests": 7, "failures": 1, "errors": 1, "skipped": 1, "passed": 4,
                                         "collected": 10, "not_reached": 1, "unfinished": [
                                             "tests/test_d.py::test_six",
                                             "tests/test_e.py::test_shape[(1, 1, 8, 0.5)-cuda]"]}
    assert gpu_check.log_counts("collected 0 items") == {"tests": 0, "failures": 0, "errors": 0, "skipped": 0,
                                                          "passed": 0, "collected": 0, "unfinished": [],
                                                          "not_reached": 0}


def test_slowest_tests_from_the_junit_file(tmp_path):
    """The test stage records its slowest tests (from pytest's JUnit file), slowest first, and nothing when
    the stage was killed before pytest wrote the file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    junit = tmp_path / "tests.xml"
    junit.write_text("""<testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_a" name="test_quick" time="0.31"/>
<testcase classname="tests.test_b" name="test_slow[bf16]" time="41.27"/>
<testcase classname="tests.test_a" name="test_middle" time="7.04"><skipped message="no"/></testcase>
</testsuite></testsuites>""")
    assert gpu_check.junit_slowest(junit, top=2) == [["tests.test_b::test_slow[bf16]", 41.3],
                                                     ["tests.test_a::test_middle", 7.0]]
    assert gpu_check.junit_slowest(tmp_path / "missing.xml") == []


def test_measure_hands_over_each_row_as_it_is_timed(monkeypatch):
    """The bench stage saves after every case, so a stage killed by its timeout keeps what it timed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    common = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_common", common)  # dataclasses look their module up
    spec.loader.exec_module(common)
    times = {"eager": 2.0, "ours": 1.0}
    cases = [common.Case("op", "s", provider, lambda provider=provider: provider,
                         baseline=provider == "eager") for provider in times]
    seen = []
    rows = common.measure(cases, lambda fn: times[fn()], on_row=lambda partial: seen.append(
        [(row["provider"], row.get("speedup")) for row in partial]))
    assert seen == [[("eager", 1.0)], [("eager", 1.0), ("ours", 2.0)]]
    assert [row["speedup"] for row in rows] == [1.0, 2.0]


def test_rejected_tuning_candidates_are_listed_from_the_tuning_rows():
    """A candidate the tuner dropped for disagreeing with its default fails gpu-check, named."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    extras = [
        {"op": "tuning", "tuner": "linear_act_fwd", "key": "(1,)", "chosen": "pointer",
         "candidates_ms": {"pointer": 2.0, "tma:x": 1.0}, "rejected": {"tma:x": "output 0: 3 of 9 differ"}},
        {"op": "tuning", "tuner": "cross_attention_fwd", "key": "(2,)", "chosen": "a",
         "candidates_ms": {"a": 1.0}},
        {"op": "host overhead: fused_mlp", "custom_op_us": 1.0},
    ]
    assert gpu_check.rejected_candidates(extras) == ["linear_act_fwd (1,): tma:x (output 0: 3 of 9 differ)"]
    assert gpu_check.rejected_candidates(extras[1:]) == []


def test_cuda_graphed_warms_up_captures_once_then_replays(monkeypatch):
    """bench/common.cuda_graphed with torch.cuda's stream and graph calls faked (no GPU here): `warmup`
    eager calls on a side stream, one call under capture, then only replays."""
    import contextlib
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_common_graphs", ROOT / "bench" / "common.py")
    common = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_common_graphs", common)
    spec.loader.exec_module(common)
    events = []

    class FakeStream:
        def wait_stream(self, other):
            events.append("wait")

    class FakeGraph:
        def replay(self):
            events.append("replay")

    @contextlib.contextmanager
    def in_context(name):
        events.append(f"enter {name}")
        yield
        events.append(f"exit {name}")

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: in_context("side stream"))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: in_context("capture"))
    replay = common.cuda_graphed(lambda: events.append("call"), warmup=2)
    assert events == []  # nothing runs before the first timed call
    replay()
    replay()
    assert events == ["wait", "enter side stream", "call", "call", "exit side stream", "wait",
                      "enter capture", "call", "exit capture", "replay", "replay"]


def test_crashed_candidates_from_the_warm_stage_output():
    """Each warming process that a candidate's device fault stopped printed the tuner's crash line; the
    bench stage is run without those candidates."""
    import importlib.util

    from internvideo_fast.ops.framework.autotuning import CRASH_MARK

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.CRASH_MARK == CRASH_MARK
    output = (f"[warm 0] 12 cases ran, 0 failed\n{CRASH_MARK}linear_act_fwd:tma:BLOCK_M=128,w8,s3\n"
              f"[warm 3] stopped: tuner ...\n{CRASH_MARK}linear_act_fwd:tma:BLOCK_M=128,w8,s3\n"
              f"{CRASH_MARK}cross_attention_bwd:atomic:dkdv=M64_N128_w8_s2\n")
    assert gpu_check.crashed_candidates(output) == [
        "linear_act_fwd:tma:BLOCK_M=128,w8,s3", "cross_attention_bwd:atomic:dkdv=M64_N128_w8_s2"]
    assert gpu_check.crashed_candidates("[warm 0] 12 cases ran, 0 failed\n") == []


def test_fc1_gemm_plans_of_the_bench_compute_fc1(monkeypatch):
    """bench_linear_act.gemm_rows times fc1's plans on CUDA only; here each plan runs once (ours in the
    Triton interpreter) and must compute GELU(x @ w.T + b), so the CUDA-only timing loop meets no surprise."""
    import importlib

    import torch
    import torch.nn.functional as F

    from helpers import CPU_TRITON

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    bench_linear_act = importlib.import_module("bench_linear_act")
    x, w, b = torch.randn(37, 24), torch.randn(40, 24) / 24**0.5, torch.randn(40)
    plans, (y, pre) = bench_linear_act.fc1_plans(x, w, b)
    assert "pointer" in plans and "cublas" in plans  # the tuner's default and its cuBLAS plan
    expected_pre = torch.addmm(b, x, w.t())
    for label, fn in plans.items():
        if label.startswith("cublas addmm"):
            expected = F.gelu(expected_pre) if label.endswith("gelu") else expected_pre
            torch.testing.assert_close(fn(), expected)
        elif CPU_TRITON:
            y.fill_(float("nan"))
            pre.fill_(float("nan"))
            fn()
            torch.testing.assert_close(pre, expected_pre, rtol=1e-4, atol=1e-4, msg=label)
            torch.testing.assert_close(y, F.gelu(expected_pre), rtol=1e-4, atol=1e-4, msg=label)


def test_late_cases_run_after_every_module_and_the_host_rows(tmp_path, monkeypatch):
    """The bench stage times each module's `cases`, then the host-time rows, then every `late_cases` (the
    long sweeps), saving after each: a stage cut by its budget loses the sweeps first."""
    import importlib.util
    import json
    import types

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    (tmp_path / "bench_first.py").write_text(
        "from common import Case\n"
        "def cases(device, quick=False):\n"
        "    return [Case('early', 's', 'p', lambda: None, baseline=True)]\n"
        "import sys\n"
        "def late_cases(device, quick=False):\n"
        "    timed = lambda: sys.modules['host_overhead'].order.append('late')\n"
        "    return [Case('late', 's', 'p', timed, baseline=True)]\n")
    (tmp_path / "bench_second.py").write_text(
        "from common import Case\n"
        "def cases(device, quick=False):\n"
        "    return [Case('second', 's', 'p', lambda: None, baseline=True)]\n")
    monkeypatch.setattr(gpu_check, "bench_modules",
                        lambda: [tmp_path / "bench_first.py", tmp_path / "bench_second.py"])
    order = []
    measure = lambda name, calls: order.append("host") or [{"op": "x"}]  # noqa: E731
    host = types.SimpleNamespace(order=order, measure=measure)
    monkeypatch.setitem(sys.modules, "host_overhead", host)
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    out = tmp_path / "rows.json"
    gpu_check.run_benchmarks("cpu", True, out)
    measured = json.loads(out.read_text())
    assert [row["op"] for row in measured["rows"]] == ["early", "second", "late"]
    assert order[0] == "host" and set(order[1:]) == {"late"}  # the host rows before the late cases
    assert any(row["op"] == "host overhead: x" for row in measured["extras"])


def test_profile_cutlass_says_what_it_needs_without_a_gpu():
    """bench/profile_cutlass.py imports and, without a CUDA device, exits 2 with a message (not a trace)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "profile_cutlass.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "needs a GPU" in result.stderr
