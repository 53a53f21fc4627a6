"""One list of every Triton kernel and the configurations it is launched with.

Each op module registers its kernels at import time with :func:`register_triton_kernel`, giving the
argument types and the exact configurations (block sizes, warps, stages) its launchers and autotuners
use, the default plan first. ``internvideo_fast.ops.framework.aot`` compiles every entry ahead of time for the
H100 (``make aot-check``; ``make test`` compiles each kernel's first config), and ``make gpu-check`` reports
the same list, so no kernel can be added without being checked.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One launch configuration: the constexpr values plus warps and pipeline stages."""

    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3

    def label(self) -> str:
        values = ",".join(f"{key}={value}" for key, value in self.constexprs.items())
        return f"{values},w{self.num_warps},s{self.num_stages}"


@dataclasses.dataclass(frozen=True)
class TritonKernelSpec:
    """A Triton kernel as the ahead-of-time check sees it.

    ``signature`` maps every non-constexpr argument to its Triton type (``"*fp16"``, ``"i32"``, ...; a
    tensor descriptor's block shape may name constexprs: ``"tensordesc<bf16[{BLOCK_M},{BLOCK_K}]>"``);
    ``multiplies_matrices`` marks kernels built on ``tl.dot``, which must compile to ``wgmma`` on sm_90a.
    ``aligned_only`` marks configs that the launcher uses only when every pointer and stride is a multiple of
    16 elements, so the check compiles them in that specialization alone; ``also_aligned`` has the check
    compile that specialization beside the general one (kernels that compile differently there, e.g. loads
    pipelined through shared memory, which need 16-byte aligned rows).
    """

    name: str
    kernel: Any
    signature: dict[str, str]
    configs: tuple[KernelConfig, ...]
    multiplies_matrices: bool = False
    aligned_only: bool = False
    also_aligned: bool = False


_KERNELS: dict[str, TritonKernelSpec] = {}


def register_triton_kernel(spec: TritonKernelSpec) -> TritonKernelSpec:
    if spec.name in _KERNELS and _KERNELS[spec.name].kernel is not spec.kernel:
        raise ValueError(f"a different Triton kernel is already registered as {spec.name!r}")
    if not spec.configs:
        raise ValueError(f"Triton kernel {spec.name!r} must register at least one config")
    _KERNELS[spec.name] = spec
    return spec


def triton_kernels() -> list[TritonKernelSpec]:
    """Every registered Triton kernel (importing the op modules registers them)."""
    import internvideo_fast.ops  # noqa: F401

    return list(_KERNELS.values())
