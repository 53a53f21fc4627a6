"""cross_attention: our Triton kernels against torch's scaled_dot_product_attention with the flash
(FlashAttention-2, the baseline) and the memory-efficient backends, bf16, forward alone and forward +
backward, on InternVideo's shapes (CMA both directions, the UniFormerV2 UniBlock query, the caption
decoder) in ``cases`` and, unless quick, flash-attn's grid (Sq = Sk in 512..16k, D in {64, 128},
B * S = 16k, 2048 channels) in ``late_cases``. FLOPs: forward ``4 * B * H * Sq * Sk * D``, backward 2.5x
that (forward + backward 3.5x).

``tile_sweep_rows`` (in `make gpu-check` with ``IVF_BENCH_TILE_SWEEP=1``) sweeps the 16-bit tile configs:
each candidate (block sizes, warps, stages) of the forward, the dK/dV kernel and the dQ kernel, swapped in
one kernel at a time, timed on the CMA shapes and one grid shape, and checked against the default config's
result (launched with ``deterministic=True``, so the op's own tuner stays out of the way). Every candidate
here compiles without spills for sm_90a in its aligned form with Triton 3.6 and 3.8; the winners became the
op's default configs. ``tuning_rows`` (always in `make gpu-check`) reports what the op's LaunchTuners chose
at runtime (``deterministic=False``, the default): one row per tuner and key, with every candidate's time and
the bench shapes that map to that key, so a GPU run shows which forward tile (of the pointer kernel, or of
the TMA kernel: labels ``tma:M.._N.._w.._s..``) and backward plan (split or atomic dQ) won per shape. On a GPU
the InternVideo shapes also run replayed from CUDA graphs (``... graph`` rows: kernel time without host
time), ours and sdpa-flash."""

from __future__ import annotations

import contextlib
import importlib
import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import Case, cuda_graphed
from internvideo_fast.ops import use_backend
from internvideo_fast.ops.framework.autotuning import launch_tuner, length_bucket, tuning_choices
from internvideo_fast.ops.framework.backend import triton_runs_on
from internvideo_fast.ops.cross_attention import OP_NAME, cross_attention

# (name, B, H, D, Sq, Sk)
SHAPES = [
    ("cma-mm->mae", 8, 16, 64, 2056, 1568),
    ("cma-mae->mm", 8, 16, 64, 1568, 2056),
    ("uniblock-query", 64, 12, 64, 1, 1576),
    ("caption", 64, 8, 64, 32, 1576),
]
FLASH_GRID = [
    (f"grid-s{seqlen}-d{head_dim}", 16384 // seqlen, 2048 // head_dim, head_dim, seqlen, seqlen)
    for head_dim in (64, 128) for seqlen in (512, 1024, 2048, 4096, 8192, 16384)
]
CPU_SHAPES = [("tiny", 2, 2, 32, 17, 64)]


def _ours(provider):
    def run(q, k, v):  # [B, S, H, D]
        with use_backend(provider, OP_NAME):
            return cross_attention(q, k, v)

    return run


def _sdpa(backend):
    def run(q, k, v):  # [B, S, H, D] -> SDPA's [B, H, S, D] through transposed views
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    return run


def cases(device: torch.device, quick: bool = False, shapes: list | None = None) -> list[Case]:
    """InternVideo's shapes (on CPU: a tiny one); `late_cases` has flash-attn's grid."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        shapes = shapes or (SHAPES[:1] + SHAPES[2:3] if quick else SHAPES)
        providers = {"sdpa-flash": _sdpa(SDPBackend.FLASH_ATTENTION),
                     "sdpa-efficient": _sdpa(SDPBackend.EFFICIENT_ATTENTION)}
        if triton_runs_on(device):
            providers["triton"] = _ours("triton")
        baseline_name = "sdpa-flash"
        dtype = torch.bfloat16
    else:
        # On CPU the Triton interpreter is a test tool, not a backend to time: the reference against SDPA's
        # math backend, so the bench script itself is exercised.
        shapes = CPU_SHAPES
        providers = {"sdpa-math": _sdpa(SDPBackend.MATH), "reference": _ours("reference")}
        baseline_name = "sdpa-math"
        dtype = torch.float32
    out = []
    for name, B, H, D, Sq, Sk in shapes:
        size = f"{name},B={B},H={H},D={D},{Sq}x{Sk},{str(dtype)[6:]}"
        q = torch.randn(B, Sq, H, D, device=device, dtype=dtype)
        k = torch.randn(B, Sk, H, D, device=device, dtype=dtype)
        v = torch.randn(B, Sk, H, D, device=device, dtype=dtype)
        grad = torch.randn(B, Sq, H, D, device=device, dtype=dtype)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        flops = 4 * B * H * Sq * Sk * D
        for provider, fn in providers.items():
            # Defaults bind this shape's tensors (a closure would see the loop's last shape).
            def forward(fn=fn, q=q, k=k, v=v):
                return fn(q, k, v)

            def forward_backward(fn=fn, leaves=leaves, grad=grad):
                result = fn(*leaves)
                # SDPA returns [B, H, Sq, D] views of [B, Sq, H, D] memory; ours returns [B, Sq, H, D].
                # autograd.grad: the gradients an attention layer hands on, without the += into leaves'
                # .grad that .backward() adds (three [B, S, H, D] adds: 0.084 ms a call,
                # bench/results/profile-*-run3.txt).
                torch.autograd.grad(result, leaves,
                                    grad if result.shape == grad.shape else grad.transpose(1, 2))

            baseline = provider == baseline_name
            out.append(Case("cross_attention_fwd", size, provider, forward, baseline=baseline, flops=flops))
            out.append(Case("cross_attention_fwd_bwd", size, provider, forward_backward, baseline=baseline,
                            flops=int(3.5 * flops)))
            if on_gpu and (name, B, H, D, Sq, Sk) in SHAPES and provider != "sdpa-efficient":
                # Replayed from CUDA graphs: the kernels' rate without the host time per call, which on a
                # cloud VM's host cores is close to our CMA forward + backward's GPU time
                # (bench/results/NOTES.md).
                out.append(Case("cross_attention_fwd graph", size, provider, cuda_graphed(forward),
                                baseline=baseline, flops=flops))
                out.append(Case("cross_attention_fwd_bwd graph", size, provider,
                                cuda_graphed(forward_backward), baseline=baseline, flops=int(3.5 * flops)))
    return out


def late_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """flash-attn's grid (GPU, unless quick): `make gpu-check` times it after every other module's cases and
    the host-time rows, so a run cut by its budget loses the long sweep first."""
    if device.type != "cuda" or quick:
        return []
    return cases(device, shapes=FLASH_GRID)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and BLOCK_D.
TUNE_CANDIDATES = {
    "fwd": {64: [(128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3), (128, 32, 8, 3)],
            128: [(128, 32, 8, 3), (128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3)]},
    "bwd_dkdv": {64: [(32, 128, 8, 1), (32, 128, 8, 2), (16, 128, 8, 2), (32, 64, 4, 2), (16, 64, 8, 2)],
                 128: [(16, 64, 8, 2), (16, 128, 8, 2)]},
    "bwd_dq": {64: [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3), (64, 32, 4, 2)],
               128: [(64, 32, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)]},
}
for _by_block_d in TUNE_CANDIDATES.values():
    _by_block_d[32] = _by_block_d[64]  # each D = 64 candidate also compiles spill-free at D = 32
TUNE_SHAPES = SHAPES[:2] + [FLASH_GRID[2], FLASH_GRID[8]]  # CMA both ways; grid S = 2048 at D 64 and 128


@contextlib.contextmanager
def _attention_config(kernel: str, block_d: int, config: tuple[int, int, int, int]):
    """Launch `kernel` at `config` for 16-bit inputs, aligned or not, inside the block."""
    module = importlib.import_module("internvideo_fast.ops.cross_attention.plans")
    tables = [module._CONFIGS["16bit"][kernel], module._ALIGNED_CONFIGS.setdefault(kernel, {})]
    saved = [dict(table) for table in tables]
    for table in tables:
        table[block_d] = config
    try:
        yield
    finally:
        for table, before in zip(tables, saved):
            table.clear()
            table.update(before)


def extra_rows(device: torch.device, quick: bool = False) -> list[dict]:
    """What `make gpu-check` records beside the timings: the tuners' choices (``tuning_rows``), and the tile
    sweep only with ``IVF_BENCH_TILE_SWEEP=1`` (the tuners now time their candidates on every bench shape, and
    the sweep's compiles would eat gpu-check's 8-minute budget)."""
    sweep = tile_sweep_rows(device, quick) if os.environ.get("IVF_BENCH_TILE_SWEEP") == "1" else []
    return sweep + tuning_rows(device, quick)


def tile_sweep_rows(device: torch.device, quick: bool = False) -> list[dict]:
    """The tile sweep (see the module docstring): one row per (shape, kernel, candidate)."""
    if not triton_runs_on(device):
        return []
    import common

    timer = common.time_cuda_ms if device.type == "cuda" else common.time_cpu_ms
    on_gpu = device.type == "cuda"
    shapes = TUNE_SHAPES[:1 if quick else None] if on_gpu else CPU_SHAPES
    dtype = torch.bfloat16 if on_gpu else torch.float16
    fwd_op = torch.ops.internvideo_fast.cross_attention_fwd
    bwd_op = torch.ops.internvideo_fast.cross_attention_bwd
    rows = []
    for name, B, H, D, Sq, Sk in shapes:
        q, k, v, dout = (torch.randn(B, S, H, D, device=device, dtype=dtype) for S in (Sq, Sk, Sk, Sq))
        scale = D ** -0.5
        # deterministic=True (the last argument) launches the tables' default tile, which this sweep swaps.
        out, lse = fwd_op(q, k, v, None, None, scale, 0.0, True)
        expected = {"fwd": out, "bwd": bwd_op(dout, q, k, v, out, lse, None, None, scale, 0.0, True)}
        flops = 4 * B * H * Sq * Sk * D
        block_d = max(32, 1 << (D - 1).bit_length())
        for kernel, by_block_d in TUNE_CANDIDATES.items():
            for config in by_block_d.get(block_d, [])[:1 if quick else None]:
                row = {"op": "tune cross_attention", "size": f"{name},B={B},H={H},D={D},{Sq}x{Sk}",
                       "kernel": kernel, "config": "M{}_N{}_w{}_s{}".format(*config)}
                with _attention_config(kernel, block_d, config):
                    if kernel == "fwd":
                        def run():
                            return fwd_op(q, k, v, None, None, scale, 0.0, True)[0]
                    else:
                        def run():
                            return bwd_op(dout, q, k, v, out, lse, None, None, scale, 0.0, True)
                    try:
                        result = run()
                        reference = expected["fwd" if kernel == "fwd" else "bwd"]
                        results = result if isinstance(result, (tuple, list)) else (result,)
                        references = reference if isinstance(reference, (tuple, list)) else (reference,)
                        row["max_diff_vs_default"] = max(
                            (a.float() - b.float()).abs().max().item() for a, b in zip(results, references))
                        row["ms"] = timer(run)
                    except Exception as error:  # noqa: BLE001 - a failing candidate is a finding
                        row["error"] = f"{type(error).__name__}: {error}"[:300]
                        rows.append(row)
                        continue
                # The backward rows time the whole backward (preprocess + dK/dV + dQ) with one kernel swapped.
                row["TFLOP/s"] = (flops if kernel == "fwd" else 2.5 * flops) / row["ms"] / 1e9
                rows.append(row)
    return rows


# The forward tuners' keys end with whether the TMA kernel was offered; the backward's stop at BH_bucket.
_KEY_FIELDS = ("dtype", "D", "aligned", "kv_lengths", "dropout", "Sq_bucket", "Sk_bucket", "BH_bucket", "tma")


def tuning_rows(device: torch.device, quick: bool = False) -> list[dict]:
    """The cross-attention tuners' choices (see the module docstring). On a GPU, first runs forward +
    backward of each InternVideo shape once in bf16, so that each has been tuned even when `cases` did
    not run (the grid's shapes are tuned by `late_cases`, which gpu-check runs after this; its final
    `tuning` rows have every key); on CPU nothing is tuned, so only choices made elsewhere in the process
    are reported."""
    shapes = SHAPES + FLASH_GRID
    if device.type == "cuda" and triton_runs_on(device):
        for name, B, H, D, Sq, Sk in SHAPES[:2 if quick else None]:
            q, k, v = (torch.randn(B, S, H, D, device=device, dtype=torch.bfloat16, requires_grad=True)
                       for S in (Sq, Sk, Sk))
            with use_backend("triton", OP_NAME):
                cross_attention(q, k, v).sum().backward()
    rows = []
    for tuner, choices in tuning_choices().items():
        if not tuner.startswith("cross_attention"):
            continue
        for key, label in choices.items():
            fields = dict(zip(_KEY_FIELDS, key))
            wanted = tuple(fields.get(name) for name in ("D", "Sq_bucket", "Sk_bucket", "BH_bucket"))
            matching = [
                name for name, B, H, D, Sq, Sk in shapes
                if (D, length_bucket(Sq), length_bucket(Sk), length_bucket(B * H)) == wanted
            ]
            timings = launch_tuner(tuner).timings.get(key, {})
            default = next(iter(timings), None)  # candidates are timed in order, the default first
            timed = default is not None and label in timings
            rows.append({
                "op": "tuning cross_attention", "tuner": tuner, "key": fields, "shapes": matching,
                "choice": label, "default": default, "candidates_ms": timings,
                "speedup_vs_default": timings[default] / timings[label] if timed else None,
            })
    return rows


CPU_CASES = cases(torch.device("cpu"))


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.op}-{c.size}-{c.provider}" for c in CPU_CASES])
def test_cross_attention(benchmark, case):
    benchmark.group = case.group
    benchmark(case.fn)


@pytest.mark.skipif(not triton_runs_on(torch.device("cpu")), reason="needs the Triton interpreter")
def test_tile_sweep_runs_under_the_interpreter():
    rows = tile_sweep_rows(torch.device("cpu"), quick=True)
    rows = [row for row in rows if row["op"] == "tune cross_attention"]
    assert {row["kernel"] for row in rows} == {"fwd", "bwd_dkdv", "bwd_dq"}
    assert all("error" not in row and row["max_diff_vs_default"] < 1e-2 for row in rows), rows


def test_tuning_rows_report_each_choice_with_its_shapes():
    """A choice as a GPU tuner records it (CPU never tunes), reported with the bench shapes of its key."""
    tuner = launch_tuner("cross_attention_bwd")
    key = ("torch.bfloat16", 64, True, False, False, 4096, 2048, 128, True)  # CMA mm->mae: 2056 x 1568
    tuner._best[key] = "atomic:dkdv=M32_N128_w8_s2"
    tuner.timings[key] = {"split:dkdv=M32_N64_w4_s2,dq=M128_N64_w8_s3": 1.2,
                          "atomic:dkdv=M32_N128_w8_s2": 0.8,
                          "split_tma:dkdv=M32_N64_w4_s2,dq=M128_N32_w8_s2": 0.9}
    try:
        rows = [row for row in tuning_rows(torch.device("cpu")) if row["key"] == dict(zip(_KEY_FIELDS, key))]
    finally:
        del tuner._best[key], tuner.timings[key]
    assert len(rows) == 1 and rows[0]["shapes"] == ["cma-mm->mae"], rows
    assert rows[0]["choice"].startswith("atomic:") and rows[0]["default"].startswith("split:")
    assert abs(rows[0]["speedup_vs_default"] - 1.5) < 1e-9


def test_tuning_rows_report_tma_forward_candidates():
    """The forward tuner's TMA candidates appear under their labels, beside the pointer kernel's tiles."""
    tuner = launch_tuner("cross_attention_fwd")
    key = ("torch.bfloat16", 64, True, False, False, 4096, 2048, 128, True)
    tuner._best[key] = "tma:M128_N64_w8_s3"
    tuner.timings[key] = {"M128_N64_w8_s3": 0.9, "tma:M128_N64_w8_s3": 0.6}
    try:
        rows = [row for row in tuning_rows(torch.device("cpu")) if row["key"] == dict(zip(_KEY_FIELDS, key))]
    finally:
        del tuner._best[key], tuner.timings[key]
    assert len(rows) == 1 and rows[0]["choice"] == "tma:M128_N64_w8_s3"
    assert rows[0]["default"] == "M128_N64_w8_s3"
    assert set(rows[0]["candidates_ms"]) == {"M128_N64_w8_s3", "tma:M128_N64_w8_s3"}
    assert abs(rows[0]["speedup_vs_default"] - 1.5) < 1e-9
