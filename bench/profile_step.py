"""Where the GPU time of the graphed ViT-B pretraining step goes, and the floor its GEMMs set.

    python bench/profile_step.py [--out FILE.md]   # CUDA: the graphed step (B = 32), about half a minute
    python bench/profile_step.py --dry-run         # CPU: a micro model's eager step, to prove the script

The whole step (ours, captured as one CUDA graph by internvideo_fast.train.step) is replayed under
torch.profiler; every kernel's CUDA time is put in one group: GEMMs, attention, LayerNorm, other elementwise,
loss and targets, masking / gathers, optimizer (AdamW and clipping), copies. The floor: the step's GEMMs
alone (their shapes recorded from one step with the reference backend, where every matmul is an aten
GEMM), replayed from one CUDA graph in bf16. On CPU the same runs with CPU op times and no graph.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))  # the package, uninstalled

from internvideo_fast.ops import use_backend  # noqa: E402

# First match wins, so the specific patterns come before the broad ones (a fused GEMM + GELU is a GEMM).
GROUPS = (
    ("optimizer", r"adam|foreach|multi_tensor|clip_grad|_amp_|lerp|addcdiv|addcmul"),
    ("attention", r"flash|fmha|sdpa|scaled_dot|cross_attention|attention|softmax"),
    ("GEMMs", r"gemm|cutlass|xmma|nvjet|matmul|linear_act|cublas|aten::(mm|addmm|bmm|baddbmm|linear)\b|conv"),
    ("LayerNorm", r"layer_norm|layernorm|dropout_add"),
    ("loss and targets", r"mae_targets|mse|loss|log_softmax|cross_entropy|nll"),
    ("masking / gathers", r"tube_mask|gather|index|scatter|masked|cat\b|catarray|nonzero|embedding"),
    ("copies", r"copy|memcpy|memset|_to_copy|contiguous|clone|fill|cast"),
)
OTHER = "other elementwise"
GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm"}


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, lowered):
            return group
    return OTHER


class _GemmRecorder(TorchDispatchMode):
    """Records (op, argument shapes and dtypes) of every aten GEMM the step runs, forward and backward."""

    def __init__(self):
        super().__init__()
        self.gemms: list[tuple[str, list[tuple[tuple[int, ...], torch.dtype]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in GEMM_OPS:
            self.gemms.append((name, [(tuple(a.shape), a.dtype) for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def record_gemms(step) -> list:
    recorder = _GemmRecorder()
    with recorder:
        step()
    return recorder.gemms


def gemms_alone(gemms: list, device: torch.device):
    """A callable running `gemms` on random tensors of their shapes (bf16 on CUDA, replayed from one graph)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    calls = []
    for name, shapes in gemms:
        tensors = [torch.randn(shape, device=device, dtype=dtype) for shape, _ in shapes]
        calls.append((getattr(torch.ops.aten, name).default, tensors))

    def run():
        for op, tensors in calls:
            op(*tensors)

    if device.type != "cuda":
        return run
    from common import cuda_graphed

    return cuda_graphed(run)


def _time_ms(fn, device: torch.device) -> float:
    from common import time_cpu_ms, time_cuda_ms

    return time_cuda_ms(fn) if device.type == "cuda" else time_cpu_ms(fn, min_seconds=0.0, min_runs=1)


def kernel_times(fn, device: torch.device, steps: int) -> dict[str, float]:
    """Per-kernel (CUDA) or per-op (CPU, self time) milliseconds per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    times: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if device.type == "cuda":
            own = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        else:
            own = event.self_cpu_time_total
        if own > 0:
            times[event.key] += own / 1e3 / steps
    return dict(times)


def breakdown(device: torch.device, quick: bool = False, steps: int | None = None) -> dict:
    """The grouped time of the graphed pretraining step (ours), its GEMM floor and the top kernels, over
    `steps` profiled steps (default 5 on CUDA, 1 on CPU)."""
    import e2e_train

    steps = steps or (5 if device.type == "cuda" else 1)
    e2e_train._release()
    step, _, label, flops = e2e_train.build_step(device, "pretrain", "ours graphed", quick=quick)
    for _ in range(4 if device.type == "cuda" else 1):  # CUDA: 3 warm-up steps, the capture, a replay
        step()
    per_kernel = kernel_times(step, device, steps)
    groups: dict[str, float] = defaultdict(float)
    for name, ms in per_kernel.items():
        groups[group_of(name)] += ms
    step_ms = _time_ms(step, device)
    del step
    e2e_train._release()
    with use_backend("reference"):
        reference_step = e2e_train.build_step(device, "pretrain", "reference", quick=quick)[0]
        reference_step()
        gemms = record_gemms(reference_step)
    del reference_step
    e2e_train._release()
    floor_ms = _time_ms(gemms_alone(gemms, device), device)
    e2e_train._release()
    top = sorted(per_kernel.items(), key=lambda item: -item[1])[:15]
    return {
        "op": "train step breakdown", "step": f"train_step_pretrain {label}", "provider": "ours graphed",
        "device": str(device), "step_ms": step_ms, "kernel_ms": sum(groups.values()),
        "groups_ms": {group: round(ms, 4) for group, ms in sorted(groups.items(), key=lambda item: -item[1])},
        "gemm_floor_ms": floor_ms, "gemms": len(gemms), "step_tflop": (flops or 0) / 1e12,
        "top": [{"kernel": name[:120], "ms": round(ms, 4), "group": group_of(name)} for name, ms in top],
    }


def format_markdown(row: dict) -> str:
    total = row["kernel_ms"] or 1.0
    lines = [f"# Where the time of {row['step']} ({row['provider']}) goes, on {row['device']}", "",
             f"Step {row['step_ms']:.2f} ms wall, {row['kernel_ms']:.2f} ms of kernels; the step's {row['gemms']} "
             f"GEMMs alone replayed: {row['gemm_floor_ms']:.2f} ms (the floor).", "",
             "| group | ms per step | share |", "| --- | ---: | ---: |"]
    lines += [f"| {group} | {ms:.3f} | {ms / total:.1%} |" for group, ms in row["groups_ms"].items()]
    lines += ["", "| kernel | ms | group |", "| --- | ---: | --- |"]
    lines += [f"| `{entry['kernel']}` | {entry['ms']:.3f} | {entry['group']} |" for entry in row["top"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, a micro model: prove the script works")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("profile_step: no CUDA device; use --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    table = format_markdown(breakdown(device, quick=args.dry_run))
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
