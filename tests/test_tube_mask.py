"""tube_mask: every backend against the reference, the mask's statistics, bad input, torch.compile."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import poisoned_outputs
from internvideo_fast import HAS_C
from internvideo_fast.ops import tube_mask, use_backend
from internvideo_fast.ops.framework.backend import triton_runs_on
from internvideo_fast.ops.tube_mask import (
    philox4x32_10_reference,
    tube_mask_official_numpy,
    tube_mask_ref,
)

CPU_BACKENDS = ["reference"] + (["cpu"] if HAS_C else []) + (["triton"] if triton_runs_on(torch.device("cpu")) else [])
GRIDS = [  # (batch, frames, height, width, mask_ratio)
    (2, 8, 14, 14, 0.9),  # ViT-B/16, 16 frames at 224 px
    (1, 8, 16, 16, 0.95),  # ViT-g/14
    (7, 1, 3, 5, 0.5),  # one token frame, h != w
    (3, 4, 7, 9, 0.0),  # nothing masked
    (2, 2, 1, 1, 0.75),  # a single position: int(0.75) = 0 masked
    (0, 2, 4, 4, 0.5),  # empty batch
]


def _run(backend, *grid, seed=1234):
    with use_backend(backend, "tube_mask"), poisoned_outputs():
        return tube_mask(*grid, seed=seed)


def test_philox_known_answers():
    """Random123's known-answer vectors for philox4x32-10."""
    def philox(counter, key):
        words = philox4x32_10_reference(*(torch.tensor(c) for c in counter), *key)
        return [int(w) for w in words]

    assert philox((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1,
    ]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_backends_equal_reference(backend, grid):
    expected = tube_mask_ref(torch.tensor(1234), *grid[:4], int(grid[4] * grid[2] * grid[3]))
    actual = _run(backend, *grid)
    for name, a, e in zip(expected._fields, actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        assert torch.equal(a, e), f"{backend} {name} differs from the reference"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mask_structure(backend):
    batch, frames, height, width, ratio = 5, 4, 6, 7, 0.8
    positions = height * width
    num_masked = int(ratio * positions)
    ids_keep, ids_masked, mask = _run(backend, batch, frames, height, width, ratio, seed=99)
    grid_mask = mask.view(batch, frames, positions)
    # The same spatial mask at every token frame, with exactly num_masked positions per sample.
    assert torch.equal(grid_mask, grid_mask[:, :1].expand_as(grid_mask))
    assert (grid_mask[:, 0].sum(1) == num_masked).all()
    # Ascending, disjoint, and together every token once.
    assert (ids_keep.diff(dim=1) > 0).all() and (ids_masked.diff(dim=1) > 0).all()
    together = torch.cat([ids_keep, ids_masked], 1).sort(1).values
    assert torch.equal(together, torch.arange(frames * positions).expand(batch, -1))
    # The official encoder input x[~mask] equals gathering ids_keep.
    tokens = torch.randn(batch, frames * positions, 3)
    official = tokens[~mask].reshape(batch, -1, 3)
    assert torch.equal(official, tokens.gather(1, ids_keep[..., None].expand(-1, -1, 3)))
    assert torch.equal(mask.gather(1, ids_masked), torch.ones_like(ids_masked, dtype=torch.bool))


def test_seeds_and_generators():
    a = tube_mask(4, 2, 14, 14, 0.9, seed=1)
    b = tube_mask(4, 2, 14, 14, 0.9, seed=1)
    c = tube_mask(4, 2, 14, 14, 0.9, seed=2)
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    # Samples differ from each other; a seed tensor and the same int agree; 64-bit seeds wrap as int64.
    assert not torch.equal(a.mask[0], a.mask[1])
    assert torch.equal(a.mask, tube_mask(4, 2, 14, 14, 0.9, seed=torch.tensor([1])).mask)
    assert torch.equal(tube_mask(2, 1, 5, 5, 0.5, seed=2**64 - 1).mask, tube_mask(2, 1, 5, 5, 0.5, seed=-1).mask)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(tube_mask(3, 1, 8, 8, 0.5, generator=g1).mask, tube_mask(3, 1, 8, 8, 0.5, generator=g2).mask)


def test_every_position_masked_at_the_ratio():
    """Chi-square test: over many samples each spatial position is masked equally often, as with the
    official numpy shuffle (also tested, as a check of the test itself)."""
    from scipy.stats import chisquare

    batch, height, width, ratio = 4000, 14, 14, 0.75
    ours = tube_mask(batch, 1, height, width, ratio, seed=2024).mask.double()
    official = tube_mask_official_numpy(batch, 1, height, width, ratio, np.random.default_rng(0)).double()
    for counts in (ours.sum(0), official.sum(0)):
        assert abs(counts.sum().item() / (batch * height * width) - int(ratio * 196) / 196) < 1e-12
        assert chisquare(counts.numpy()).pvalue > 1e-3
    # Pairs of positions are independent as well as uniform: co-masking frequency of neighbours.
    both = (ours[:, :-1] * ours[:, 1:]).mean(0)
    p = int(ratio * 196) / 196
    expected = p * (int(ratio * 196) - 1) / 195
    assert abs(both.mean().item() - expected) < 0.01


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=-0.1), "mask_ratio"),
        (dict(mask_ratio="0.9"), "mask_ratio"),
        (dict(batch=-1), "batch"),
        (dict(frames=0), "frames"),
        (dict(height=0), "height"),
        (dict(width=2.5), "width"),
        (dict(seed=torch.tensor([1, 2])), "seed"),
        (dict(seed=torch.tensor(1.0)), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(seed="7"), "seed"),
        (dict(seed=torch.tensor(1), device="meta"), "device"),
    ],
)
def test_bad_input_names_the_argument(kwargs, argument):
    call = dict(batch=2, frames=2, height=4, width=4, mask_ratio=0.5, seed=0) | kwargs
    with pytest.raises(ValueError, match=argument):
        tube_mask(**call)


@pytest.mark.skipif(not HAS_C, reason="needs _C")
def test_cpp_op_checks_its_arguments():
    with pytest.raises(ValueError, match="num_masked"):
        torch.ops.internvideo_fast.tube_mask(torch.tensor(0), 1, 1, 2, 2, 4)
    with pytest.raises(ValueError, match="seed"):
        torch.ops.internvideo_fast.tube_mask(torch.tensor([0, 1]), 1, 1, 2, 2, 1)


@pytest.mark.skipif(not HAS_C, reason="needs _C")
def test_opcheck():
    """torch.library's own checks: schema, fake implementation, dispatcher registration."""
    for args in [(torch.tensor(3), 2, 2, 3, 4, 6), (torch.tensor(-8), 3, 1, 5, 5, 0)]:
        torch.library.opcheck(torch.ops.internvideo_fast.tube_mask.default, args)
    if triton_runs_on(torch.device("cpu")):
        torch.library.opcheck(torch.ops.internvideo_fast.tube_mask_triton.default, (torch.tensor(3), 2, 2, 3, 4, 6))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    def masked_mean(tokens, seed):
        ids_keep, _, _ = tube_mask(tokens.shape[0], 2, 4, 4, 0.75, seed=seed)
        return tokens.gather(1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1])).mean(1)

    tokens, seed = torch.randn(3, 32, 5), torch.tensor(11)
    torch._dynamo.reset()
    with use_backend(backend, "tube_mask"):
        compiled = torch.compile(masked_mean, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(tokens, seed), masked_mean(tokens, seed))
        # A new seed value replays the same graph with a new mask.
        assert torch.equal(compiled(tokens, torch.tensor(12)), masked_mean(tokens, torch.tensor(12)))


@given(
    batch=st.integers(0, 5),
    frames=st.integers(1, 4),
    height=st.integers(1, 20),
    width=st.integers(1, 20),
    ratio=st.floats(0.0, 0.99),
    seed=st.integers(-(2**63), 2**63 - 1),
)
def test_fuzz_shapes_cpu_kernel_equals_reference(batch, frames, height, width, ratio, seed):
    expected = tube_mask_ref(torch.tensor(seed), batch, frames, height, width, int(ratio * height * width))
    for backend in CPU_BACKENDS:
        if backend != "triton":  # the interpreter is too slow to fuzz; the grid tests cover it
            for a, e in zip(_run(backend, batch, frames, height, width, ratio, seed=seed), expected):
                assert torch.equal(a, e)


def test_large_grids_fall_back_from_kernels():
    """Above 4096 positions the on-chip kernels step aside; auto still works on CPU."""
    out = tube_mask(1, 1, 70, 70, 0.5, seed=3)
    assert out.mask.sum() == int(0.5 * 4900)


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("grid", GRIDS + [(64, 8, 14, 14, 0.9), (3, 2, 64, 64, 0.9), (5, 2, 40, 25, 0.3)], ids=str)
def test_gpu_kernels_equal_cpu(backend, grid):
    expected = tube_mask_ref(torch.tensor(77), *grid[:4], int(grid[4] * grid[2] * grid[3]))
    seed = torch.tensor(77, device="cuda")
    with use_backend(backend, "tube_mask"), poisoned_outputs():
        actual = tube_mask(*grid, seed=seed)
    for a, e in zip(actual, expected):
        assert a.is_cuda and torch.equal(a.cpu(), e)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_cuda_graph_capture_with_new_seeds(backend):
    """No host sync: the op captures in a CUDA graph, and replays draw the mask of the seed written into
    the seed tensor."""
    seed = torch.tensor(1, device="cuda")
    with use_backend(backend, "tube_mask"):
        tube_mask(8, 8, 14, 14, 0.9, seed=seed)  # compile / warm up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = tube_mask(8, 8, 14, 14, 0.9, seed=seed)
    for value in (5, 6):
        seed.fill_(value)
        graph.replay()
        expected = tube_mask_ref(torch.tensor(value), 8, 8, 14, 14, int(0.9 * 196))
        assert torch.equal(captured.ids_keep.cpu(), expected.ids_keep)
