"""Host time per call of the fused Triton ops, forward + backward: the eager fast path (internvideo_fast/ops/
dispatch.py) against the same call through the torch.library custom ops (``IVF_DISPATCH_CUSTOM_OPS=1``), and
eager PyTorch's version of each op.

``python bench/host_overhead.py [--device cpu|cuda] [--calls N] [--out FILE]``

- cpu (default without a GPU): every Triton launch is replaced by a no-op, so the figure is the Python and
  dispatcher cost alone, on tiny tensors (the interpreter is switched on only so that the ``triton`` backend
  can be chosen; no kernel runs).
- cuda: real kernels at ViT-B sizes; the wall time of N back-to-back calls without a sync, divided by N.
  Where it exceeds the kernels' GPU time the op is launch-bound (``bench/profile_gpu.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, uninstalled


def _stub_triton_launches() -> None:
    """Replace every Triton kernel (JITFunction, Autotuner) in the op modules by a launcher doing nothing."""
    import triton

    class _NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    from triton.runtime.interpreter import InterpretedFunction

    kernel_types = (triton.runtime.JITFunction, triton.runtime.Autotuner, InterpretedFunction)
    for name in ("cross_attention", "dropout_add_layer_norm", "linear_act"):
        module = importlib.import_module(f"internvideo_fast.ops.{name}")
        for attribute, value in list(vars(module).items()):
            if isinstance(value, kernel_types):
                setattr(module, attribute, _NoLaunch())


@contextlib.contextmanager
def _dispatch_custom_ops(on: bool):
    previous = os.environ.get("IVF_DISPATCH_CUSTOM_OPS")
    os.environ["IVF_DISPATCH_CUSTOM_OPS"] = "1" if on else "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("IVF_DISPATCH_CUSTOM_OPS")
        else:
            os.environ["IVF_DISPATCH_CUSTOM_OPS"] = previous


def workloads(device, dtype, small: bool):
    """(name, ours, eager) pairs of forward + backward closures."""
    import torch
    import torch.nn.functional as F

    from internvideo_fast.ops import cross_attention, dropout_add_layer_norm, linear_act
    from internvideo_fast.ops.linear_act import fused_mlp

    rows, D, hidden, heads = (64, 64, 256, 2) if small else (8 * 1568, 768, 3072, 12)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).to(dtype).requires_grad_()

    x, r = leaf(rows, D), leaf(rows, D)
    w, b = leaf(D), leaf(D)
    w1, b1 = leaf(hidden, D, scale=D**-0.5), leaf(hidden)
    w2, b2 = leaf(D, hidden, scale=hidden**-0.5), leaf(D)
    tokens = rows // 8
    q, k, v = (leaf(8, tokens, heads, D // heads) for _ in range(3))

    def backward(*outputs):
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])

    return [
        ("dropout_add_layer_norm",
         lambda: backward(*dropout_add_layer_norm(x, r, w, b, 0.1, 1e-6, seed=1)),
         lambda: backward(*(lambda h: (F.layer_norm(h, (D,), w, b, 1e-6), h))(r + F.dropout(x, 0.1)))),
        ("linear_act (fc1 + gelu)",
         lambda: backward(linear_act(x, w1, b1, "gelu")),
         lambda: backward(F.gelu(F.linear(x, w1, b1)))),
        ("fused_mlp",
         lambda: backward(fused_mlp(x, w1, b1, w2, b2, "gelu")),
         lambda: backward(F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2))),
        ("cross_attention",
         lambda: backward(cross_attention(q, k, v)),
         lambda: backward(F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))))),
    ]


def host_us_per_call(fn, calls: int, sync) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    sync()
    return elapsed / calls * 1e6


def interleaved_medians(paths: dict, calls: int, sync, rounds: int = 5) -> dict[str, float]:
    """Median host µs per call of each path, timed in alternating rounds (shared cores drift over time)."""
    samples = {name: [] for name in paths}
    for _ in range(rounds):
        for name, (setup, fn) in paths.items():
            with setup():
                samples[name].append(host_us_per_call(fn, max(1, calls // rounds), sync))
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(device_name: str, calls: int) -> list[dict]:
    if device_name == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton's import: lets the triton backend be chosen
    import torch

    from internvideo_fast.ops import use_backend

    device = torch.device(device_name)
    if device.type == "cpu":
        _stub_triton_launches()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    with use_backend("triton"):
        for name, ours, eager in workloads(device, dtype, small=device.type == "cpu"):
            row = {"op": name, "device": device_name, "stubbed_kernels": device.type == "cpu"}
            paths = {
                "custom_op_us": (lambda: _dispatch_custom_ops(True), ours),
                "eager_path_us": (lambda: _dispatch_custom_ops(False), ours),
            }
            if device.type == "cuda":  # on CPU eager PyTorch would run real kernels against our stubs
                paths["pytorch_us"] = (contextlib.nullcontext, eager)
            row.update(interleaved_medians(paths, calls, sync))
            rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    header = ("op, forward + backward", "custom op us", "eager path us", "saved", "pytorch us")
    lines = ["{:<26} {:>13} {:>14} {:>6} {:>11}".format(*header)]
    for row in rows:
        pytorch = f"{row['pytorch_us']:.0f}" if "pytorch_us" in row else "-"
        saved = 1 - row["eager_path_us"] / row["custom_op_us"]
        lines.append(
            f"{row['op']:<26} {row['custom_op_us']:>13.0f} {row['eager_path_us']:>14.0f} {saved:>6.0%} "
            f"{pytorch:>11}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = measure(device, args.calls)
    print(format_rows(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
