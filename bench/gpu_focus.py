"""A focused GPU measurement for what is left of a short lease: the rows the open goals are judged on.

``python bench/gpu_focus.py`` (under 1.5 minutes on an H100 from cold caches) times, in one process and
against their baselines: the copy and matmul ceilings; the CMA cross-attention shapes (forward, forward +
backward, eager and replayed from CUDA graphs; sdpa-flash); the dropout + residual + LayerNorm (forward
replayed; forward + backward eager and replayed; without dropout and drop path, replayed) and the FFN
forward + backward (eager and replayed, and its six GEMMs alone replayed); then the host time per call and
where it goes (bench/host_overhead.py). Before timing, one process per group (``IVF_AUTOTUNE=compile``)
compiles every tuner candidate, in parallel. One JSON, saved after each group (rows, tuner timings and
choices), goes to ``$OUT`` (else bench/results/), named like gpu-check's with ``-focus``. ``make gpu-check``
stays the full check; this is its shortest subset.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))  # the package, uninstalled

# group: (bench module, which of its cases: op names, and a size prefix or "")
ATTENTION_OPS = ("cross_attention_fwd", "cross_attention_fwd_bwd", "cross_attention_fwd graph",
                 "cross_attention_fwd_bwd graph")
GROUPS = {
    "ceilings": ("bench_ceilings", ("ceiling copy", "ceiling matmul"), ""),
    "attention": ("bench_cross_attention", ATTENTION_OPS, "cma"),
    "layer_norm": ("bench_dropout_add_layer_norm", ("dropout_add_ln+bwd", "dropout_add_ln+bwd graph",
                                                    "dropout_add_ln graph", "add_ln+bwd graph"), ""),
    "ffn": ("bench_linear_act", ("ffn+bwd", "ffn+bwd graph", "ffn+bwd drop graph"), ""),
}
# Not torch.compile's rows: they would spend the lease compiling.
PROVIDERS = ("eager", "triton", "sdpa-flash", "torch", "gemms")


def group_cases(name: str, device):
    import importlib

    module_name, ops, size_prefix = GROUPS[name]
    module = importlib.import_module(module_name)
    return [case for case in module.cases(device)
            if case.op in ops and case.size.startswith(size_prefix) and case.provider in PROVIDERS]


def warm(name: str) -> None:
    """Compile every tuner candidate of the group's cases (each case runs once)."""
    import torch

    os.environ["IVF_AUTOTUNE"] = "compile"
    for case in group_cases(name, torch.device("cuda")):
        case.fn()
    torch.cuda.synchronize()


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--warm":
        warm(sys.argv[2])
        return 0
    start = time.monotonic()
    warmers = [subprocess.Popen([sys.executable, __file__, "--warm", name]) for name in GROUPS]
    for process in warmers:
        process.wait()
    warm_s = round(time.monotonic() - start, 1)

    import torch

    import common
    import host_overhead
    from gpu_check import _write_json_atomically
    from internvideo_fast.ops.framework.autotuning import tuning_report

    device = torch.device("cuda")
    card = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else BENCH / "results"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-").lower()
    out_file = out_dir / f"gpu-check-{date[:10]}-{slug}-focus.json"
    report = {"machine": {"date": date, "card": card, "torch": torch.__version__,
                          "triton": __import__("triton").__version__, "warm_s": warm_s},
              "benchmarks": [], "extras": []}

    def save() -> None:
        _write_json_atomically(out_file, dict(report, tuning=tuning_report()))

    for name in GROUPS:
        report["benchmarks"] += common.measure(group_cases(name, device), common.time_cuda_ms)
        save()
        print(f"[focus] {name} done at {time.monotonic() - start:.0f} s", flush=True)
    report["extras"] += host_overhead.measure("cuda", calls=100)
    save()
    primitives, profiles = host_overhead.primitive_costs("cuda"), host_overhead.profile("cuda")
    report["extras"] += [primitives, *profiles]
    save()
    for row in report["benchmarks"]:
        figure = row.get("TFLOP/s") or row.get("GB/s") or 0
        print(f"{row['op']:<26} {row['size'][:44]:<44} {row['provider']:<11} {row.get('ms', 0):8.3f} ms "
              f"{figure:8.1f} x{row.get('speedup', 0):.2f}")
    print(host_overhead.format_rows(report["extras"]))
    print(host_overhead.format_profile(primitives, profiles))
    print(f"written: {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
