"""gather_tokens / scatter_tokens: kernels against the reference, forward and backward, bad input, compile."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import poisoned_outputs
from internvideo_fast import HAS_C
from internvideo_fast.ops import gather_tokens, scatter_tokens, tube_mask, use_backend
from internvideo_fast.ops.token_gather import gather_tokens_ref, scatter_tokens_ref

BACKENDS = ["reference"] + (["cpu"] if HAS_C else [])
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.uint8]


def _random_ids(batch, num_tokens, n, device="cpu"):
    """Unique ids per sample, in random (not sorted) order."""
    if batch == 0:
        return torch.empty(0, n, dtype=torch.int64, device=device)
    return torch.stack([torch.randperm(num_tokens)[:n] for _ in range(batch)]).to(device)


def _random(shape, dtype, device="cpu"):
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
    return torch.randint(0, 100, shape, device=device).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch, num_tokens, n, dim", [(2, 1568, 156, 8), (7, 37, 5, 3), (1, 4, 4, 1), (3, 10, 0, 5)])
def test_forward_equals_reference(backend, dtype, batch, num_tokens, n, dim):
    x = _random((batch, num_tokens, dim), dtype)
    ids = _random_ids(batch, num_tokens, n)
    with use_backend(backend, "token_gather"), poisoned_outputs():
        gathered = gather_tokens(x, ids)
        scattered = scatter_tokens(gathered, ids, num_tokens)
    assert torch.equal(gathered, gather_tokens_ref(x, ids))
    assert torch.equal(scattered, scatter_tokens_ref(gathered, ids, num_tokens))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_the_other_op(backend):
    x = torch.randn(3, 20, 6, dtype=torch.float64, requires_grad=True)
    ids = _random_ids(3, 20, 7)
    with use_backend(backend, "token_gather"):
        torch.autograd.gradcheck(lambda t: gather_tokens(t, ids), (x,))
        y = torch.randn(3, 7, 6, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda t: scatter_tokens(t, ids, 20), (y,))
        torch.autograd.gradgradcheck(lambda t: gather_tokens(t, ids), (x,))
        # Backward through gather then scatter restores the visible rows' gradients exactly.
        grad = torch.randn(3, 20, 6, dtype=torch.float64)
        (got,) = torch.autograd.grad(scatter_tokens(gather_tokens(x, ids), ids, 20), x, grad)
    expected = torch.zeros_like(grad)
    expected.scatter_(1, ids[..., None].expand(-1, -1, 6), grad.gather(1, ids[..., None].expand(-1, -1, 6)))
    assert torch.equal(got, expected)


def test_equals_the_official_boolean_index():
    ids_keep, _, mask = tube_mask(4, 8, 14, 14, 0.9, seed=3)
    tokens = torch.randn(4, 1568, 16)
    assert torch.equal(gather_tokens(tokens, ids_keep), tokens[~mask].reshape(4, -1, 16))


def test_strided_inputs():
    x = torch.randn(4, 9, 30)[:, :, ::3]  # non-contiguous
    ids = _random_ids(4, 9, 5)[:, ::1]
    assert torch.equal(gather_tokens(x, ids), gather_tokens_ref(x, ids))


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda x, ids: gather_tokens(x[0], ids), "x"),
        (lambda x, ids: gather_tokens(x, ids.int()), "ids"),
        (lambda x, ids: gather_tokens(x, ids[:1]), "batch"),
        (lambda x, ids: gather_tokens(x, ids + 100), r"ids must be in \[0, 10\)"),
        (lambda x, ids: gather_tokens(x, ids - 100), r"ids must be in \[0, 10\)"),
        (lambda x, ids: scatter_tokens(x[:, :3], ids, 10), "tokens per sample"),
        (lambda x, ids: scatter_tokens(x[:, :4], ids, 3), "num_tokens"),
        (lambda x, ids: scatter_tokens(x[:, :4], ids + 7, 10), "ids must be in"),
    ],
)
def test_bad_input_names_the_argument(call, argument):
    x, ids = torch.randn(2, 10, 3), _random_ids(2, 10, 4)
    for backend in BACKENDS:
        with use_backend(backend, "token_gather"), pytest.raises(ValueError, match=argument):
            call(x, ids)


@pytest.mark.skipif(not HAS_C, reason="needs _C")
def test_opcheck_and_compile():
    x, ids = torch.randn(2, 10, 3, requires_grad=True), _random_ids(2, 10, 4)
    torch.library.opcheck(torch.ops.internvideo_fast.gather_tokens.default, (x, ids))
    torch.library.opcheck(torch.ops.internvideo_fast.scatter_tokens.default, (torch.randn(2, 4, 3, requires_grad=True), ids, 10))

    def visible_mean(tokens, ids):
        return scatter_tokens(gather_tokens(tokens, ids) * 2, ids, tokens.shape[1]).sum()

    torch._dynamo.reset()
    compiled = torch.compile(visible_mean, fullgraph=True, backend="aot_eager")
    (expected,) = torch.autograd.grad(visible_mean(x, ids), x)
    (got,) = torch.autograd.grad(compiled(x, ids), x)
    assert torch.equal(got, expected)


@given(
    batch=st.integers(0, 4), num_tokens=st.integers(1, 50), fraction=st.floats(0, 1), dim=st.integers(1, 9),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.int64]),
)
def test_fuzz_shapes(batch, num_tokens, fraction, dim, dtype):
    n = int(fraction * num_tokens)
    x, ids = _random((batch, num_tokens, dim), dtype), _random_ids(batch, num_tokens, n)
    for backend in BACKENDS:
        with use_backend(backend, "token_gather"):
            gathered = gather_tokens(x, ids)
            assert torch.equal(gathered, gather_tokens_ref(x, ids))
            assert torch.equal(scatter_tokens(gathered, ids, num_tokens), scatter_tokens_ref(gathered, ids, num_tokens))


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.uint8], ids=str)
@pytest.mark.parametrize("batch, num_tokens, n, dim", [(64, 1568, 156, 768), (3, 37, 5, 3), (2, 11, 11, 1)])
def test_gpu_kernels_equal_reference(dtype, batch, num_tokens, n, dim):
    x = _random((batch, num_tokens, dim), dtype, "cuda")
    ids = _random_ids(batch, num_tokens, n, "cuda")
    with use_backend("cuda", "token_gather"), poisoned_outputs():
        gathered = gather_tokens(x, ids)
        scattered = scatter_tokens(gathered, ids, num_tokens)
    assert torch.equal(gathered, gather_tokens_ref(x, ids))
    assert torch.equal(scattered, scatter_tokens_ref(gathered, ids, num_tokens))


@pytest.mark.gpu
def test_gpu_backward_and_range_check():
    x = torch.randn(4, 50, 24, device="cuda", dtype=torch.float64, requires_grad=True)
    ids = _random_ids(4, 50, 9, "cuda")
    with use_backend("cuda", "token_gather"):
        torch.autograd.gradcheck(lambda t: gather_tokens(t, ids), (x,))
        with pytest.raises(ValueError, match="ids must be in"):
            gather_tokens(x, ids + 50, check_ids=True)
        # Unchecked, an out-of-range id moves nothing instead of reading out of bounds.
        out = gather_tokens(x.detach(), ids + 1000)
        torch.cuda.synchronize()
        assert out.shape == (4, 9, 24)
