"""Where the GPU time goes: per-kernel CUDA time (torch.profiler) and host time per call, for the fused ops
against their eager baselines and for one training step per backend. A diagnostic for a GPU machine:
``python bench/profile_gpu.py [--out FILE]`` prints one table per workload (about a minute on an H100).

Host time per call is the wall time of N back-to-back calls without a sync, divided by N: when it exceeds
the GPU time per call, the op is launch-bound and a timing of it measures Python, not the kernels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, uninstalled

from internvideo_fast.ops import use_backend  # noqa: E402


def host_us_per_call(fn, calls: int = 30) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def kernel_table(fn, steps: int = 5, top: int = 12) -> tuple[float, list[tuple[str, float, int]]]:
    """(GPU ms per call, [(kernel, ms per call, launches per call)]) from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0)
        if device_us > 0:
            rows.append((event.key, device_us / steps / 1e3, event.count // steps))
    rows.sort(key=lambda row: -row[1])
    return sum(row[1] for row in rows), rows[:top]


def report(name: str, fn) -> str:
    try:
        host = host_us_per_call(fn)
        gpu_ms, rows = kernel_table(fn)
    except Exception as error:  # noqa: BLE001 - one failing workload must not hide the others
        return f"\n== {name}: error {type(error).__name__}: {str(error)[:300]}"
    lines = [f"\n== {name}: GPU {gpu_ms:.3f} ms per call (sum of kernels), host {host:.0f} us per call"]
    lines += [f"   {ms:8.3f} ms  x{count:<3} {kernel[:110]}" for kernel, ms, count in rows]
    return "\n".join(lines)


def workloads(device: torch.device):
    from internvideo_fast.ops import cross_attention, dropout_add_layer_norm
    from internvideo_fast.layers.mlp import FusedMLP

    dtype = torch.bfloat16
    # FFN at ViT-B pretraining size.
    rows, D, hidden = 64 * 160, 768, 3072
    mlp = FusedMLP(D, hidden, activation="gelu").to(device, dtype)
    x = torch.randn(rows, D, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(rows, D, device=device, dtype=dtype)

    def ffn(backend):
        def run():
            with use_backend(backend):
                torch.autograd.grad(mlp(x), (x, *mlp.parameters()), dy)
        return run

    def ffn_eager():
        out = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
        torch.autograd.grad(out, (x, *mlp.parameters()), dy)

    yield "ffn fwd+bwd eager (F.linear + F.gelu)", ffn_eager
    yield "ffn fwd+bwd FusedMLP triton", ffn("triton")

    # dropout + residual + LayerNorm at ViT-B fine-tuning size.
    shape = (8, 1568, 768)
    seed = torch.tensor(0, device=device)
    branch, residual = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    weight = torch.randn(768, device=device, dtype=dtype, requires_grad=True)
    bias = torch.randn(768, device=device, dtype=dtype, requires_grad=True)
    grads = (torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype))

    def ln_eager():
        new_residual = residual + F.dropout(branch, 0.1)
        outputs = (F.layer_norm(new_residual, (768,), weight, bias, 1e-6), new_residual)
        torch.autograd.grad(outputs, (branch, residual, weight, bias), grads)

    def ln_triton():
        with use_backend("triton"):
            outputs = dropout_add_layer_norm(branch, residual, weight, bias, 0.1, 1e-6, seed=seed)
        torch.autograd.grad(outputs, (branch, residual, weight, bias), grads)

    def ln_triton_forward():
        with use_backend("triton"), torch.no_grad():
            dropout_add_layer_norm(branch, residual, weight, bias, 0.1, 1e-6, seed=seed)

    yield "dropout_add_ln fwd+bwd eager", ln_eager
    yield "dropout_add_ln fwd+bwd triton", ln_triton
    yield "dropout_add_ln fwd triton (no grad)", ln_triton_forward

    # Cross-attention at the CMA shape.
    B, H, Dh, Sq, Sk = 8, 16, 64, 2056, 1568
    q = torch.randn(B, Sq, H, Dh, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, Sk, H, Dh, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    dout = torch.randn(B, Sq, H, Dh, device=device, dtype=dtype)

    def attention_ours():
        with use_backend("triton"):
            torch.autograd.grad(cross_attention(q, k, v), (q, k, v), dout)

    def attention_flash():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        torch.autograd.grad(out, (q, k, v), dout.transpose(1, 2))

    yield "cross_attention fwd+bwd CMA triton", attention_ours
    yield "cross_attention fwd+bwd CMA sdpa-flash", attention_flash

    # One VideoMAE-B pretraining step per backend.
    import e2e_train

    for backend in ("reference", "auto"):
        with use_backend(backend):
            model, optimizer, video, labels, _ = e2e_train._setup(device, "pretrain", False)
        forward, backward, step = e2e_train._step_parts(model, optimizer, video, labels, "pretrain", device)

        def train_step(forward=forward, backward=backward, step=step, backend=backend):
            with use_backend(backend):
                backward(forward())
                step()

        yield f"train_step_pretrain ViT-B B=32 backend={backend}", train_step
        del model, optimizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_gpu needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    text = []
    items = workloads(device)
    while True:
        try:
            name, fn = next(items)
        except StopIteration:
            break
        except Exception as error:  # noqa: BLE001 - a failing set-up ends the list but keeps the tables
            text.append(f"\n== set-up error {type(error).__name__}: {str(error)[:300]}")
            print(text[-1], flush=True)
            break
        text.append(report(name, fn))
        print(text[-1], flush=True)
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
