"""The transformer FFN (fc1 + GELU + fc2), forward + backward: FusedMLP (Triton matmul with the bias and GELU
in its epilogue, Triton dGELU + dbias pass, cuBLAS backward GEMMs) against eager PyTorch (nn.Linear +
F.gelu + nn.Linear, the baseline) and torch.compile of the same eager MLP (default mode), in bf16 at the
ViT-B pretraining (64 clips x 160 visible tokens, 768 -> 3072) and ViT-L fine-tuning (8 x 1568 tokens,
1024 -> 4096) sizes. FLOPs: two GEMMs of 2 * rows * D * hidden each, x3 for forward + backward.
On a GPU the ``ffn+bwd graph`` rows replay eager's, our and torch.compile's call from CUDA graphs: the
kernels' time without the host's; their ``gemms`` row replays the six GEMMs alone (``gemms_only``), the
floor that fusing the bias, activation and reductions approaches: eager's time over it bounds any fused
FFN's speedup. ``ffn+bwd drop graph`` (ViT-B size) is the same with dropout 0.1, eager against ours.

Memory (``memory_rows``; ``python bench/bench_linear_act.py [cuda|cpu]`` prints it): per provider, the bytes
autograd saves for backward in one MLP block (distinct storages, parameters included, counted with
torch.autograd.graph.saved_tensors_hooks), the bytes saved vs eager, and on CUDA the peak memory of one
forward + backward above the inputs and parameters (torch.cuda.max_memory_allocated), with dropout 0.1 in
training (the fused MLP keeps x and fc1's pre-activation; eager also keeps the activation and two masks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import Case, cuda_graphed
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.framework.backend import triton_runs_on
from internvideo_fast.ops.linear_act import OP_NAME
from internvideo_fast.layers.mlp import FusedMLP

SIZES = [(64 * 160, 768, 3072), (8 * 1568, 1024, 4096)]  # (rows, D, hidden)
CPU_SIZES = [(2 * 160, 64, 256)]  # the CPU cases only prove the cases run


class EagerMLP(nn.Module):
    """timm's / VideoMAE's Mlp: nn.Linear, F.gelu, dropout, nn.Linear, dropout (drop 0 by default)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.gelu(self.fc1(x)), self.drop, self.training)
        return F.dropout(self.fc2(h), self.drop, self.training)


def _fused_with(provider: str, mlp: FusedMLP):
    def run(x):
        with use_backend(provider, OP_NAME):
            return mlp(x)

    return run


def gemms_only(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, dy: torch.Tensor):
    """The FFN's six GEMMs and nothing else (no bias, activation, dropout or bias-gradient reduction): the
    time an FFN forward + backward cannot go below with these GEMMs, so eager's time over it is the most
    that fusing the rest can gain."""
    x = x.detach()

    def run():
        h = x @ w1.t()  # fc1 (h stands in for act(pre) as well)
        y = h @ w2.t()  # fc2
        dweight2, dh = dy.t() @ h, dy @ w2
        dweight1, dx = dh.t() @ x, dh @ w1
        return y, dweight2, dweight1, dx

    return run


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    on_gpu = device.type == "cuda"
    sizes = SIZES if on_gpu else CPU_SIZES
    if quick:
        sizes = sizes[:1]
    dtype = torch.bfloat16 if on_gpu else torch.float32
    out = []
    for rows, D, hidden in sizes:
        size = f"rows={rows},D={D},hidden={hidden},{str(dtype).removeprefix('torch.')}"
        eager = EagerMLP(D, hidden).to(device=device, dtype=dtype)
        fused = FusedMLP(D, hidden, activation="gelu").to(device=device, dtype=dtype)
        fused.load_state_dict(eager.state_dict())
        providers = {"eager": eager}
        if on_gpu:
            # Triton (FusedMLP through linear_act) and torch.compile of the eager MLP. On CPU the Triton
            # interpreter is a test tool, not a backend to time.
            providers["triton"] = _fused_with("triton", fused)
            providers["compiled"] = torch.compile(eager)
        else:
            providers["reference"] = _fused_with("reference", fused)
        x = torch.randn(rows, D, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(rows, D, device=device, dtype=dtype)
        flops = 2 * rows * D * hidden * 2  # forward: fc1 and fc2
        # Forward + backward only (training is what the FFN costs us; a forward-only case would double
        # torch.compile's compile time inside gpu-check's bench budget).
        parameters = {name: list((fused if name in ("triton", "reference") else eager).parameters())
                      for name in providers}
        for name, fn in providers.items():
            # autograd.grad: dx and the weight gradients, without .backward()'s += into .grad (training
            # with zero_grad(set_to_none=True) assigns the first gradient instead: no add kernel).
            def forward_backward(fn=fn, x=x, dy=dy, wrt=(x, *parameters[name])):
                torch.autograd.grad(fn(x), wrt, dy)

            out.append(
                Case("ffn+bwd", size, name, forward_backward, baseline=name == "eager", flops=3 * flops)
            )
            # The same call replayed from a CUDA graph: no host time, so eager's, ours' and torch.compile's
            # kernels alone (eager calls of ours were host-bound on the H100 VM). The compiled function is
            # the one the eager-call row compiled (default mode, no graphs of its own).
            if on_gpu:
                out.append(Case("ffn+bwd graph", size, name, cuda_graphed(forward_backward),
                                baseline=name == "eager", flops=3 * flops))
        if on_gpu and (rows, D, hidden) == SIZES[0]:
            # With dropout 0.1 after the activation and after fc2 (CMA's FFN, CLIP's text encoder): eager's
            # two dropouts against masks regenerated from a seed, one Philox call per eight elements.
            eager_drop = EagerMLP(D, hidden, drop=0.1).to(device=device, dtype=dtype)
            eager_drop.load_state_dict(eager.state_dict())
            fused_drop = FusedMLP(D, hidden, activation="gelu", drop=0.1).to(device=device, dtype=dtype)
            fused_drop.load_state_dict(eager.state_dict())
            for name, fn, module in (("eager", eager_drop, eager_drop),
                                     ("triton", _fused_with("triton", fused_drop), fused_drop)):
                def forward_backward(fn=fn, x=x, dy=dy, wrt=(x, *module.parameters())):
                    torch.autograd.grad(fn(x), wrt, dy)

                out.append(Case("ffn+bwd drop graph", f"{size},drop=0.1", name,
                                cuda_graphed(forward_backward), baseline=name == "eager", flops=3 * flops))
        # The floor: the same GEMMs alone (speedup = the most any fusion of the elementwise work can give).
        floor = gemms_only(x, eager.fc1.weight.detach(), eager.fc2.weight.detach(), dy)
        if on_gpu:
            out.append(Case("ffn+bwd graph", size, "gemms", cuda_graphed(floor), flops=3 * flops))
        else:  # the CPU cases only prove the cases run
            out.append(Case("ffn+bwd", size, "gemms", floor, flops=3 * flops))
    return out


def saved_bytes(fn) -> tuple[int, object]:
    """``(bytes, fn())``: the bytes of the distinct storages autograd saves for backward while `fn` runs
    (parameters included, counted once), and what `fn` returned."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return sum(storages.values()), out


def memory_rows(device: torch.device, drop: float = 0.1, quick: bool = False) -> list[dict]:
    """Per size and provider (eager, fused; compiled on CUDA): saved-for-backward bytes per MLP block,
    bytes saved vs eager, and on CUDA the peak memory of one forward + backward (MiB above the live
    tensors before the call)."""
    on_gpu = device.type == "cuda"
    sizes = (SIZES if on_gpu else CPU_SIZES)[: 1 if quick else None]
    dtype = torch.bfloat16 if on_gpu else torch.float32
    rows = []
    for n_rows, D, hidden in sizes:
        eager = EagerMLP(D, hidden, drop).to(device=device, dtype=dtype)
        fused = FusedMLP(D, hidden, activation="gelu", drop=drop).to(device=device, dtype=dtype)
        fused.load_state_dict(eager.state_dict())
        providers = {"eager": eager, "triton" if on_gpu else "reference": _fused_with(
            "triton" if on_gpu else "reference", fused)}
        if not on_gpu and triton_runs_on(device):  # the interpreter: saved bytes only, no timing
            providers["triton"] = _fused_with("triton", fused)
        if on_gpu:
            providers["compiled"] = torch.compile(eager)
        x = torch.randn(n_rows, D, device=device, dtype=dtype, requires_grad=True)
        size = f"rows={n_rows},D={D},hidden={hidden},{str(dtype).removeprefix('torch.')},drop={drop}"
        eager_saved = None
        for name, fn in providers.items():
            row = {"op": "ffn memory", "size": size, "provider": name}
            if name != "compiled":  # compiled graphs save inside their own autograd function
                row["saved_bytes"] = saved_bytes(lambda fn=fn: fn(x))[0]
                if name == "eager":
                    eager_saved = row["saved_bytes"]
                row["bytes_saved_vs_eager"] = eager_saved - row["saved_bytes"]
            if on_gpu:
                fn(x).sum().backward()  # warm up (autotune, compile)
                x.grad = None
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fn(x).sum().backward()
                torch.cuda.synchronize()
                row["peak_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                x.grad = None
            rows.append(row)
    return rows


def fc1_plans(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> dict:
    """fc1's forward (x @ w.T + b, GELU, pre-activation stored) as {label: closure}: every launch plan the
    run-time tuner chooses from (the pointer kernel, the TMA and persistent TMA kernels at each registered
    tile, addmm + our elementwise pass), then cuBLAS (addmm) alone and addmm + F.gelu (eager's fc1). Returns
    the plans and the (y, pre) buffers our plans write into; the two cuBLAS plans return their result."""
    import importlib

    la_launch = importlib.import_module("internvideo_fast.ops.linear_act.launch")
    y = torch.empty(x.shape[0], w.shape[0], device=x.device, dtype=x.dtype)
    pre = torch.empty_like(y)
    interpreter = x.device.type == "cpu"
    plans = dict(la_launch._fwd_plans(x, w, b, None, y, pre, "gelu", True, 0.0, interpreter,
                                              not interpreter))
    plans["cublas addmm"] = lambda: torch.addmm(b, x, w.t())
    plans["cublas addmm + gelu"] = lambda: F.gelu(torch.addmm(b, x, w.t()))
    return plans, (y, pre)


def _plan_rows(op: str, device: torch.device, quick: bool, make_plans) -> list[dict]:
    """Every plan `make_plans(n_rows, D, hidden)` returns ({label: closure}) timed one by one in one run,
    bf16, at each size (the first only when `quick`), as rows of `op`; on CUDA only."""
    if device.type != "cuda":
        return []
    from triton.testing import do_bench

    rows = []
    for n_rows, D, hidden in SIZES[: 1 if quick else None]:
        size = f"rows={n_rows},D={D},hidden={hidden},bfloat16"
        flops = 2 * n_rows * D * hidden
        for provider, fn in make_plans(n_rows, D, hidden).items():
            ms = do_bench(fn, warmup=10, rep=50)
            rows.append({"op": op, "size": size, "provider": provider, "ms": ms, "TFLOP/s": flops / ms / 1e9})
    return rows


def gemm_rows(device: torch.device, quick: bool = False) -> list[dict]:
    """fc1's forward plans (`fc1_plans`) timed one by one in one run, on CUDA."""

    def plans(n_rows, D, hidden):
        x = torch.randn(n_rows, D, device=device, dtype=torch.bfloat16)
        w = torch.randn(hidden, D, device=device, dtype=torch.bfloat16) / D**0.5
        b = torch.randn(hidden, device=device, dtype=torch.bfloat16)
        return fc1_plans(x, w, b)[0]

    return _plan_rows("fc1 gemm plan", device, quick, plans)


def dh_plans(dz: torch.Tensor, w2: torch.Tensor, pre: torch.Tensor) -> dict:
    """fused_mlp's fc1 backward from fc2's input gradient dz (dpre, dbias and the recomputed h) as
    {label: closure}: every plan the run-time tuner chooses from (cuBLAS + our elementwise pass, the fused
    Triton GEMMs), then eager's equivalent (mm, gelu_backward, the bias sum; eager keeps h from
    its forward instead of recomputing it)."""
    import importlib

    la_fused = importlib.import_module("internvideo_fast.ops.linear_act.fused_mlp")
    interpreter = dz.device.type == "cpu"
    plans = dict(
        la_fused._dh_plans(dz, w2, pre, "gelu", True, None, 0.0, interpreter, not interpreter)
    )

    def eager():
        dpre = torch.ops.aten.gelu_backward(dz @ w2, pre)
        return dpre, dpre.sum(0)

    plans["eager mm + gelu_backward + sum"] = eager
    return plans


def dh_rows(device: torch.device, quick: bool = False) -> list[dict]:
    """fc1's backward plans (`dh_plans`) timed one by one in one run, on CUDA."""

    def plans(n_rows, D, hidden):
        dz = torch.randn(n_rows, D, device=device, dtype=torch.bfloat16)
        w2 = torch.randn(D, hidden, device=device, dtype=torch.bfloat16) / hidden**0.5
        pre = torch.randn(n_rows, hidden, device=device, dtype=torch.bfloat16)
        return dh_plans(dz, w2, pre)

    return _plan_rows("fc1 backward dh plan", device, quick, plans)


def extra_rows(device: torch.device, quick: bool = False) -> list[dict]:
    """What `make gpu-check` records beside the timings: the memory rows, and fc1's forward and backward
    plans against cuBLAS."""
    return memory_rows(device, quick=quick) + gemm_rows(device, quick=quick) + dh_rows(device, quick=quick)


CPU_CASES = cases(torch.device("cpu"))


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.size}-{c.provider}" for c in CPU_CASES])
def test_linear_act(benchmark, case):
    benchmark.group = case.group
    benchmark(case.fn)


def test_dh_plans_run_on_cpu():
    """Every backward plan of the dh rows runs (the interpreter's) and agrees with eager's dpre."""
    dz, w2, pre = torch.randn(8, 16), torch.randn(16, 32) / 4, torch.randn(8, 32)
    plans = dh_plans(dz, w2, pre)
    expected_dpre, expected_dbias = plans.pop("eager mm + gelu_backward + sum")()
    for label, fn in plans.items():
        dpre, dbias, _ = fn()
        torch.testing.assert_close(dpre, expected_dpre, msg=label)
        torch.testing.assert_close(dbias, expected_dbias, msg=label)


def test_memory_rows_run_on_cpu():
    rows = memory_rows(torch.device("cpu"), quick=True)
    assert {"eager", "reference"} <= {row["provider"] for row in rows}
    for row in rows:
        if row["provider"] == "triton":
            assert row["bytes_saved_vs_eager"] > 0


if __name__ == "__main__":
    import sys

    for row in memory_rows(torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")):
        print(row)
