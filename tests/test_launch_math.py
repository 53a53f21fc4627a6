"""The launchers' plain integer helpers agree with Triton's constexpr functions they replace."""

import triton
from hypothesis import given
from hypothesis import strategies as st

from internvideo_fast.ops.framework.launch_math import cdiv, next_power_of_2


@given(st.integers(0, 1 << 40), st.integers(1, 1 << 20))
def test_cdiv_is_tritons(numerator, denominator):
    assert cdiv(numerator, denominator) == triton.cdiv(numerator, denominator)


@given(st.integers(1, 1 << 40))
def test_next_power_of_2_is_tritons(n):
    assert next_power_of_2(n) == triton.next_power_of_2(n)


def test_edges():
    assert [next_power_of_2(n) for n in (1, 2, 3, 64, 65)] == [1, 2, 4, 64, 128]
    assert [cdiv(n, 64) for n in (0, 1, 64, 65)] == [0, 1, 1, 2]


def test_sm_count_off_cuda_is_one():
    import torch

    from internvideo_fast.ops.framework.launch_math import sm_count

    assert sm_count(torch.device("cpu")) == 1
