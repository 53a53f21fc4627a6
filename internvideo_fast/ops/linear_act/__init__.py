"""Linear layer with the bias and the activation fused into the matmul's epilogue (the MLP's fc1 / fc2).

For ``x [..., K]`` flattened to ``x [M, K]`` (``M = x.numel() / K`` rows), ``weight [N, K]`` (nn.Linear's
layout) and ``bias [N]`` (0 when absent):

    pre = x @ weight.T + bias                  (fp32 accumulator, then rounded to x's dtype)
    y   = act(pre)                             (then dropout, when dropout_p > 0: see "Dropout" below)

with ``act`` one of

    gelu        0.5 * pre * (1 + erf(pre / sqrt(2)))                        (VideoMAE, CLIP ViT)
    gelu_tanh   0.5 * pre * (1 + tanh(sqrt(2/pi) * (pre + 0.044715 pre^3)))
    quick_gelu  pre * sigmoid(1.702 * pre)                                   (OpenAI CLIP)
    none        pre

Backward, for ``dy = d y``:

    dpre   = dy * act'(pre)                    (one Triton pass over [M, N]; dbias summed in the same pass)
    dx     = dpre @ weight,     dweight = dpre.T @ x,     dbias = sum_rows(dpre)

Kernels: the forward is one GEMM whose epilogue adds the bias, stores ``pre`` when a backward needs it,
applies the activation and dropout and stores ``y`` (Triton with pointer loads, with TMA loads, persistent,
or CUTLASS on sm_90a; eager cuBLAS + one elementwise pass as a floor); on the GPU a LaunchTuner times these
plans once per shape and keeps the fastest, elsewhere the Triton pointer kernel runs. The backward's ``dpre``
and ``dbias`` come from one elementwise pass (dbias summed per program into a fixed fp32 buffer, then
``torch.sum``: deterministic); ``dx`` and ``dweight`` are cuBLAS GEMMs.

Memory: ``pre`` (``M x N`` in x's dtype) is saved, not recomputed; with ``activation="none"`` or without grad
nothing extra is stored. :func:`fused_mlp` runs fc1 -> act -> dropout -> fc2 -> dropout as one op that saves
only x, fc1's ``pre`` and the seed: fc2's weight gradient recomputes ``h = dropout(act(pre))`` in the pass
that computes fc1's ``dpre``.

Dropout (``dropout_p > 0``) is applied after the activation with the eight-element Philox rule of
internvideo_fast/ops/triton_common/philox.py: element ``i = row * N + col`` of the ``[M, N]`` output is kept
as ``dropout_keep_mask(seed, (M, N), p, elements_per_draw=8)`` says, and scaled by ``1 / (1 - p)``; the mask
is regenerated in the backward, never stored. fused_mlp keys its first dropout on ``seed`` and the second on
``seed + 1``. fp32 inputs multiply in IEEE fp32 unless ``torch.backends.cuda.matmul.allow_tf32`` is set, as
torch.matmul does. Design notes: DESIGN.md beside this file.
"""

from internvideo_fast.ops.linear_act.interface import fused_mlp, linear_act
from internvideo_fast.ops.linear_act.reference import (
    ACTIVATIONS,
    CUTLASS_SCHEDULES,
    OP_NAME,
    SUPPORTED_DTYPES,
    apply_activation_ref,
    fused_mlp_ref,
    linear_act_ref,
)

__all__ = [
    "ACTIVATIONS",
    "CUTLASS_SCHEDULES",
    "OP_NAME",
    "SUPPORTED_DTYPES",
    "apply_activation_ref",
    "fused_mlp",
    "fused_mlp_ref",
    "linear_act",
    "linear_act_ref",
]
