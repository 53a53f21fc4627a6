"""Shared by the microbenchmarks: one case list per op, timed by pytest-benchmark on CPU (`make bench`)
and by CUDA events in `make gpu-check`, so both measure the same calls."""

from __future__ import annotations

import dataclasses
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable


@dataclasses.dataclass
class Case:
    """One timed call: `fn` runs `provider`'s implementation of `op` at `size`. Within an (op, size)
    group, the case marked `baseline` is what the others' speedups are measured against."""

    op: str
    size: str
    provider: str
    fn: Callable[[], object]
    baseline: bool = False
    bytes_moved: int | None = None  # for GB/s
    flops: int | None = None  # for TFLOP/s

    @property
    def group(self) -> str:
        return f"{self.op} {self.size}"


def time_cpu_ms(fn: Callable[[], object], min_seconds: float = 0.2, min_runs: int = 5) -> float:
    fn()  # warm up
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_cuda_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def cuda_graphed(fn: Callable[[], object], warmup: int = 3) -> Callable[[], None]:
    """`fn` captured into one CUDA graph on the first call, replayed on every call.

    Before the capture `fn` runs `warmup` times on a side stream (as torch.cuda.graph requires), which also
    lets the run-time tuners time their candidates and Triton compile. A replay is one launch with no
    Python, so its time is the kernels' own: the wall-clock view of an op that is host-bound when called
    eagerly (bench/results/NOTES.md). Tensors `fn` allocates come from the graph's pool; gradients
    accumulate into the same `.grad` tensors on every replay. Fails (a reported row) where `fn` syncs with
    the host."""
    graph = None

    def replay() -> None:
        nonlocal graph
        if graph is None:
            import torch

            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured):
                fn()
            graph = captured
        graph.replay()

    return replay


def measure(
    cases: list[Case],
    timer: Callable[[Callable[[], object]], float],
    on_row: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Time every case; add each one's speedup over its group's baseline, measured in the same run.
    `on_row` gets the rows so far after each case (so a run killed midway keeps what it measured)."""
    rows = []
    for case in cases:
        row = {"op": case.op, "size": case.size, "provider": case.provider, "baseline": case.baseline}
        try:
            row["ms"] = timer(case.fn)
        except Exception as error:  # noqa: BLE001 - a failing provider is reported, not fatal
            row["error"] = f"{type(error).__name__}: {error}"[:300]
        else:
            if case.bytes_moved:
                row["GB/s"] = case.bytes_moved / row["ms"] / 1e6
            if case.flops:
                row["TFLOP/s"] = case.flops / row["ms"] / 1e9
        rows.append(row)
        if on_row is not None:
            on_row(_with_speedups(rows))
    return _with_speedups(rows)


def _with_speedups(rows: list[dict]) -> list[dict]:
    """Each row with its speedup over its group's baseline row (where both were timed)."""
    baselines = {(r["op"], r["size"]): r.get("ms") for r in rows if r["baseline"]}
    for row in rows:
        base = baselines.get((row["op"], row["size"]))
        if base and row.get("ms"):
            row["speedup"] = base / row["ms"]
    return rows


def format_rows(rows: list[dict]) -> str:
    header = f"{'op':<18} {'size':<28} {'provider':<16} {'ms':>10} {'speedup':>8} {'GB/s':>8} {'TFLOP/s':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['op']:<18} {row['size']:<28} {row['provider']:<16} error: {row['error'][:60]}")
            continue
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        bandwidth = f"{row['GB/s']:.0f}" if "GB/s" in row else "-"
        tflops = f"{row['TFLOP/s']:.1f}" if "TFLOP/s" in row else "-"
        lines.append(
            f"{row['op']:<18} {row['size']:<28} {row['provider']:<16} {row['ms']:>10.4f} {speedup:>8} "
            f"{bandwidth:>8} {tflops:>8}"
        )
    return "\n".join(lines)


def run_stage(command: list[str], cwd, env: dict[str, str], timeout: float) -> tuple[str, str]:
    """Runs `command` in a process group of its own, so that a timeout kills its children too (xdist
    workers, warming shards); returns ``(status, output)``: ``ok``, ``failed (exit N)`` or ``timed out``."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        return ("ok" if process.returncode == 0 else f"failed (exit {process.returncode})"), output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return f"timed out after {timeout:.0f} s", output
