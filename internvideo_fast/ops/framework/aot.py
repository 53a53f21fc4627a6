"""Ahead-of-time check of every registered Triton kernel for the H100 (sm_90a), with no GPU needed.

For each kernel and each of its registered configs: compile with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)``, then assemble its PTX with the ``ptxas`` bundled in Triton (``-v``) and
check that it

- compiles at all,
- fits the H100's shared memory (227 KB per block),
- spills nothing (no spill stores or loads, which would put registers in local memory),
- uses ``wgmma`` when it multiplies matrices (otherwise Hopper runs it on the older mma path).

Each report also counts the SASS instructions of the kernel's loops (``cuobjdump -sass``, bundled with
Triton): a row loop's instructions per row and thread, which tests/test_aot_sm90.py holds to a budget
where issue rate is part of a kernel's speed.

Matmul kernels are checked twice: as compiled for arbitrary arguments, and with every pointer and size a
multiple of 16 (the specialization real ViT launches get, which pipelines deeper and uses more shared
memory).

Run it as ``python -m internvideo_fast.ops.framework.aot`` (a table, exit 1 on any problem) with
``TRITON_INTERPRET`` unset. ``make test`` compiles each kernel's default plan alone (``--default-only``, see
:func:`default_variant`); ``make aot-check`` runs the full sweep of every config and variant
(tests/test_aot_sm90.py, both through pytest).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from internvideo_fast.ops.framework.kernel_registry import KernelConfig, TritonKernelSpec, triton_kernels

H100_SHARED_MEMORY_PER_BLOCK = 227 * 1024


@dataclasses.dataclass
class AotReport:
    kernel: str
    config: str
    shared_bytes: int | None = None
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    has_wgmma: bool | None = None
    multiplies_matrices: bool = False
    error: str | None = None
    # SASS instructions of each loop (a backward branch to its target), by start address: a per-iteration
    # cost that can be compared without a GPU (a row loop's instructions per row and thread).
    loop_instructions: list[int] | None = None
    # All SASS instructions of the kernel: for a kernel without a loop (an elementwise pass: one block of
    # elements per program), its cost per thread.
    instructions: int | None = None

    def problems(self) -> list[str]:
        if self.error is not None:
            return [f"does not compile: {self.error}"]
        found = []
        if self.shared_bytes is not None and self.shared_bytes > H100_SHARED_MEMORY_PER_BLOCK:
            found.append(f"needs {self.shared_bytes} B of shared memory > {H100_SHARED_MEMORY_PER_BLOCK} B")
        if self.spill_stores or self.spill_loads:
            found.append(f"spills registers ({self.spill_stores} B stores, {self.spill_loads} B loads)")
        if self.multiplies_matrices and not self.has_wgmma:
            found.append("multiplies matrices without wgmma")
        return found


def ptxas_path() -> str:
    """The ptxas that Triton bundles (it matches the PTX version Triton emits)."""
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return os.environ.get("TRITON_PTXAS_PATH", str(bundled))


def cuobjdump_path() -> str:
    """The cuobjdump that Triton bundles."""
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


_SASS_LINE = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);")


def _sass_instructions(sass: str) -> list[tuple[int, str]]:
    """(address, text) of each instruction in ``cuobjdump -sass`` text."""
    return [(int(m.group(1), 16), m.group(2)) for m in map(_SASS_LINE.match, sass.splitlines()) if m]


def instruction_count(sass: str) -> int:
    """Instructions in ``cuobjdump -sass`` text of one kernel (the padding NOPs after EXIT included)."""
    return len(_sass_instructions(sass))


def loop_instruction_counts(sass: str) -> list[int]:
    """Instructions from each backward branch's target to the branch (``cuobjdump -sass`` text of one
    kernel), in order of the loops' starts; nested loops count their inner ones too."""
    instructions = _sass_instructions(sass)
    loops = []
    for address, text in instructions:
        branch = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) < address:
            loops.append((int(branch.group(1), 16), address))
    return [sum(1 for address, _ in instructions if start <= address <= end) for start, end in sorted(loops)]


def parse_ptxas_verbose(log: str) -> dict[str, int]:
    """Registers and spill bytes from ``ptxas -v`` output."""
    def number(pattern: str) -> int:
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
    }


def compile_for_sm90(spec: TritonKernelSpec, config: KernelConfig, aligned: bool = False,
                     ints_one: bool = False) -> AotReport:
    """Compile one kernel at one config for sm_90a and read its resource use.

    `aligned` compiles the variant a real launch gets when every pointer and integer argument is a
    multiple of 16 (Triton's ``tt.divisibility`` specialization): vectorized loads and deeper pipelining,
    so more shared memory than the unaligned variant; ViT shapes (768, 1024, 3072) always get it.
    `ints_one` compiles every integer argument as the constant 1, as Triton launches an argument equal to
    1: code that treats an integer argument as a tensor (``n.to(...)``) fails only there."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    label = config.label() + (",aligned16" if aligned else "") + (",ints=1" if ints_one else "")
    report = AotReport(spec.name, label, multiplies_matrices=spec.multiplies_matrices)
    constexprs = dict(config.constexprs)
    if ints_one:  # Triton launches an integer argument equal to 1 as the constant 1
        constexprs.update({name: 1 for name, kind in spec.signature.items() if kind in ("i32", "i64")})
    # Tensor-descriptor types name their block shape, e.g. "tensordesc<bf16[{BLOCK_M},{BLOCK_K}]>".
    signature = {name: kind.format(**config.constexprs) for name, kind in spec.signature.items()}
    signature.update({name: "constexpr" for name in constexprs})
    attrs = None
    if aligned:
        arg_names = spec.kernel.arg_names
        attrs = {
            (arg_names.index(name),): [["tt.divisibility", 16]]
            for name, kind in signature.items()
            if kind.startswith("*") or kind in ("i32", "i64")
        }
    try:
        source = ASTSource(fn=spec.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton_compile(
            source,
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": config.num_warps, "num_stages": config.num_stages},
        )
    except Exception as error:  # noqa: BLE001 - any compiler failure is the finding
        report.error = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
        return report
    ptx = compiled.asm["ptx"]
    report.shared_bytes = int(compiled.metadata.shared)
    report.has_wgmma = "wgmma" in ptx
    with tempfile.TemporaryDirectory() as folder:
        ptx_file = Path(folder) / "kernel.ptx"
        ptx_file.write_text(ptx)
        cubin = Path(folder) / "kernel.cubin"
        result = subprocess.run(
            [ptxas_path(), "-arch=sm_90a", "-v", str(ptx_file), "-o", str(cubin)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode == 0 and Path(cuobjdump_path()).exists():
            sass = subprocess.run([cuobjdump_path(), "-sass", str(cubin)], capture_output=True, text=True,
                                  check=False).stdout
            report.loop_instructions = loop_instruction_counts(sass)
            report.instructions = instruction_count(sass)
    if result.returncode != 0:
        report.error = f"ptxas failed: {result.stderr.strip()[-300:]}"
        return report
    resources = parse_ptxas_verbose(result.stderr + result.stdout)
    report.registers = resources["registers"]
    report.spill_stores = resources["spill_stores"]
    report.spill_loads = resources["spill_loads"]
    return report


def default_variant(spec: TritonKernelSpec) -> tuple[TritonKernelSpec, KernelConfig, bool]:
    """The one compile that stands for `spec` without the sweep: its first registered config (registrations
    list the default plan first) in the form ViT-shaped launches take, 16-aligned wherever the sweep compiles
    that specialization (matmul, ``aligned_only`` and ``also_aligned`` kernels)."""
    return spec, spec.configs[0], spec.multiplies_matrices or spec.aligned_only or spec.also_aligned


_VARIANTS: list = []  # what forked workers compile, by index (kernels do not pickle)


def _compile_variant(index: int) -> AotReport:
    return compile_for_sm90(*_VARIANTS[index])


def check_all(kernels: list[TritonKernelSpec] | None = None, jobs: int = 1,
              default_only: bool = False) -> list[AotReport]:
    """Every config of every kernel; matmul and ``also_aligned`` kernels also in their 16-aligned variant
    (see compile_for_sm90), and aligned-only configs in that variant alone. `default_only` compiles each
    kernel once instead (:func:`default_variant`). `jobs` > 1 compiles in that many forked processes."""
    kernels = triton_kernels() if kernels is None else kernels
    if default_only:
        return _compile_variants([default_variant(spec) for spec in kernels], jobs)
    variants = [(spec, config, False) for spec in kernels if not spec.aligned_only for config in spec.configs]
    variants += [
        (spec, config, True)
        for spec in kernels if spec.multiplies_matrices or spec.aligned_only or spec.also_aligned
        for config in spec.configs
    ]
    # Integer arguments of 1: every kernel once, at its first config (the specialization changes the code
    # the same way at every config).
    variants += [(spec, spec.configs[0], spec.aligned_only, True) for spec in kernels
                 if any(kind in ("i32", "i64") for kind in spec.signature.values())]
    return _compile_variants(variants, jobs)


def _compile_variants(variants: list[tuple], jobs: int) -> list[AotReport]:
    if jobs <= 1 or len(variants) < 2:
        return [compile_for_sm90(*variant) for variant in variants]
    import concurrent.futures
    import multiprocessing

    _VARIANTS[:] = variants
    try:
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            return list(pool.map(_compile_variant, range(len(variants)), chunksize=4))
    finally:
        _VARIANTS.clear()


def format_table(reports: list[AotReport]) -> str:
    header = f"{'kernel':<28} {'config':<44} {'smem KB':>8} {'regs':>5} {'spill B':>8} {'wgmma':>6}  verdict"
    lines = [header, "-" * len(header)]
    for report in reports:
        problems = report.problems()
        smem = f"{report.shared_bytes / 1024:.1f}" if report.shared_bytes is not None else "-"
        spill = (report.spill_stores or 0) + (report.spill_loads or 0) if report.error is None else "-"
        wgmma = "-" if report.has_wgmma is None else ("yes" if report.has_wgmma else "no")
        lines.append(
            f"{report.kernel:<28} {report.config:<44} {smem:>8} {report.registers or '-':>5} {spill:>8} "
            f"{wgmma:>6}  {'ok' if not problems else '; '.join(problems)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", action="append", help="only these kernels (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON instead of a table")
    parser.add_argument("--default-only", action="store_true",
                        help="each kernel once: its default plan as ViT-shaped launches take it")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compile processes (default: one per CPU)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels this check compiles")
    kernels = [k for k in triton_kernels() if not args.kernel or k.name in args.kernel]
    reports = check_all(kernels, jobs=args.jobs, default_only=args.default_only)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) | {"problems": r.problems()} for r in reports]))
        return 0
    print(format_table(reports))
    failed = [r for r in reports if r.problems()]
    print(f"\n{len(reports) - len(failed)} ok, {len(failed)} with problems ({len(kernels)} kernels)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
