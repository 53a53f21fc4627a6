"""Fused dropout + drop-path + residual add + LayerNorm or RMSNorm (the pre-norm transformer block's seam).

For ``x, residual [..., D]`` flattened to ``rows = x.numel() / D`` rows, a per-sample drop-path scale
``s [B]`` (``B = x.shape[0]``, each sample owning ``rows / B`` consecutive rows; 1 when absent), a dropout
probability ``p`` and a keep mask ``k`` (1 where kept):

    h      = residual + x * k / (1 - p) * s[sample]        (new_residual; residual None: no add)
    mean   = sum(h) / D,      rstd = 1 / sqrt(sum((h - mean)^2) / D + eps)
    xhat   = (h - mean) * rstd
    normed = xhat * weight + bias                           (weight / bias None: 1 / 0)

RMSNorm (``dropout_add_rms_norm``, as flash-attn's) is the same with ``mean = 0``: ``rstd = 1 / sqrt(sum(h^2)
/ D + eps)``, ``xhat = h * rstd``, and no ``sum(g) / D`` term in the backward's ``dh``.

Backward, for ``dy = d normed`` and ``dr = d new_residual`` (from the residual stream's later uses):

    g         = dy * weight
    dh        = rstd * (g - xhat * sum(g * xhat) / D - sum(g) / D) + dr
    dresidual = dh,     dx = dh * k / (1 - p) * s[sample]      (no dropout, no drop path: dx is dresidual,
                                                             stored once)
    dweight   = sum_rows(dy * xhat),     dbias = sum_rows(dy)

Inside the kernels every value is fp32 whatever the input dtype (fp32 / fp16 / bf16); ``normed`` and
``new_residual`` are stored in x's dtype. ``dweight`` / ``dbias`` are summed per program into a
``[programs, D]`` fp32 buffer and reduced with ``torch.sum(0)``, so they are deterministic. The backward's
warps, programs per SM and load stages are timed on the GPU by a LaunchTuner (``_BWD_PLAN_SHAPES``); the
plan fixes how rows split over programs, so across processes dweight / dbias are bitwise equal under
``IVF_AUTOTUNE=0``. The forward runs one row per program, or (a tuner candidate, ``_FWD_LOOP_PLAN_SHAPES``)
the backward's structure: a block of rows per program, weight and bias loaded once, the row loop pipelined.

The dropout mask draws one Philox call per eight elements (see internvideo_fast/ops/triton_common/philox.py);
it is never stored: the backward regenerates it from the seed, and ``dropout_keep_mask(seed, shape, p,
elements_per_draw=8)`` reproduces it bitwise in PyTorch. The seed is a one-element int64 tensor on x's
device (no host sync; CUDA-graph and torch.compile friendly). Rows wider than ``MAX_KERNEL_D`` run on the
reference. Design notes: DESIGN.md beside this file.
"""

from internvideo_fast.ops.dropout_add_layer_norm.interface import dropout_add_layer_norm, dropout_add_rms_norm
from internvideo_fast.ops.dropout_add_layer_norm.reference import (
    MAX_KERNEL_D,
    OP_NAME,
    SUPPORTED_DTYPES,
    dropout_add_layer_norm_ref,
    dropout_add_rms_norm_ref,
)
from internvideo_fast.ops.triton_common.philox import dropout_keep_mask, dropout_scalars, dropout_threshold

__all__ = [
    "MAX_KERNEL_D",
    "OP_NAME",
    "SUPPORTED_DTYPES",
    "dropout_add_layer_norm",
    "dropout_add_layer_norm_ref",
    "dropout_add_rms_norm",
    "dropout_add_rms_norm_ref",
    "dropout_keep_mask",
    "dropout_scalars",
    "dropout_threshold",
]
