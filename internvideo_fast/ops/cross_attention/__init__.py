"""Flash cross-attention (non-causal, different query and key lengths), forward and backward, in Triton.

For ``q [B, Sq, H, D]``, ``k, v [B, Sk, H, D]``, a scale ``c`` (default ``D ** -0.5``), per-sample key
lengths ``L[b]`` (``Sk`` when ``kv_lengths`` is None), a dropout probability ``p`` and a keep mask ``Z``
(1 where kept, over ``[B, H, Sq, Sk]``):

    S[b,h,i,j] = c * q[b,i,h,:] . k[b,j,h,:]                       for j < L[b]  (keys j >= L[b]: -inf)
    lse[b,h,i] = log sum_j exp(S[b,h,i,j]),     P = exp(S - lse)
    out[b,i,h] = sum_j P[b,h,i,j] * Z[b,h,i,j] / (1 - p) * v[b,j,h,:]

Backward (FlashAttention-2, recomputing P from the stored lse; ``Pd = P * Z / (1 - p)``):

    delta[b,h,i] = sum_d dout[b,i,h,d] * out[b,i,h,d]
    dv = Pd^T dout,    dP = (dout v^T) * Z / (1 - p),    dS = P * (dP - delta),
    dq = c * dS k,     dk = c * dS^T q

Kernels (every value fp32 inside; q/k/v fp32, fp16 or bf16; fp32 matmuls run in IEEE fp32, no tf32):

- ``_cross_attention_fwd_kernel``: one program per (query block, b * h, key split); online softmax in the
  exp2 domain over the split's key blocks. With one split it writes ``out`` (q's dtype) and ``lse``
  ``[B, H, Sq]`` fp32 directly. For a few queries against many keys (``Sq <= 16``, the UniBlock query
  and decoding) the keys are split over several programs (flash-decoding), which write fp32 partial
  ``(out, lse)`` per split, and ``_cross_attention_combine_kernel`` merges them with their lse weights.
- ``_cross_attention_fwd_tma_kernel``: the same forward (grid, outputs, split keys, dropout keying) for
  16-bit inputs on sm_90+, with q / k / v blocks loaded by the TMA unit from 4-D descriptors over
  ``[B, S, H, D]`` (zero-filled past S and D, no load masks); the key loop runs the full key blocks
  unmasked, then at most one masked tail block (scores -inf and v rows zeroed past the split's end). The
  scale is folded into the exponent and ``P V`` accumulates in place, so it rounds differently from the
  pointer kernel in the last bits. A GPU tuning candidate only (after the pointer kernel's tiles), where
  ``_tma_layout_ok`` holds.
- ``_cross_attention_bwd_preprocess_kernel``: ``delta``.
- ``_cross_attention_bwd_dkdv_kernel``: one program per (key block, b * h), looping over all query blocks.
  With ``ATOMIC_DQ`` it also adds each tile's ``c * dS k`` into an fp32 dq with ``tl.atomic_add``.
- ``_cross_attention_bwd_dq_kernel``: one program per (query block, b * h), looping over the key blocks.
- ``_cross_attention_bwd_dkdv_tma_kernel`` and ``_cross_attention_bwd_dq_tma_kernel``: the two backward
  kernels (no atomic dq) for 16-bit inputs on sm_90+ with TMA loads, as the TMA forward: the operands a
  loop brings (q and dout for dK/dV, k and v for dQ) come to shared memory by TMA, where wgmma reads them;
  keys at or past the length are zeroed where they are loaded (once per dK/dV program; in dQ's masked tail
  block), so padded rows may hold anything, NaN included.

Backward plans: *split* runs the dK/dV kernel, then the dQ kernel (no atomics; 7 matmuls per tile pair,
since the dQ kernel recomputes ``q k^T`` and ``dout v^T``); *atomic* runs the dK/dV kernel with
``ATOMIC_DQ`` and converts the fp32 dq to q's dtype (5 matmuls, FlashAttention-2's Triton backward), whose
dq rounding depends on the order the atomics land in; *split_tma* is the split plan on the TMA kernels (a
GPU tuning candidate only, where ``_tma_layout_ok`` holds for q, k, v and dout). ``deterministic=True``
runs the split plan at the default tiles, never tuned, so forward and gradients are bitwise identical run
to run and across processes; ``deterministic=False`` (the default, as in flash-attn) lets the GPU tune
between the plans and tiles below. Keys at or past ``kv_lengths[b]`` get probability 0 and zero
gradients; every row has at least one key (``kv_lengths >= 1``), so no row divides by zero.

Dropout: the attention probability at flat index ``((b * H + h) * Sq + i) * Sk + j`` of ``[B, H, Sq, Sk]``
is kept by ``keep_element(seed, index, p)``, i.e. ``tl.rand(seed, index) >= p`` (Philox4x32-10, so
:func:`~internvideo_fast.ops.triton_common.philox.dropout_keep_mask` reproduces it bitwise with shape
``(B, H, Sq, Sk)``). The backward kernels regenerate the mask from the seed; nothing is stored.

Launch configurations: each (kernel, 16-bit or fp32 inputs, BLOCK_D, 16-aligned or not) has a default tile
(BLOCK_M, BLOCK_N, warps, stages); fp32 inputs use much smaller tiles because an IEEE fp32 ``tl.dot`` runs
on FMA units. With ``deterministic=False`` on a CUDA device, a ``LaunchTuner``
(``ops/framework/autotuning.py``) times the default and a few alternatives once per key (dtype, head dim,
aligned, kv_lengths / dropout on, and
the power-of-two buckets of Sq, Sk and B * H) and keeps the fastest: forward tiles (16-bit; the pointer
kernel's, then the TMA kernel's, labelled ``tma:M..``), and whole backward plans (split, atomic or
split_tma, with their tiles). The interpreter, CPU tensors, ``IVF_AUTOTUNE=0``, CUDA-graph capture and
``deterministic=True`` launch the default. Every candidate is
registered with the ahead-of-time sm_90a check (no spills, fits shared memory, wgmma for 16-bit).

Layouts: any strides with a contiguous last dim (e.g. ``[B, H, S, D]`` tensors passed as
``.transpose(1, 2)`` views) go to the kernels as strides, without copies. ``out`` and the gradients are
contiguous ``[B, S, H, D]``. Head dims 32, 40, 64, 80, 96 and 128; the kernels pad D to the next power of
two (``BLOCK_D``) with masks.

Design notes: DESIGN.md beside this file.
"""

from internvideo_fast.ops.cross_attention.interface import cross_attention
from internvideo_fast.ops.cross_attention.reference import (
    MAX_BATCH_HEADS,
    OP_NAME,
    SPLIT_MAX_SQ,
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    cross_attention_ref,
)

__all__ = [
    "MAX_BATCH_HEADS",
    "OP_NAME",
    "SPLIT_MAX_SQ",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "cross_attention",
    "cross_attention_ref",
]
