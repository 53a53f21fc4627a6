"""Registers, shared memory and spills of every CUDA kernel for sm_90a, from `nvcc -Xptxas -v` (no GPU).

Reads the nvcc commands CMake exported (build/cmake-py*/compile_commands.json, written by `make build`),
recompiles each kernels/*.cu for sm_90a only with ptxas verbose, and prints one row per kernel function.
`make cuda-resources` writes the table to bench/results/cuda-resources-sm90a.txt."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def nvcc_commands() -> list[tuple[str, list[str]]]:
    databases = sorted(ROOT.glob("build/cmake-py*/compile_commands.json"))
    if not databases:
        sys.exit("no build/cmake-py*/compile_commands.json: run `make build` with a CUDA toolkit first")
    commands = []
    for entry in json.loads(databases[-1].read_text()):
        if entry["file"].endswith(".cu"):
            argv = shlex.split(entry["command"])
            # One architecture, verbose ptxas, object thrown away.
            argv = [a for a in argv if not a.startswith(("--generate-code", "-gencode="))]
            paired = ("-o", "-gencode")  # flags whose value is the next argument
            argv = [a for i, a in enumerate(argv) if a not in paired and (i == 0 or argv[i - 1] not in paired)]
            argv += ["-gencode=arch=compute_90a,code=sm_90a", "-Xptxas=-v", "-o", "/dev/null"]
            commands.append((Path(entry["file"]).relative_to(ROOT).as_posix(), argv))
    return commands


def parse(log: str) -> list[dict]:
    rows, function = [], None
    for line in log.splitlines():
        if match := re.search(r"Compiling entry function '(\S+)' for 'sm_90a'", line):
            function = match.group(1)
        elif function and (match := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            rows.append({"function": function, "spill_stores": int(match.group(1)), "spill_loads": int(match.group(2))})
        elif function and rows and (match := re.search(r"Used (\d+) registers", line)):
            smem = re.search(r"(\d+) bytes smem", line)
            rows[-1].update(registers=int(match.group(1)), smem=int(smem.group(1)) if smem else 0)
    return rows


def demangle(names: list[str]) -> list[str]:
    result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else names


def short_name(name: str) -> str:
    """A kernel's name without its namespace and arguments; CUTLASS's GEMMs (whose template arguments run to
    thousands of characters) by what they compute: the op, schedule and dtype."""
    # c++filt gives up on some of these names, so match the mangled form too.
    if "device_kernel" in name and "GemmUniversal" in name:
        schedule = "pingpong" if "Pingpong" in name else "cooperative" if "Cooperative" in name else "?"
        dtype = "bf16" if "bfloat16_t" in name else "fp16" if "half_t" in name else "?"
        return f"CUTLASS mlp_gemm_bias_act {schedule} {dtype}"
    name = name.replace("internvideo_fast::(anonymous namespace)::", "").removeprefix("void ")
    name = re.sub(r"\(.*", "", name)
    return name if len(name) <= 80 else name[:77] + "..."


def main() -> int:
    lines = [f"{'file':<36} {'regs':>5} {'smem B':>7} {'spill B':>8}  kernel"]
    spilled = False
    for source, argv in nvcc_commands():
        result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            print(result.stderr[-3000:])
            return 1
        rows = parse(result.stdout + result.stderr)
        for row, name in zip(rows, demangle([r["function"] for r in rows])):
            spills = row["spill_stores"] + row["spill_loads"]
            spilled |= spills > 0
            registers, smem = row.get("registers", "-"), row.get("smem", "-")
            lines.append(f"{source:<36} {registers:>5} {smem:>7} {spills:>8}  {short_name(name)}")
    print("\n".join(lines))
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
