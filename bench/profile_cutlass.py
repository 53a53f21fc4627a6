"""Where the CUTLASS fc1 GEMM's time goes (kernels/mlp_gemm_sm90.cu), beside cuBLAS, for a lent H100:
``python bench/profile_cutlass.py`` (about 15 s) prints, per shape and plan, the host time per call, the
do_bench wall time, the CUDA-graph replay time, and each kernel's profiler time with its launch grid, block,
shared memory and registers; one JSON goes to ``$OUT`` (else build/). Run 6 (2026-11-27) found this way that
the kernel itself, not the launch path, was 3-5x slower than cuBLAS: a one-tile problem took 27 us of GPU
time against 2-4 (bench/results/NOTES.md).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, uninstalled

import internvideo_fast  # noqa: E402,F401  (loads _C)

SHAPES = {"vit_b fc1": (16384, 768, 3072), "vit_l fc1": (16384, 1024, 4096), "one tile": (128, 64, 256)}


def host_us_per_call(fn, calls: int = 50) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def graph_ms(fn, calls: int = 10) -> float:
    """Per call, replayed from a CUDA graph of `calls` calls (no host time)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return triton.testing.do_bench(graph.replay, warmup=3, rep=50) / calls


def kernels(fn, calls: int = 5) -> dict[str, dict]:
    """Each kernel's mean profiler time and launch configuration, from the Chrome trace's kernel events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        profile.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    found: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "kernel":
            continue
        args = event.get("args", {})
        entry = found.setdefault(event["name"][:90], {
            "calls": 0, "us": 0.0, "grid": args.get("grid"), "block": args.get("block"),
            "smem": args.get("shared memory"), "registers": args.get("registers per thread")})
        entry["calls"] += 1
        entry["us"] += event["dur"]
    for entry in found.values():
        entry["us"] = round(entry["us"] / entry["calls"], 1)
    return found


def main() -> int:
    if not torch.cuda.is_available() or not hasattr(torch.ops.internvideo_fast, "mlp_gemm_bias_act"):
        print("needs a GPU and internvideo_fast._C", file=sys.stderr)
        return 2
    ops, dtype, results = torch.ops.internvideo_fast, torch.bfloat16, {}
    for shape_name, (M, K, N) in SHAPES.items():
        x = torch.randn(M, K, device="cuda", dtype=dtype)
        weight = torch.randn(N, K, device="cuda", dtype=dtype) * K**-0.5
        bias = torch.randn(N, device="cuda", dtype=dtype)
        y, pre = torch.empty(M, N, device="cuda", dtype=dtype), torch.empty(M, N, device="cuda", dtype=dtype)
        def cutlass(schedule):
            return lambda: ops.mlp_gemm_bias_act(x, weight, bias, "gelu", schedule, y, pre)

        plans = {f"cutlass:{schedule}": cutlass(schedule) for schedule in ("cooperative", "pingpong")}
        plans["cublas addmm + gelu"] = lambda: F.gelu(torch.addmm(bias, x, weight.t(), out=pre))
        plans["cublas mm"] = lambda: torch.mm(x, weight.t(), out=pre)
        for plan, fn in plans.items():
            for _ in range(3):
                fn()
            row = {"host_us": round(host_us_per_call(fn), 1),
                   "wall_ms": round(triton.testing.do_bench(fn, warmup=5, rep=50), 4),
                   "graph_ms": round(graph_ms(fn), 4), "kernels": kernels(fn)}
            results[f"{shape_name} {M}x{K}x{N}: {plan}"] = row
            print(f"{shape_name} {M}x{K}x{N}: {plan}", json.dumps(row), flush=True)
    out_dir = Path(os.environ.get("OUT") or Path(__file__).resolve().parents[1] / "build")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cutlass-profile.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
