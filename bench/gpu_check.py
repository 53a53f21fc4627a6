"""`make gpu-check`: everything a GPU can tell us, in one command that ends within 8 minutes.

Made for a machine with one GPU, no internet, and its own Python + torch + triton + CMake + ninja: it
creates no venv and downloads nothing. Stages, each in a subprocess with its own timeout:

1. build ``_C`` in place with CUDA for the present card (``setup.py build_ext --inplace``), unless an
   extension built for this card's architecture already imports (one built ahead elsewhere and carried);
2. ``pytest -m gpu`` over tests/, spread over several processes (Triton's compiles are CPU-bound), its
   whole log kept as gpu-tests.log (one line per test, so a run cut short still counts what ended);
3. warm the kernel caches: several processes (``IVF_AUTOTUNE=compile``) run the bench cases once, sharing
   them out, so every tuner candidate and compiled graph is in Triton's and Inductor's on-disk caches
   before the one timing process needs them (it would compile them one after another);
4. every registered GPU microbenchmark (``cases(device)`` in each bench/bench_*.py and e2e_*.py) against
   its baselines, the device's copy and matmul ceilings first, each module followed by its
   ``extra_rows(device)`` (figures beside the cases: the FFN's saved bytes, fc1's GEMM plans, the tuners'
   choices), then the host time per call (bench/host_overhead.py), and last each module's ``late_cases``
   (long sweeps: flash-attn's grid), so that a stage cut by its budget loses those first; every tuner's
   timings go with the rows.

It writes one JSON (card, driver, versions, every figure) into ``$OUT`` when set, else bench/results/ (a dry
run: build/gpu-check-dry-run/), draws the plots of bench/plot_results.py beside it when matplotlib is there,
and prints a short table last. ``--dry-run`` runs the same stages on CPU without a GPU (no build, test
collection only, the quick benchmark cases on CPU) to prove the script itself works.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
from common import run_stage  # noqa: E402  (bench/ is a folder of scripts, not a package)
# The whole run must end within 8 minutes; IVF_GPU_CHECK_BUDGET_S shortens it to fit the time at hand.
TOTAL_BUDGET_S = float(os.environ.get("IVF_GPU_CHECK_BUDGET_S", 450))
STAGE_BUDGET_S = {"build": 210, "tests": 190, "warm": 150, "bench": 450}
# Time each stage leaves for the stages after it, so a slow build or test run cannot starve the benchmarks.
RESERVE_S = {"build": 300, "tests": 200, "warm": 240, "bench": 0}
# Modules the cache-warming stage skips (nothing of ours to compile), and those whose cases it runs in one
# process only (each builds several models: every process building them would not fit on the card).
WARM_SKIP = ("bench_ceilings",)
WARM_WHOLE_MODULE_PREFIX = "e2e_"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONUNBUFFERED="1")


class Stages:
    """Runs stages against one deadline, recording each one's status, time and output tail."""

    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s
        self.results: dict[str, dict] = {}

    def run(self, name: str, command: list[str], env: dict[str, str] | None = None) -> dict:
        left = self.deadline - time.monotonic()
        reserve = min(RESERVE_S[name], TOTAL_BUDGET_S * 0.45)  # a shortened run keeps time for the bench
        timeout = max(5.0, min(STAGE_BUDGET_S[name], left - reserve))
        start = time.monotonic()
        print(f"[gpu-check] {name}: {' '.join(command)} (timeout {timeout:.0f} s)", flush=True)
        status, output = run_stage(command, ROOT, env or _env(), timeout)
        result = {"status": status, "seconds": round(time.monotonic() - start, 1), "tail": output[-4000:],
                  "output": output}
        self.results[name] = result
        print(f"[gpu-check] {name}: {status} in {result['seconds']} s", flush=True)
        if status != "ok":
            print(output[-4000:], flush=True)
        return result


def machine_info(dry_run: bool) -> dict:
    import torch
    import triton

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda_runtime": torch.version.cuda,
        "dry_run": dry_run,
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(card=properties.name, capability=f"{properties.major}.{properties.minor}",
                    sms=properties.multi_processor_count, memory_gib=round(properties.total_memory / 2**30, 1))
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = "unknown"
    else:
        info.update(card="none (CPU)", capability=None, driver=None)
    return info


def cuda_arch_list(capability: str) -> str:
    # Hopper's wgmma and TMA need the arch-specific target.
    return "9.0a" if capability == "9.0" else capability


def junit_counts(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def junit_slowest(path: Path, top: int = 15) -> list[list]:
    """The `top` slowest tests as [test id, seconds], slowest first (what to shorten when the stage
    outgrows its budget)."""
    if not path.exists():
        return []
    cases = ElementTree.parse(path).getroot().iter("testcase")
    timed = [[f"{case.get('classname')}::{case.get('name')}", round(float(case.get("time", 0)), 1)]
             for case in cases]
    return sorted(timed, key=lambda item: -item[1])[:top]


_OUTCOME = re.compile(r"\b(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
# A test id, parameters included: they may hold spaces (``test[(3, 2, 64, 64, 0.9)-cuda]``), so an id is not
# one whitespace-separated token (counting tokens merges such tests).
_TEST_ID = re.compile(r"(\S+::[^\s\[]+(?:\[[^\]]*\])?)")


def log_counts(log: str) -> dict[str, int]:
    """Test counts from pytest's verbose lines (``tests/x.py::test PASSED`` or, under xdist, ``[gw0] [ 5%]
    PASSED tests/x.py::test``), for a run cut short before it wrote its JUnit file; each test counted once."""
    outcomes: dict[str, str] = {}
    for line in log.splitlines():
        outcome, test_id = _OUTCOME.search(line), _TEST_ID.search(line)
        if outcome and test_id:
            outcomes[test_id.group(1)] = outcome.group(1)
    found = list(outcomes.values())
    counts = {"tests": len(found), "failures": found.count("FAILED"), "errors": found.count("ERROR"),
              "skipped": found.count("SKIPPED")}
    counts["passed"] = found.count("PASSED")
    if collected := re.search(r"\[(\d+) items?\]|collected (\d+) items?", log):
        # What a cut-short run did not finish: started (a bare "file::test" line under -v) or never reached.
        counts["collected"] = int(collected.group(1) or collected.group(2))
        started = {test_id.group(1) for line in log.splitlines() if (test_id := _TEST_ID.search(line))}
        counts["unfinished"] = sorted(started - outcomes.keys())
        counts["not_reached"] = counts["collected"] - len(started)
    return counts


def prebuilt_extension(capability: str) -> str | None:
    """The architectures of an already built ``_C`` with CUDA code for this card, or None (not built, CPU
    only, other architectures, or it does not load here, e.g. built against another torch)."""
    probe = ("import json, internvideo_fast._extension as e; "
             "print(json.dumps([bool(e.HAS_C and e._C.with_cuda), e.CUDA_ARCHS, "
             "bool(e.HAS_C and getattr(e._C, 'with_cutlass_sm90', 0))]))")
    try:
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=120)
        with_cuda, archs, with_cutlass = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    wanted = cuda_arch_list(capability).replace(".", "")  # CMake spells 9.0a as 90a (or 90a-real)
    built = [arch.split("-")[0] for arch in archs.replace(".", "").replace(";", " ").split()]
    # CUTLASS's kernels need its headers at build time, which the GPU machine may lack: say if they are in.
    return f"{archs}{', with CUTLASS' if with_cutlass else ''}" if with_cuda and wanted in built else None


def gpu_test_workers() -> int:
    """xdist workers for the GPU tests: Triton compiles are CPU-bound and single-threaded, so one per core
    but two (8 workers on 16 cores need over 190 s); the card has room for them all."""
    if importlib.util.find_spec("xdist") is None:
        return 1
    return max(1, min(14, (os.cpu_count() or 2) - 2))


# Benchmarks run in this order, the rest after them alphabetically: what the open work needs measured comes
# first, so that a run cut short by its budget still has it (the first call of each shape also compiles and
# times the tuners' candidates).
BENCH_FIRST = ("bench_ceilings", "bench_linear_act", "bench_dropout_add_layer_norm", "bench_cross_attention",
               "e2e_train")


def bench_modules() -> list[Path]:
    modules = sorted([*BENCH.glob("bench_*.py"), *BENCH.glob("e2e_*.py")])
    rank = {name: index for index, name in enumerate(BENCH_FIRST)}
    return sorted(modules, key=lambda path: (rank.get(path.stem, len(rank)), path.stem))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def warm_kernel_cache(device_name: str, quick: bool, shard: int, shards: int) -> None:
    """One cache-warming process (``IVF_AUTOTUNE=compile``): runs its share of the bench cases once, so that
    every tuner candidate and torch.compile graph they reach is compiled into the on-disk caches (Triton's,
    Inductor's) before the bench stage times anything. Shards share the micro-benchmarks case by case; an
    e2e module goes whole to one shard."""
    import torch

    from internvideo_fast.ops.framework.autotuning import TuningCandidateCrashed

    os.environ["IVF_AUTOTUNE"] = "compile"
    sys.path.insert(0, str(BENCH))
    device = torch.device(device_name)
    ran = failed = 0
    for module_index, path in enumerate(bench_modules()):
        whole = path.stem.startswith(WARM_WHOLE_MODULE_PREFIX)
        if path.stem in WARM_SKIP or (whole and module_index % shards != shard):
            continue
        try:
            module = _load(path)
            cases = [*(module.cases(device, quick=quick) if hasattr(module, "cases") else []),
                     *(module.late_cases(device, quick=quick) if hasattr(module, "late_cases") else [])]
        except Exception as error:  # noqa: BLE001 - the bench stage reports it
            print(f"[warm {shard}] {path.stem}: {type(error).__name__}: {error}"[:300], flush=True)
            continue
        for index, case in enumerate(cases):
            if whole or index % shards == shard:
                try:
                    case.fn()
                    ran += 1
                except TuningCandidateCrashed as crash:
                    # The CUDA context is gone: nothing more can run here. The tuner printed the candidate's
                    # crash line, from which the bench stage is told to leave it out.
                    print(f"[warm {shard}] stopped: {crash}"[:500], flush=True)
                    return
                except Exception as error:  # noqa: BLE001
                    failed += 1
                    what = f"{case.op} {case.size} {case.provider}"
                    print(f"[warm {shard}] {what}: {type(error).__name__}"[:300], flush=True)
        del cases
        if hasattr(module, "extra_rows") and module_index % shards == shard:
            try:
                module.extra_rows(device, quick=quick)
            except Exception as error:  # noqa: BLE001
                print(f"[warm {shard}] {path.stem} extra rows: {type(error).__name__}"[:300], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"[warm {shard}] {ran} cases ran, {failed} failed", flush=True)


def warm_shards(device_name: str, quick: bool, shards: int) -> int:
    """Runs `shards` warming processes at once (compiles are CPU-bound and single-threaded); their output
    goes to this process's, which the stage keeps."""
    command = [sys.executable, str(Path(__file__)), "--warm-shard", device_name, "--shards", str(shards)]
    quick_flag = ["--quick"] if quick else []
    processes = [subprocess.Popen([*command, "--shard", str(shard), *quick_flag], cwd=ROOT, env=_env())
                 for shard in range(shards)]
    return max(process.wait() for process in processes)


def warm_workers() -> int:
    return max(1, min(12, (os.cpu_count() or 2) - 2))


def _write_json_atomically(path: Path, payload: dict) -> None:
    """A stage killed mid-write must leave the previous complete file, not half of a new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload))
    os.replace(partial, path)


# internvideo_fast.ops.framework.autotuning.CRASH_MARK (a test keeps them equal): this process does not
# import the package, which the device's Python finds only through the stages' PYTHONPATH.
CRASH_MARK = "[autotune] crashed: "


def crashed_candidates(warm_output: str) -> list[str]:
    """The "tuner:label" of each candidate that broke a warming process's CUDA context (the tuner's crash
    lines), once each, in order."""
    found = (line.split(CRASH_MARK, 1)[1].strip() for line in warm_output.splitlines() if CRASH_MARK in line)
    return list(dict.fromkeys(found))


def rejected_candidates(extras: list[dict]) -> list[str]:
    """Tuning candidates whose outputs disagreed with their default's (never used, but a kernel bug: the
    check fails on them), one "tuner key: label (why)" line each, from the bench's tuning rows."""
    return [f"{row['tuner']} {row['key']}: {label} ({why})"
            for row in extras if row.get("op") == "tuning" for label, why in row.get("rejected", {}).items()]


def run_benchmarks(device_name: str, quick: bool, out_file: Path) -> None:
    """The bench stage's body (run in its own process): every module's cases, timed, into out_file."""
    import torch

    sys.path.insert(0, str(BENCH))
    import common

    from internvideo_fast.ops.framework.autotuning import tuning_report

    device = torch.device(device_name)
    timer = common.time_cuda_ms if device.type == "cuda" else common.time_cpu_ms
    if quick and device.type == "cpu":  # the dry run proves the script: two timed calls per case are enough
        timer = lambda fn: common.time_cpu_ms(fn, min_seconds=0.0, min_runs=2)  # noqa: E731
    rows, extras = [], []
    late = []  # modules whose late_cases run after every module's cases and the host-time rows
    for path in bench_modules():
        try:
            module = _load(path)
        except Exception as error:  # noqa: BLE001
            rows.append({"op": path.stem, "size": "-", "provider": "-", "error": f"import: {type(error).__name__}: {error}"})
            continue

        # After every case: the rows of the modules before this one and this module's so far.
        def save(partial_rows, done=tuple(rows)):
            _write_json_atomically(out_file, {"rows": [*done, *partial_rows],
                                              "extras": extras + tuning_report()})

        if hasattr(module, "cases"):
            try:
                rows += common.measure(module.cases(device, quick=quick), timer, on_row=save)
            except Exception as error:  # noqa: BLE001 - one broken module must not hide the others
                rows.append({"op": path.stem, "size": "-", "provider": "-", "error": f"{type(error).__name__}: {error}"})
        if hasattr(module, "extra_rows"):
            try:
                extras += module.extra_rows(device, quick=quick)
            except Exception as error:  # noqa: BLE001
                extras.append({"op": path.stem, "error": f"{type(error).__name__}: {error}"[:300]})
        if hasattr(module, "late_cases"):
            late.append((path.stem, module))
        # A timeout keeps what was measured, with the tuners' choices and timings so far.
        _write_json_atomically(out_file, {"rows": rows, "extras": extras + tuning_report()})
    # Host time per call of the fused ops: eager fast path against custom-op dispatch (bench/host_overhead.py).
    try:
        import host_overhead

        extras += [dict(row, op=f"host overhead: {row['op']}") for row in host_overhead.measure(
            device_name, calls=20 if quick else 100)]
        # Where that host time goes: the primitives' costs and each op's profile.
        extras += [host_overhead.primitive_costs(device_name, calls=20 if quick else 200),
                   *host_overhead.profile(device_name, calls=10 if quick else 100)]
    except Exception as error:  # noqa: BLE001
        extras.append({"op": "host_overhead", "error": f"{type(error).__name__}: {error}"[:300]})
    _write_json_atomically(out_file, {"rows": rows, "extras": extras + tuning_report()})
    # The long sweeps last (flash-attn's grid): a budget cut then costs them, not the rows above.
    for stem, module in late:
        done = tuple(rows)

        def save(partial_rows, done=done):
            payload = {"rows": [*done, *partial_rows], "extras": extras + tuning_report()}
            _write_json_atomically(out_file, payload)

        try:
            rows += common.measure(module.late_cases(device, quick=quick), timer, on_row=save)
        except Exception as error:  # noqa: BLE001
            error_text = f"{type(error).__name__}: {error}"
            rows.append({"op": stem, "size": "-", "provider": "-", "error": error_text})
        _write_json_atomically(out_file, {"rows": rows, "extras": extras + tuning_report()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build, test and benchmark on one GPU within 8 minutes.")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: prove the script works on CPU")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: $OUT, else bench/results/")
    parser.add_argument("--bench-only", metavar="DEVICE", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bench-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warm", metavar="DEVICE", help=argparse.SUPPRESS)
    parser.add_argument("--warm-shard", metavar="DEVICE", help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bench_only:
        run_benchmarks(args.bench_only, args.quick, args.bench_out)
        return 0
    if args.warm:
        return warm_shards(args.warm, args.quick, args.shards)
    if args.warm_shard:
        warm_kernel_cache(args.warm_shard, args.quick, args.shard, args.shards)
        return 0

    default_dir = ROOT / "build" / "gpu-check-dry-run" if args.dry_run else BENCH / "results"
    out_dir = args.out_dir or (Path(os.environ["OUT"]) if os.environ.get("OUT") else default_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.dry_run)
    if not args.dry_run and info["capability"] is None:
        print("[gpu-check] no CUDA device found; use --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    stages = Stages(TOTAL_BUDGET_S)
    python = sys.executable

    if args.dry_run:
        stages.results["build"] = {"status": "skipped (dry run)", "seconds": 0.0, "tail": ""}
    elif archs := prebuilt_extension(info["capability"]):
        stages.results["build"] = {"status": f"skipped (built for {archs})", "seconds": 0.0, "tail": ""}
    else:
        env = dict(_env(), TORCH_CUDA_ARCH_LIST=cuda_arch_list(info["capability"]), MAX_JOBS=str(os.cpu_count() or 4))
        stages.run("build", [python, "setup.py", "build_ext", "--inplace"], env)

    junit = Path(tempfile.mkdtemp()) / "gpu-tests.xml"
    # -v: one line per test as it ends, so that a run cut short by its timeout still tells what passed (the
    # dry run lists the collected tests, one "file::test" line each, with -q).
    # --continue-on-collection-errors: a test module that cannot import on that machine (a missing optional
    # package) is reported without stopping every other GPU test.
    test_command = [python, "-m", "pytest", "tests", "-m", "gpu", "-q" if args.dry_run else "-v", "-rfE",
                    "-p", "no:cacheprovider", "--continue-on-collection-errors", f"--junitxml={junit}"]
    if args.dry_run:
        test_command.append("--collect-only")
    elif (workers := gpu_test_workers()) > 1:
        test_command += ["-n", str(workers)]
    tests = stages.run("tests", test_command)
    tests["counts"] = junit_counts(junit) or dict(log_counts(tests.get("output", "")), from_log=True)
    tests["slowest"] = junit_slowest(junit)
    (out_dir / "gpu-tests.log").write_text(tests.get("output", ""))
    if args.dry_run:
        tests["collected"] = sum(1 for line in tests["tail"].splitlines() if "::" in line)

    bench_file = out_dir / "bench-rows.json"
    bench_file.unlink(missing_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    # Compile what the bench will run, in parallel, so its one timing process does not compile serially.
    shards = 2 if args.dry_run else warm_workers()
    warm = stages.run("warm", [python, str(Path(__file__)), "--warm", device, "--shards", str(shards)]
                      + (["--quick"] if args.dry_run else []))
    bench_env = _env()
    if crashed := crashed_candidates(warm.get("output", "")):
        # A candidate that broke a warming process's CUDA context would end the timing process too.
        warm["crashed_candidates"] = crashed
        excluded = [bench_env.get("IVF_AUTOTUNE_EXCLUDE", ""), *crashed]
        bench_env["IVF_AUTOTUNE_EXCLUDE"] = ";".join(pattern for pattern in excluded if pattern)
    bench_command = [python, str(Path(__file__)), "--bench-only", device, "--bench-out", str(bench_file)]
    stages.run("bench", bench_command + (["--quick"] if args.dry_run else []), bench_env)
    measured = json.loads(bench_file.read_text()) if bench_file.exists() else {}
    rows, extras = measured.get("rows", []), measured.get("extras", [])
    bench_file.unlink(missing_ok=True)

    for result in stages.results.values():
        result.pop("output", None)
    report = {"machine": info, "stages": stages.results, "benchmarks": rows, "extras": extras}
    card = re.sub(r"[^A-Za-z0-9]+", "-", info.get("card") or "cpu").strip("-").lower()
    name = f"gpu-check-{info['date'][:10]}-{card}{'-dry-run' if args.dry_run else ''}.json"
    (out_dir / name).write_text(json.dumps(report, indent=1))

    sys.path.insert(0, str(BENCH))
    import common
    import plot_results

    try:
        plots = plot_results.plot_report(out_dir / name, out_dir)
    except ImportError as error:  # matplotlib is optional
        plots = []
        print(f"[gpu-check] no plots: {error}")

    print(f"\n== gpu-check on {info['card']} (driver {info.get('driver')}, torch {info['torch']}, triton {info['triton']})")
    for stage, result in stages.results.items():
        extra = f" {result['counts']}" if result.get("counts") else ""
        print(f"{stage:<6} {result['status']:<24} {result['seconds']:>7.1f} s{extra}")
    print(common.format_rows(rows))
    for extra in extras:
        print(json.dumps(extra))
    try:  # the training steps side by side: clips/s, MFU against the measured matmul rate, peak memory
        print(_load(BENCH / "e2e_train.py").summary(rows, extras))
    except Exception as error:  # noqa: BLE001 - the JSON above has every figure
        print(f"[gpu-check] no train-step summary: {type(error).__name__}: {error}")
    print(f"written: {out_dir / name}" + "".join(f", {plot.name}" for plot in plots))
    failed = [s for s, r in stages.results.items() if r["status"] not in ("ok",) and not r["status"].startswith("skipped")]
    if rejected := rejected_candidates(extras):
        print(f"[gpu-check] {len(rejected)} tuning candidates disagreed with their default and were dropped:")
        print("\n".join(f"  {line}" for line in rejected))
    if crashed := stages.results["warm"].get("crashed_candidates"):
        print(f"[gpu-check] {len(crashed)} tuning candidates broke the CUDA context and were not timed:")
        print("\n".join(f"  {line}" for line in crashed))
    return 1 if failed or rejected or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
