"""A focused GPU measurement in under 1.5 minutes: the rows the performance goals are judged on.

``python bench/gpu_focus.py`` (under 1.5 minutes on an H100 from cold caches) times, in one process and
against their baselines: the copy and matmul ceilings; the CMA cross-attention shapes (forward, forward +
backward, eager and replayed from CUDA graphs; sdpa-flash); the dropout + residual + LayerNorm (forward
replayed; forward + backward eager and replayed; without dropout and drop path, replayed) and the FFN
forward + backward (eager and replayed, and its six GEMMs alone replayed); the ViT-B pretraining step, B = 32
(bench/e2e_train.py: the official code, the reference, ours eager and ours as one replayed CUDA graph, with
the measured matmul rate, their peak memory and the graphed step's GPU-time breakdown); then the host time
per call and where it goes (bench/host_overhead.py). Before timing, one process per group (``IVF_AUTOTUNE=compile``)
compiles every tuner candidate, in parallel. One JSON, saved after each group (rows, tuner timings and
choices), goes to ``$OUT`` (else bench/results/), named like gpu-check's with ``-focus``. ``make gpu-check``
stays the full check; this is its shortest subset. ``--dry-run`` runs the same groups on CPU (their quick
cases, no warming processes) into build/gpu-focus-dry-run/, to prove the script without a GPU.
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
    "train_step": ("e2e_train", ("train_step_pretrain",), ""),
}
# Not torch.compile's rows: compiling them would take longer than the measurement.
PROVIDERS = ("eager", "triton", "sdpa-flash", "torch", "gemms")
GROUP_PROVIDERS = {"train_step": ("official", "reference", "ours", "ours graphed")}


def group_cases(name: str, device, quick: bool = False):
    import importlib

    module_name, ops, size_prefix = GROUPS[name]
    module = importlib.import_module(module_name)
    providers = GROUP_PROVIDERS.get(name, PROVIDERS)
    return [case for case in module.cases(device, quick=quick)
            if case.op in ops and case.size.startswith(size_prefix) and case.provider in providers]


def group_extras(name: str, device, quick: bool = False) -> list[dict]:
    """The train-step group's extra rows: matmul rate, peak memory, the graphed step's breakdown."""
    if name != "train_step":
        return []
    import e2e_train

    return e2e_train.extra_rows(device, quick=quick, largest_batch_recipes=())


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
    dry_run = sys.argv[1:] == ["--dry-run"]
    start = time.monotonic()
    if not dry_run:
        warmers = [subprocess.Popen([sys.executable, __file__, "--warm", name]) for name in GROUPS]
        for process in warmers:
            process.wait()
    warm_s = round(time.monotonic() - start, 1)

    import torch

    import common
    import host_overhead
    from gpu_check import _write_json_atomically
    from internvideo_fast.ops.framework.autotuning import tuning_report

    if not dry_run and not torch.cuda.is_available():
        print("gpu_focus: no CUDA device; use --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry_run else "cuda")
    card = "cpu" if dry_run else torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    default_dir = BENCH.parent / "build" / "gpu-focus-dry-run" if dry_run else BENCH / "results"
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else default_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-").lower()
    out_file = out_dir / f"gpu-check-{date[:10]}-{slug}-focus{'-dry-run' if dry_run else ''}.json"
    timer = common.time_cuda_ms if not dry_run else (lambda fn: common.time_cpu_ms(fn, min_seconds=0.01, min_runs=1))
    report = {"machine": {"date": date, "card": card, "torch": torch.__version__,
                          "triton": __import__("triton").__version__, "warm_s": warm_s},
              "benchmarks": [], "extras": []}

    def save() -> None:
        _write_json_atomically(out_file, dict(report, tuning=tuning_report()))

    for name in GROUPS:
        report["benchmarks"] += common.measure(group_cases(name, device, quick=dry_run), timer)
        report["extras"] += group_extras(name, device, quick=dry_run)
        save()
        print(f"[focus] {name} done at {time.monotonic() - start:.0f} s", flush=True)
    calls = 10 if dry_run else 100
    report["extras"] += host_overhead.measure(device.type, calls=calls)
    save()
    primitives = host_overhead.primitive_costs(device.type, calls=calls)
    profiles = host_overhead.profile(device.type, calls=calls)
    report["extras"] += [primitives, *profiles]
    save()
    for row in report["benchmarks"]:
        figure = row.get("TFLOP/s") or row.get("GB/s") or 0
        print(f"{row['op']:<26} {row['size'][:44]:<44} {row['provider']:<11} {row.get('ms', 0):8.3f} ms "
              f"{figure:8.1f} x{row.get('speedup', 0):.2f}")
    print(host_overhead.format_rows(report["extras"]))
    print(host_overhead.format_profile(primitives, profiles))
    import e2e_train
    from profile_step import format_markdown

    print(e2e_train.summary(report["benchmarks"], report["extras"]))
    for extra in report["extras"]:
        if extra["op"] == "train step breakdown":
            print(format_markdown(extra))
    print(f"written: {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
