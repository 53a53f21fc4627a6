"""Kernels and configs that the ahead-of-time check must pass or flag (tests/test_aot_sm90.py runs this
file without the Triton interpreter and reads its JSON)."""

import dataclasses
import json

import triton
import triton.language as tl

from internvideo_fast.ops.framework.aot import compile_for_sm90
from internvideo_fast.ops.framework.kernel_registry import KernelConfig, TritonKernelSpec, triton_kernels


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # A plain tiled matmul (row-major, sizes multiples of the blocks): only the check's test subject.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    depth = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rows[:, None] * K + (k + depth)[None, :])
        b = tl.load(b_ptr + (k + depth)[:, None] * N + cols[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rows[:, None] * N + cols[None, :], acc.to(tl.bfloat16))


@triton.jit
def _int_as_tensor_kernel(x_ptr, n, BLOCK: tl.constexpr):
    # Treats the integer argument as a tensor (.to): fine for n != 1, a compile error where Triton passes 1
    # as a constant.
    offsets = tl.arange(0, BLOCK)
    tl.store(x_ptr + offsets, offsets.to(tl.float32) * n.to(tl.float32))


def _matmul(block_m, block_n, block_k, warps, stages):
    config = KernelConfig({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}, warps, stages)
    signature = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32"}
    return TritonKernelSpec("test_matmul", _matmul_kernel, signature, (config,), multiplies_matrices=True)


def subjects() -> dict[str, TritonKernelSpec]:
    tube_mask = next(spec for spec in triton_kernels() if spec.name == "tube_mask")
    return {
        "good_matmul": _matmul(128, 128, 64, 8, 3),
        # Measured on this machine: 256x256x64 bf16 tiles at 4 warps spill about 6.5 KB.
        "spilling_matmul": _matmul(256, 256, 64, 4, 3),
        # One stage of 256x256 + 256x256 bf16 tiles alone needs 256 KB of shared memory.
        "oversized_smem_matmul": _matmul(256, 256, 256, 8, 3),
        # No tl.dot inside: claimed as a matmul kernel, it lacks wgmma.
        "claims_matmul": dataclasses.replace(tube_mask, configs=tube_mask.configs[:1], multiplies_matrices=True),
        "int_as_tensor": TritonKernelSpec(
            "test_int_as_tensor", _int_as_tensor_kernel, {"x_ptr": "*fp32", "n": "i32"},
            (KernelConfig({"BLOCK": 64}, 1, 1),),
        ),
    }


if __name__ == "__main__":
    reports = {}
    for name, spec in subjects().items():
        report = compile_for_sm90(spec, spec.configs[0])
        reports[name] = dataclasses.asdict(report) | {"problems": report.problems()}
    int_as_tensor = subjects()["int_as_tensor"]
    ones = compile_for_sm90(int_as_tensor, int_as_tensor.configs[0], ints_one=True)
    reports["int_as_tensor_ints_one"] = dataclasses.asdict(ones) | {"problems": ones.problems()}
    print(json.dumps(reports))
