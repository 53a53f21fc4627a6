"""The MLP activations and their derivatives as Triton functions of fp32 values, written for the GPU's issue
rate (see internvideo_fast/ops/linear_act/DESIGN.md): every kernel that applies an activation imports them
from here. Constants inline: 0.7071067811865476 = 1/sqrt(2), 0.3989422804014327 = 1/sqrt(2 pi),
0.7978845608028654 = sqrt(2/pi).

    gelu        0.5 * x * (1 + erf(x / sqrt(2))) = x * Phi(x)
    gelu_tanh   0.5 * x * (1 + tanh(u)) = x * sigmoid(2u),     u = sqrt(2/pi) * (x + 0.044715 x^3)
    quick_gelu  x * sigmoid(1.702 x)
    none        x
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _normal_cdf_and_gauss(x):
    """(Phi(x), exp(-x^2 / 2)) for fp32 `x`: the standard normal CDF and the unscaled density (one exp).

    Phi(-|x|) = erfc(z) / 2 = t * Q(t) * exp(-z^2) with z = |x| / sqrt(2), t = 1 / (1 + 0.375 z) and Q (the
    1/2 folded in) a degree-6 polynomial fitted to erfcx(z) / (2 t): minimax relative error 6.2e-7 over z in
    [0, 10] (past that exp(-z^2) is 0 in fp32). In fp32: gelu within 3.8e-7 and gelu' within 6.5e-7 of
    float64 over [-14, 14]; Phi's negative tail within 1e-5 relative. Why not libdevice's erff: it evaluates
    two polynomials (both, then a select) and moved their constants into registers, 34 SASS instructions
    per element, and made the activation pass issue-bound (sm_90a SASS); and 1 + erf cancels for x < 0
    (Phi(-5) came out 10% off). t is rsqrt(d^2) = 1 / d (d >= 1; MUFU.RSQ): `1 / d` compiles to
    div.full.f32 and its range checks."""
    d = tl.abs(x) * 0.2651650309562683 + 1.0  # 1 + 0.375 |x| / sqrt(2)
    t = tl.math.rsqrt(d * d)  # d * d = inf past |x| ~ 4e19: t = 0, the limit
    q = -0.06757182627916336
    q = q * t + 0.19405218958854675
    q = q * t - 0.06491463631391525
    q = q * t + 0.14161314070224762
    q = q * t + 0.08330093324184418
    q = q * t + 0.10785061120986938
    q = q * t + 0.10566926747560501
    gauss = tl.exp2(x * x * -0.7213475108146667)  # exp(-x^2 / 2) = 2^(-x^2 log2(e) / 2)
    tail = t * q * gauss
    return tl.where(x >= 0.0, 1.0 - tail, tail), gauss


@triton.jit
def _sigmoids(v):
    """(sigmoid(v), sigmoid(-v)) for fp32 `v`. With a = exp(-|v|) in (0, 1]: sigmoid(|v|) = 1 / (1 + a) and
    sigmoid(-|v|) = a / (1 + a), so neither tail cancels or overflows (relative error ~3e-7). The reciprocal
    is rsqrt((1 + a)^2) (MUFU.RSQ): tl.sigmoid's division compiles to div.full.f32 and its range checks
    (quick_gelu's pass: 160 -> 128 sm_90a SASS instructions per 8 elements)."""
    a = tl.exp2(tl.abs(v) * -1.4426950408889634)
    r = tl.math.rsqrt((1.0 + a) * (1.0 + a))
    positive = v >= 0.0
    return tl.where(positive, r, a * r), tl.where(positive, a * r, r)


@triton.jit
def _activation(pre, ACTIVATION: tl.constexpr):
    """act(pre) for fp32 `pre` (see the module docstring)."""
    if ACTIVATION == "gelu":
        cdf, _ = _normal_cdf_and_gauss(pre)
        out = pre * cdf
    elif ACTIVATION == "gelu_tanh":
        # 0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation in the negative tail.
        s, _ = _sigmoids(1.5957691216057308 * (pre + 0.044715 * pre * pre * pre))
        out = pre * s
    elif ACTIVATION == "quick_gelu":
        s, _ = _sigmoids(1.702 * pre)
        out = pre * s
    else:
        out = pre
    return out


@triton.jit
def _activation_grad(pre, ACTIVATION: tl.constexpr):
    """act'(pre) for fp32 `pre`."""
    if ACTIVATION == "gelu":
        cdf, gauss = _normal_cdf_and_gauss(pre)
        out = cdf + pre * 0.3989422804014327 * gauss
    elif ACTIVATION == "gelu_tanh":
        # d/dx of x sigmoid(2u): sigmoid(2u) + x sigmoid(2u) sigmoid(-2u) 2 du/dx.
        s, s_minus = _sigmoids(1.5957691216057308 * (pre + 0.044715 * pre * pre * pre))
        d2u = 1.5957691216057308 * (1.0 + 3.0 * 0.044715 * pre * pre)
        out = s + pre * s * s_minus * d2u
    elif ACTIVATION == "quick_gelu":
        s, s_minus = _sigmoids(1.702 * pre)
        out = s + 1.702 * pre * s * s_minus
    else:
        out = tl.full(pre.shape, 1.0, tl.float32)
    return out
