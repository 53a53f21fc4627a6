"""Host time per call of the fused Triton ops, forward + backward: the eager fast path (internvideo_fast/ops/
dispatch.py) against the same call through the torch.library custom ops (``IVF_DISPATCH_CUSTOM_OPS=1``), and
eager PyTorch's version of each op; then where that time goes.

``python bench/host_overhead.py [--device cpu|cuda] [--calls N] [--profile] [--out FILE]``

- cpu (default without a GPU): every Triton launch is replaced by a no-op, so the figure is the Python and
  dispatcher cost alone, on tiny tensors (the interpreter is switched on only so that the ``triton`` backend
  can be chosen; no kernel runs).
- cuda: real kernels, N back-to-back calls without a sync, wall time divided by N. At the ``small`` size
  (64 rows) each kernel takes a few µs, so the figure is host time; at ``vit_b`` (8 x 1568 rows) it is the
  wall time a ViT-B layer's call costs (host time unless the GPU work is longer: ``bench/profile_gpu.py``).
- ``--profile``: :func:`primitive_costs` (one Triton launch, one CUDA allocation, an autograd node with a
  Python backward against a C++ one) and :func:`profile` (cProfile's most expensive functions per call of
  each op's eager path), to tell which of them makes up the host time.
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
        importlib.import_module(f"internvideo_fast.ops.{name}")
    # Every module of the op packages: the launchers call the kernels through their own module's names.
    modules = [module for name, module in list(sys.modules.items())
               if name.startswith("internvideo_fast.ops.") and module is not None]
    for module in modules:
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


SIZES = {"small": (64, 64, 256, 2), "vit_b": (8 * 1568, 768, 3072, 12)}  # rows, D, hidden, heads


def workloads(device, dtype, size: str = "small"):
    """(name, ours, eager) pairs of forward + backward closures at one of SIZES."""
    import torch
    import torch.nn.functional as F

    from internvideo_fast.ops import cross_attention, dropout_add_layer_norm, linear_act
    from internvideo_fast.ops.linear_act import fused_mlp

    rows, D, hidden, heads = SIZES[size]

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


def _setup(device_name: str):
    """(device, sync, dtype) with the environment each device needs, before torch is imported."""
    if device_name == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton's import: lets the triton backend be chosen
    import torch

    device = torch.device(device_name)
    if device.type == "cpu":
        _stub_triton_launches()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, sync, dtype


def measure(device_name: str, calls: int, sizes: tuple[str, ...] | None = None) -> list[dict]:
    """One row per (op, size): µs per forward + backward call on each path (cuda: both SIZES; cpu: small)."""
    from internvideo_fast.ops import use_backend

    device, sync, dtype = _setup(device_name)
    sizes = sizes or (("small", "vit_b") if device.type == "cuda" else ("small",))
    rows = []
    with use_backend("triton"):
        for size in sizes:
            for name, ours, eager in workloads(device, dtype, size):
                row = {"op": name, "size": size, "device": device_name}
                row["stubbed_kernels"] = device.type == "cpu"
                paths = {
                    "custom_op_us": (lambda: _dispatch_custom_ops(True), ours),
                    "eager_path_us": (lambda: _dispatch_custom_ops(False), ours),
                }
                if device.type == "cuda":  # on CPU eager PyTorch would run real kernels against our stubs
                    paths["pytorch_us"] = (contextlib.nullcontext, eager)
                row.update(interleaved_medians(paths, calls, sync))
                rows.append(row)
    return rows


def _best_us_per_call(fn, calls: int, sync, rounds: int = 5) -> float:
    return min(host_us_per_call(fn, max(1, calls // rounds), sync) for _ in range(rounds))


def primitive_costs(device_name: str, calls: int = 200) -> dict:
    """Best µs per call of the pieces an op call is made of: a Triton launch with our kernels' argument list
    (cuda only: on CPU it would time the interpreter), a CUDA-caching-allocator (or CPU) allocation, a
    one-element fill, and forward + backward through an autograd node whose backward is Python (as our ops')
    against a C++ one (as eager PyTorch's)."""
    import torch

    device, sync, _ = _setup(device_name)
    x = torch.randn(64, 64, device=device, requires_grad=True)
    grad = torch.ones(64, 64, device=device)

    class PythonIdentity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, g):
            return g

    pieces = {
        "empty_us": lambda: torch.empty(64, 64, device=device),
        "fill_us": lambda: torch.full((), 7, dtype=torch.int64, device=device),
        "python_autograd_fwd_bwd_us": lambda: torch.autograd.backward(PythonIdentity.apply(x), grad),
        "cpp_autograd_fwd_bwd_us": lambda: torch.autograd.backward(x.view_as(x), grad),
    }
    if device.type == "cuda":
        from launch_probe import scale_rows_kernel

        y = torch.empty_like(x)
        stats = torch.empty(64, device=device)

        def launch():
            scale_rows_kernel[(4,)](
                x, y, stats, stats, stats, stats, 64, 64, 64, 64, 16, 64, 1, 0, 2.0, 1.0,
                BLOCK_D=64, HAS_WEIGHT=True, HAS_BIAS=True, HAS_STATS=False, num_warps=2, num_stages=1,
            )

        pieces["triton_launch_us"] = launch
    row = {"op": "host primitives", "device": device_name}
    for name, fn in pieces.items():
        fn()
        sync()
        row[name] = round(_best_us_per_call(fn, calls, sync), 2)
    return row


def profile(device_name: str, calls: int = 100, top: int = 12) -> list[dict]:
    """cProfile of each op's eager path at the small size: the `top` functions by own time, per op call.
    cProfile's own cost inflates every figure (more so for many cheap calls); the shares and call counts
    are what to read."""
    import cProfile
    import pstats

    from internvideo_fast.ops import use_backend

    device, sync, dtype = _setup(device_name)
    rows = []
    with use_backend("triton"), _dispatch_custom_ops(False):
        for name, ours, _ in workloads(device, dtype, "small"):
            for _ in range(3):
                ours()
            sync()
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(calls):
                ours()
            sync()
            profiler.disable()
            stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, ncalls, tottime, cumtime, _)
            ranked = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
            top_rows = [
                {"function": _function_label(where), "calls_per_call": round(ncalls / calls, 2),
                 "own_us_per_call": round(own / calls * 1e6, 2),
                 "total_us_per_call": round(total / calls * 1e6, 2)}
                for where, (_, ncalls, own, total, _) in ranked
            ]
            rows.append({"op": f"host profile: {name}", "size": "small", "device": device_name,
                         "top": top_rows})
    return rows


def _function_label(where: tuple) -> str:
    file, line, function = where
    if file == "~":  # a builtin
        return function
    parts = Path(file).parts
    short = "/".join(parts[parts.index("site-packages") + 1:] if "site-packages" in parts else parts[-2:])
    return f"{short}:{line}({function})"


def format_rows(rows: list[dict]) -> str:
    header = ("op, forward + backward", "size", "custom op us", "eager path us", "saved", "pytorch us")
    lines = ["{:<26} {:<6} {:>13} {:>14} {:>6} {:>11}".format(*header)]
    for row in rows:
        if "eager_path_us" not in row:
            continue
        pytorch = f"{row['pytorch_us']:.0f}" if "pytorch_us" in row else "-"
        saved = 1 - row["eager_path_us"] / row["custom_op_us"]
        lines.append(
            f"{row['op']:<26} {row.get('size', 'small'):<6} {row['custom_op_us']:>13.0f} "
            f"{row['eager_path_us']:>14.0f} {saved:>6.0%} {pytorch:>11}"
        )
    return "\n".join(lines)


def format_profile(primitives: dict, profiles: list[dict]) -> str:
    lines = ["host primitives, µs per call: " + ", ".join(
        f"{name[:-3]} {value}" for name, value in primitives.items() if name.endswith("_us"))]
    for row in profiles:
        lines.append(f"{row['op']} (own / total µs per op call under cProfile, calls per op call):")
        lines += [f"  {entry['own_us_per_call']:>8.1f} {entry['total_us_per_call']:>8.1f} "
                  f"{entry['calls_per_call']:>6g}  {entry['function']}" for entry in row["top"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="also time the primitives and profile each op")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = measure(device, args.calls)
    print(format_rows(rows))
    if args.profile:
        primitives, profiles = primitive_costs(device), profile(device)
        print(format_profile(primitives, profiles))
        rows += [primitives, *profiles]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
