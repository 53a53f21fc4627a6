"""The shared assertion helpers can fail: flash-attention's 2x rule and the poisoned outputs."""

import pytest
import torch

from helpers import assert_close_to_reference, poisoned_outputs
from internvideo_fast.ops.framework.outputs import new_output


def test_flash_attn_rule_accepts_a_same_dtype_computation_and_rejects_a_worse_one():
    a, b = torch.randn(64, 96, dtype=torch.float64), torch.randn(96, 80, dtype=torch.float64)
    reference = a @ b
    half = (a.half() @ b.half()).float()
    assert_close_to_reference(half, reference, half)  # as good as PyTorch in fp16
    worse = half + 8 * (half.double() - reference).abs().max().item()
    with pytest.raises(AssertionError, match="kernel error"):
        assert_close_to_reference(worse, reference, half)


def test_poisoned_outputs_fill_new_outputs():
    like = torch.zeros(3)
    with poisoned_outputs():
        assert new_output(like, (4,)).isnan().all()
        assert (new_output(like, (4,), torch.int32) == torch.iinfo(torch.int32).min).all()
        assert new_output(like, (4,), torch.bool).all()
