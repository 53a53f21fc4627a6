"""Plots of a `make gpu-check` result file: ``python bench/plot_results.py RESULT.json [OUT_DIR]``.

- ``<stem>-cross-attention-grid.png``: TFLOP/s against sequence length on flash-attn's grid (Sq = Sk,
  D 64 and 128), forward and forward + backward, ours against SDPA's flash and memory-efficient backends,
  with the measured bf16 matmul rate drawn across;
- ``<stem>-cross-attention-internvideo.png``: the same on InternVideo's shapes (CMA, UniBlock query, caption);
- ``<stem>-ffn.png``: the FFN's TFLOP/s (eager, torch.compile, ours) and dropout + residual + LayerNorm's
  GB/s against the measured copy bandwidth.

Needs matplotlib (not a runtime dependency; `make gpu-check` skips the plots without it).
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from collections import defaultdict
from pathlib import Path


def _ceiling(rows: list[dict], op: str, metric: str) -> float | None:
    values = [row[metric] for row in rows if row["op"] == op and metric in row]
    return max(values) if values else None


def _provider_color(provider: str) -> str:
    """One colour per provider across every panel (ours is always the same orange)."""
    fixed = {"eager": "tab:blue", "sdpa-flash": "tab:blue", "triton": "tab:orange", "ours": "tab:orange",
             "fused": "tab:orange", "compiled": "tab:green", "sdpa-efficient": "tab:purple",
             "sdpa-math": "tab:brown", "flash-attn": "tab:cyan", "xformers": "tab:olive",
             "reference": "tab:gray"}
    return fixed.get(provider, ("tab:pink", "tab:red", "black")[zlib.crc32(provider.encode()) % 3])


def _variants(rows: list[dict]) -> list[str]:
    """Op-name suffixes to plot, one row of panels each: the eager calls, then the calls replayed from CUDA
    graphs (kernels without host time) where those were measured."""
    return [""] + ([" graph"] if any(row["op"].endswith(" graph") for row in rows) else [])


def _variants_note(variants: list[str]) -> str:
    return " (bottom: replayed from CUDA graphs)" if len(variants) > 1 else ""


def _bars(axis, rows: list[dict], op: str, metric: str, ceiling: float | None, ceiling_label: str) -> None:
    """Grouped bars: one group per size, one bar per provider."""
    import numpy as np

    selected = [row for row in rows if row["op"] == op and metric in row]
    sizes = list(dict.fromkeys(row["size"] for row in selected))
    providers = list(dict.fromkeys(row["provider"] for row in selected))
    width = 0.8 / max(1, len(providers))
    for index, provider in enumerate(providers):
        values = {row["size"]: row[metric] for row in selected if row["provider"] == provider}
        axis.bar(np.arange(len(sizes)) + index * width, [values.get(size, 0.0) for size in sizes], width,
                 label=provider, color=_provider_color(provider))
    if ceiling:
        axis.axhline(ceiling, color="black", linestyle="--", linewidth=1, label=ceiling_label)
    axis.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2)
    axis.set_xticklabels([size.replace(",", "\n") for size in sizes], fontsize=7)
    axis.set_ylabel(metric)
    axis.set_title(op)
    axis.legend(fontsize=7)


def plot_report(path: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(Path(path).read_text())
    rows = [row for row in report["benchmarks"] if "error" not in row]
    card = report["machine"].get("card", "?")
    stem = Path(path).stem
    matmul = _ceiling(rows, "ceiling matmul", "TFLOP/s")
    copy = _ceiling(rows, "ceiling copy", "GB/s")
    written = []

    grid = defaultdict(list)  # (op, provider, head dim) -> [(seqlen, TFLOP/s)]
    for row in rows:
        match = re.match(r"grid-s(\d+)-d(\d+),", row["size"])
        if row["op"].startswith("cross_attention") and match and "TFLOP/s" in row:
            grid[row["op"], row["provider"], int(match[2])].append((int(match[1]), row["TFLOP/s"]))
    if grid:
        figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for axis, op in zip(axes, ("cross_attention_fwd", "cross_attention_fwd_bwd")):
            for (row_op, provider, head_dim), points in sorted(grid.items()):
                if row_op == op:
                    points.sort()
                    axis.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                              color=_provider_color(provider), linestyle="-" if head_dim == 64 else "--",
                              label=f"{provider} D={head_dim}")
            if matmul:
                axis.axhline(matmul, color="black", linewidth=1, label="bf16 matmul (measured)")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("sequence length (Sq = Sk), B * S = 16k, 2048 channels")
            axis.set_ylabel("TFLOP/s")
            axis.set_title(op)
            axis.legend(fontsize=7)
        figure.suptitle(f"cross_attention bf16 on {card}")
        figure.tight_layout()
        written.append(out_dir / f"{stem}-cross-attention-grid.png")
        figure.savefig(written[-1], dpi=110)
        plt.close(figure)

    def is_internvideo(row):
        return row["op"].startswith("cross_attention") and not row["size"].startswith("grid-")

    if any(is_internvideo(row) for row in rows):
        shapes = [row for row in rows if is_internvideo(row)]
        variants = _variants(shapes)
        figure, axes = plt.subplots(len(variants), 2, figsize=(13, 4.5 * len(variants)), squeeze=False)
        for axes_row, variant in zip(axes, variants):
            for axis, op in zip(axes_row, ("cross_attention_fwd", "cross_attention_fwd_bwd")):
                _bars(axis, shapes, op + variant, "TFLOP/s", matmul, "bf16 matmul (measured)")
        figure.suptitle(f"cross_attention on InternVideo's shapes, {card}{_variants_note(variants)}")
        figure.tight_layout()
        written.append(out_dir / f"{stem}-cross-attention-internvideo.png")
        figure.savefig(written[-1], dpi=110)
        plt.close(figure)

    if any(row["op"] in ("ffn+bwd", "dropout_add_ln+bwd") for row in rows):
        variants = _variants(rows)
        figure, axes = plt.subplots(len(variants), 3, figsize=(16, 4.5 * len(variants)), squeeze=False)
        for axis_row, variant in zip(axes, variants):
            _bars(axis_row[0], rows, "ffn+bwd" + variant, "TFLOP/s", matmul, "bf16 matmul (measured)")
            _bars(axis_row[1], rows, "dropout_add_ln" + variant, "GB/s", copy, "copy (measured)")
            _bars(axis_row[2], rows, "dropout_add_ln+bwd" + variant, "GB/s", copy, "copy (measured)")
        figure.suptitle(f"FFN kernels on {card}{_variants_note(variants)}")
        figure.tight_layout()
        written.append(out_dir / f"{stem}-ffn.png")
        figure.savefig(written[-1], dpi=110)
        plt.close(figure)
    return written


if __name__ == "__main__":
    result = Path(sys.argv[1])
    for plot in plot_report(result, Path(sys.argv[2]) if len(sys.argv) > 2 else result.parent):
        print(plot)
