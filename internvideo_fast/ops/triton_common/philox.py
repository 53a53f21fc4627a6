"""Philox4x32-10 (the counter-based generator of csrc/philox.h and Triton's ``tl.randint``) and the dropout
masks the kernels draw from it, in Triton and reproduced bitwise in PyTorch.

Two rules, for the element at flat index ``i`` of a tensor:

- one draw per element (:func:`keep_element`, cross_attention): kept when ``tl.rand(seed, i) >= p``;
- one draw per eight elements (:func:`keep_element8`, :func:`keep_block8`, :func:`keep_tile8`;
  dropout_add_layer_norm and linear_act): kept when half ``i % 2`` (0: low, 1: high 16 bits) of word
  ``(i // 2) % 4`` of ``tl.randint4x(seed, i // 8)`` is at least ``t = dropout_threshold(p) =
  min(round(p * 2**16), 2**16 - 1)``. Philox is called with counter ``(i // 8 mod 2**32, i // 8 >> 32, 0,
  0)`` and key ``(seed mod 2**32, seed >> 32)``; the kept fraction is ``1 - t / 2**16``, within ``2**-17``
  of ``1 - p``, and kept values are scaled by ``1 / (1 - p)``.

:func:`dropout_keep_mask` reproduces either rule bitwise in PyTorch, so references and tests drop the same
elements as the kernels for the same seed; masks are never stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MASK32 = 0xFFFFFFFF
# Triton's uint32 -> [0, 1) scale (triton.language.random.uint_to_uniform_float).
_UNIFORM_SCALE = 4.6566127342e-10


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hi and lo 32 bits of a * b for a uint32 constant and int64 tensors of uint32 values, without
    int64 overflow: b is split into 16-bit halves."""
    low_product = a * (b & 0xFFFF)  # < 2**48
    high_product = a * (b >> 16)  # < 2**48
    carry = high_product + (low_product >> 16)  # a*b = carry * 2**16 + (low_product & 0xFFFF)
    return carry >> 16, ((carry & 0xFFFF) << 16) | (low_product & 0xFFFF)


def philox4x32_10_reference(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors that hold uint32 values (the rounds of csrc/philox.h)."""
    for round_index in range(10):
        if round_index > 0:
            k0 = (k0 + 0x9E3779B9) & _MASK32
            k1 = (k1 + 0xBB67AE85) & _MASK32
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def keep_element(seed, offset, dropout_p):
    """1 where the element at flat `offset` (int64, any shape) survives dropout: ``tl.rand(seed, offset) >=
    dropout_p``, one Philox call per element. The rule of cross_attention's kernels, whose attention tiles
    would spill registers holding four words per element; :func:`dropout_keep_mask` reproduces it."""
    return tl.rand(seed, offset) >= dropout_p


@triton.jit
def _halves(words, threshold):
    """The keep flags of the low and high 16-bit halves of uint32 `words`: ``[..., 2]``, half last."""
    bound = tl.cast(threshold, tl.uint32)  # threshold may be a constexpr (Triton specializes 1)
    return tl.join((words & 0xFFFF) >= bound, (words >> 16) >= bound)


@triton.jit
def keep_element8(seed, offset, threshold):
    """The eight-element rule (see the module docstring) for elements at any flat offsets (int64): half
    ``offset % 2`` of word ``(offset // 2) % 4`` of the Philox call for group ``offset // 8``, against the
    16-bit `threshold`; ``dropout_keep_mask(..., elements_per_draw=8)`` reproduces it."""
    w0, w1, w2, w3 = tl.randint4x(seed, offset >> 3)
    odd_word = (offset & 2) != 0
    word = tl.where((offset & 4) != 0, tl.where(odd_word, w3, w2), tl.where(odd_word, w1, w0))
    half = (word >> ((offset & 1) * 16).to(tl.uint32)) & 0xFFFF
    return half >= tl.cast(threshold, tl.uint32)


@triton.jit
def keep_block8(seed, first, threshold, BLOCK: tl.constexpr):
    """keep_element8(seed, first + arange(BLOCK), threshold) for `first` a multiple of 8: one Philox call
    per group of eight."""
    w0, w1, w2, w3 = tl.randint4x(seed, (first >> 3) + tl.arange(0, BLOCK // 8))
    # join stacks along a new last dim, so join(join(w0, w2), join(w1, w3))[g, a, b] is word 2a + b of
    # group g, and _halves adds the half: row-major, the element order.
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [BLOCK // 2])
    return tl.reshape(_halves(words, threshold), [BLOCK])


@triton.jit
def keep_tile8(seed, first_groups, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """keep_element8 over a [BLOCK_M, BLOCK_N] tile whose row r starts a group of eight at flat offset
    8 * first_groups[r] (int64 [BLOCK_M]): keep_block8 row by row, one Philox call per group of eight."""
    w0, w1, w2, w3 = tl.randint4x(seed, first_groups[:, None] + tl.arange(0, BLOCK_N // 8)[None, :])
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [BLOCK_M, BLOCK_N // 2])
    return tl.reshape(_halves(words, threshold), [BLOCK_M, BLOCK_N])



def dropout_threshold(dropout_p: float) -> int:
    """The 16-bit draw an element must reach to be kept by dropout_add_layer_norm's kernels:
    ``min(round(p * 2**16), 2**16 - 1)`` (kept fraction ``1 - t / 2**16``, within ``2**-17`` of ``1 - p``)."""
    return min(int(dropout_p * 65536.0 + 0.5), 65535)


def dropout_keep_mask(seed, shape, dropout_p: float, device=None, elements_per_draw: int = 1) -> torch.Tensor:
    """A kernel's dropout keep mask (bool, True = kept) for `seed` (int or one-element int64 tensor) and a
    tensor of `shape`, bitwise, recomputed in PyTorch. For flat index ``i``: `elements_per_draw` 1
    (cross_attention): ``tl.rand(seed, i) >= dropout_p``; 8 (dropout_add_layer_norm and linear_act, see
    the module docstring): half ``i % 2`` of word ``(i // 2) % 4`` of ``tl.randint4x(seed, i // 8)`` at least
    ``dropout_threshold(dropout_p)``."""
    if elements_per_draw not in (1, 8):
        raise ValueError(f"elements_per_draw must be 1 or 8, got {elements_per_draw!r}")
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(())
    device = seed.device
    numel = 1
    for size in shape:
        numel *= size
    counter = torch.arange(-(-numel // elements_per_draw), dtype=torch.int64, device=device)
    zero = torch.zeros_like(counter)
    words = philox4x32_10_reference(
        counter & _MASK32, counter >> 32, zero, zero, seed & _MASK32, (seed >> 32) & _MASK32
    )
    if elements_per_draw == 8:
        stream = torch.stack(words, dim=1).reshape(-1)  # word w of counter c at 4c + w
        halves = torch.stack((stream & 0xFFFF, stream >> 16), dim=1).reshape(-1)[:numel]
        return (halves >= dropout_threshold(dropout_p)).reshape(shape)
    signed = torch.where(words[0] >= 2**31, words[0] - 2**32, words[0])  # the word bitcast to int32
    nonnegative = torch.where(signed < 0, -signed - 1, signed)  # ~x for x < 0
    uniform = nonnegative.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=device)
    return (uniform >= torch.tensor(dropout_p, dtype=torch.float32, device=device)).reshape(shape)



def dropout_scalars(dropout_p: float, has_dropout: bool) -> tuple[int, float]:
    """The kernels' (drop_threshold, keep_scale): the 16-bit draw an element must reach to be kept and
    1 / (1 - p); (0, 1) without dropout (dropout_add_layer_norm's and linear_act's kernels)."""
    if not has_dropout:
        return 0, 1.0
    return dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p)
