"""Where the CUTLASS fc1 GEMM's time goes (kernels/mlp_gemm_sm90.cu), beside cuBLAS, on an H100:
``python bench/profile_cutlass.py`` (about 15 s) prints, per shape and plan, the host time per call, the
do_bench wall time, the CUDA-graph replay time, and each kernel's profiler time with its launch grid, block,
shared memory and registers; one JSON goes to ``$OUT`` (else build/). The one-tile rows tell a slow kernel
(a fixed cost per tile, e.g. an epilogue past the instruction cache) from a slow launch path.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, uninstalled

import internvideo_fast  # noqa: E402,F401  (loads _C)
from common import cuda_graphed  # noqa: E402
from profile_gpu import host_us_per_call  # noqa: E402

SHAPES = {"vit_b fc1": (16384, 768, 3072), "vit_l fc1": (16384, 1024, 4096), "one tile": (128, 64, 256)}
GRAPH_CALLS = 10  # calls per graph replay, so that the graph's own launch does not dominate a 2 us kernel


def graph_ms(fn) -> float:
    """Per call, replayed from a CUDA graph of GRAPH_CALLS calls (no host time)."""

    def calls():
        for _ in range(GRAPH_CALLS):
            fn()

    return triton.testing.do_bench(cuda_graphed(calls), warmup=3, rep=50) / GRAPH_CALLS


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


def plans(M: int, K: int, N: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, Callable[[], object]]:
    """fc1 at [M, K] x [N, K] with gelu: CUTLASS at each schedule, cuBLAS + F.gelu, cuBLAS's GEMM alone."""
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    weight = torch.randn(N, K, device="cuda", dtype=dtype) * K**-0.5
    bias = torch.randn(N, device="cuda", dtype=dtype)
    y, pre = torch.empty(M, N, device="cuda", dtype=dtype), torch.empty(M, N, device="cuda", dtype=dtype)

    def cutlass(schedule):
        return lambda: torch.ops.internvideo_fast.mlp_gemm_bias_act(x, weight, bias, "gelu", schedule, y, pre)

    return {
        "cutlass:cooperative": cutlass("cooperative"),
        "cutlass:pingpong": cutlass("pingpong"),
        "cublas addmm + gelu": lambda: F.gelu(torch.addmm(bias, x, weight.t(), out=pre)),
        "cublas mm": lambda: torch.mm(x, weight.t(), out=pre),
    }


def main() -> int:
    if not torch.cuda.is_available() or not hasattr(torch.ops.internvideo_fast, "mlp_gemm_bias_act"):
        print("needs a GPU and internvideo_fast._C", file=sys.stderr)
        return 2
    results = {}
    for shape_name, (M, K, N) in SHAPES.items():
        for plan, fn in plans(M, K, N).items():
            for _ in range(3):
                fn()
            row = {"host_us": round(host_us_per_call(fn, calls=50), 1),
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
