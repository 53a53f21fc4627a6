"""masked_tubelet_patches / masked_patch_embed / MaskedTubeEmbedding against Conv3d + gather."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import poisoned_outputs
from internvideo_fast import HAS_C
from internvideo_fast.layers.constants import IMAGENET_MEAN as MEAN
from internvideo_fast.layers.constants import IMAGENET_STD as STD
from internvideo_fast.layers.embedding import MaskedTubeEmbedding, sinusoid_position_table
from internvideo_fast.ops import masked_patch_embed, masked_tubelet_patches, tube_mask, use_backend
from internvideo_fast.ops.masked_patch_embed import masked_patch_embed_ref, masked_tubelet_patches_ref

BACKENDS = ["reference"] + (["cpu"] if HAS_C else [])
# (batch, channels, frames, height, width, tubelet, patch, mask_ratio)
GRIDS = [
    (2, 3, 4, 32, 48, 2, 16, 0.9),  # h != w
    (1, 3, 2, 28, 28, 2, 14, 0.5),  # patch 14, a single token frame
    (7, 3, 3, 8, 12, 1, 4, 0.75),  # tubelet 1, batch 7
    (2, 2, 2, 8, 8, 2, 4, 0.0),  # nothing masked, 2 channels
]


def _video(shape, dtype):
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, dtype=torch.uint8)
    return torch.randn(shape, dtype=torch.float64).to(dtype)


def _masks(batch, frames, height, width, tubelet, patch, ratio, seed=0):
    return tube_mask(batch, frames // tubelet, height // patch, width // patch, ratio, seed=seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.uint8], ids=str)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_patches_equal_reference(backend, dtype, grid):
    B, C, T, H, W, t, p, ratio = grid
    video = _video((B, C, T, H, W), dtype)
    ids = _masks(B, T, H, W, t, p, ratio).ids_keep
    for mean, std in [(None, None), (MEAN[:C], STD[:C])]:
        expected = masked_tubelet_patches_ref(video, ids, t, p, mean, std)
        with use_backend(backend, "masked_patch_embed"), poisoned_outputs():
            actual = masked_tubelet_patches(video, ids, t, p, mean, std)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        tolerance = {torch.float16: 2e-3}.get(dtype, 1e-6 if dtype != torch.float64 else 1e-12)
        torch.testing.assert_close(actual.double(), expected.double(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_embed_equals_conv3d_then_gather(backend, grid):
    B, C, T, H, W, t, p, ratio = grid
    D = 24
    video = _video((B, C, T, H, W), torch.float64)
    ids = _masks(B, T, H, W, t, p, ratio).ids_keep
    N = (T // t) * (H // p) * (W // p)
    weight, bias = torch.randn(D, C, t, p, p, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    for pos in (None, torch.randn(1, N, D, dtype=torch.float64), torch.randn(B, N, D, dtype=torch.float64)):
        for b in (None, bias):
            with use_backend(backend, "masked_patch_embed"):
                actual = masked_patch_embed(video, ids, weight, b, pos)
            torch.testing.assert_close(actual, masked_patch_embed_ref(video, ids, weight, b, pos), rtol=1e-10, atol=1e-10)
    # uint8 video with the normalization fused, float32 weights.
    raw = _video((B, C, T, H, W), torch.uint8)
    with use_backend(backend, "masked_patch_embed"):
        actual = masked_patch_embed(raw, ids, weight.float(), bias.float(), None, MEAN[:C], STD[:C])
    expected = masked_patch_embed_ref(raw, ids, weight.float(), bias.float(), None, MEAN[:C], STD[:C])
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients(backend):
    B, C, T, H, W, t, p, D = 2, 2, 2, 8, 12, 2, 4, 5
    ids = _masks(B, T, H, W, t, p, 0.5).ids_keep
    N = (T // t) * (H // p) * (W // p)
    inputs = [
        torch.randn(B, C, T, H, W, dtype=torch.float64, requires_grad=True),
        torch.randn(D, C, t, p, p, dtype=torch.float64, requires_grad=True),
        torch.randn(D, dtype=torch.float64, requires_grad=True),
        torch.randn(1, N, D, dtype=torch.float64, requires_grad=True),
    ]
    with use_backend(backend, "masked_patch_embed"):
        torch.autograd.gradcheck(lambda v, w, b, pos: masked_patch_embed(v, ids, w, b, pos, (0.4, 0.5), (0.2, 0.3)), inputs)
        out = masked_patch_embed(*inputs[:1], ids, *inputs[1:])
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, inputs, grad)
    reference = torch.autograd.grad(masked_patch_embed_ref(inputs[0], ids, *inputs[1:]), inputs, grad)
    for a, e in zip(ours, reference):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "change, argument",
    [
        (dict(video=torch.randn(2, 3, 4, 16)), "video"),
        (dict(video=torch.randint(0, 9, (2, 3, 4, 16, 16), dtype=torch.int32)), "video"),
        (dict(video=torch.randn(2, 3, 3, 16, 16)), "tubelet"),
        (dict(video=torch.randn(2, 3, 4, 16, 18)), "patch"),
        (dict(ids=torch.zeros(2, 3, dtype=torch.int32)), "ids_keep"),
        (dict(ids=torch.full((2, 3), 8)), r"ids_keep must be in \[0, 8\)"),
        (dict(ids=torch.zeros(3, 3, dtype=torch.int64)), "ids_keep"),
        (dict(weight=torch.randn(6, 2, 2, 8, 8)), "channels"),
        (dict(weight=torch.randn(6, 3, 2, 8)), "weight"),
        (dict(bias=torch.randn(5)), "bias"),
        (dict(pos=torch.randn(1, 7, 6)), "pos_embed"),
        (dict(mean=(0.5, 0.5, 0.5)), "mean and std"),
        (dict(mean=(0.5,), std=(0.2,)), "one value per channel"),
        (dict(mean=(0.5,) * 3, std=(0.2, 0.0, 0.2)), "std must be > 0"),
    ],
)
def test_bad_input_names_the_argument(change, argument):
    call = dict(video=torch.randn(2, 3, 4, 16, 16), ids=torch.zeros(2, 3, dtype=torch.int64), weight=torch.randn(6, 3, 2, 8, 8),
                bias=torch.randn(6), pos=None, mean=None, std=None) | change
    for backend in BACKENDS:
        with use_backend(backend, "masked_patch_embed"), pytest.raises(ValueError, match=argument):
            masked_patch_embed(call["video"], call["ids"], call["weight"], call["bias"], call["pos"], call["mean"], call["std"])


@pytest.mark.skipif(not HAS_C, reason="needs _C")
def test_opcheck_and_compile():
    video = torch.randn(2, 3, 2, 8, 8, requires_grad=True)
    ids = _masks(2, 2, 8, 8, 2, 4, 0.5).ids_keep
    torch.library.opcheck(torch.ops.internvideo_fast.masked_tubelet_patches.default, (video, ids, 2, 4, [0.4] * 3, [0.3] * 3))
    weight = torch.randn(7, 3, 2, 4, 4, requires_grad=True)

    def embed_loss(video, weight, seed):
        masks = tube_mask(2, 1, 2, 2, 0.5, seed=seed)
        return masked_patch_embed(video, masks.ids_keep, weight, None, None, [0.4] * 3, [0.3] * 3).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(embed_loss, fullgraph=True, backend="aot_eager")
    seed = torch.tensor(4)
    expected = torch.autograd.grad(embed_loss(video, weight, seed), (video, weight))
    actual = torch.autograd.grad(compiled(video, weight, seed), (video, weight))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


@given(
    batch=st.integers(1, 3), channels=st.integers(1, 3), token_frames=st.integers(1, 3), tubelet=st.integers(1, 2),
    grid_h=st.integers(1, 4), grid_w=st.integers(1, 4), patch=st.integers(1, 5), ratio=st.floats(0, 0.95),
)
def test_fuzz_shapes(batch, channels, token_frames, tubelet, grid_h, grid_w, patch, ratio):
    T, H, W = token_frames * tubelet, grid_h * patch, grid_w * patch
    video = torch.randn(batch, channels, T, H, W, dtype=torch.float64)
    ids = tube_mask(batch, token_frames, grid_h, grid_w, ratio, seed=1).ids_keep
    weight = torch.randn(3, channels, tubelet, patch, patch, dtype=torch.float64)
    for backend in BACKENDS:
        with use_backend(backend, "masked_patch_embed"):
            actual = masked_patch_embed(video, ids, weight)
        torch.testing.assert_close(actual, masked_patch_embed_ref(video, ids, weight), rtol=1e-10, atol=1e-10)


def test_sinusoid_table_is_the_official_one():
    def official(n_position, d_hid):  # VideoMAE's get_sinusoid_encoding_table
        table = np.array([[pos / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)] for pos in range(n_position)])
        table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
        return torch.FloatTensor(table).unsqueeze(0)

    assert torch.equal(sinusoid_position_table(40, 14), official(40, 14))
    torch.testing.assert_close(sinusoid_position_table(1568, 768), official(1568, 768), rtol=0, atol=1e-6)


def test_masked_tube_embedding_module():
    embed = MaskedTubeEmbedding(img_size=(32, 48), patch_size=16, num_frames=4, embed_dim=20, mean=MEAN, std=STD)
    assert list(embed.state_dict()) == ["proj.weight", "proj.bias"]  # the table is not in official checkpoints
    video = torch.randint(0, 256, (3, 3, 4, 32, 48), dtype=torch.uint8)
    everything, none = embed(video)
    visible, masks = embed(video, mask_ratio=0.5, seed=7)
    assert none is None and everything.shape == (3, 12, 20) and visible.shape == (3, 6, 20)
    torch.testing.assert_close(visible, everything.gather(1, masks.ids_keep[..., None].expand(-1, -1, 20)), rtol=1e-5, atol=1e-5)
    again, _ = embed(video, masks=masks)
    assert torch.equal(again, visible)
    learnable = MaskedTubeEmbedding(img_size=32, num_frames=4, embed_dim=20, learnable_pos_embed=True)
    assert "pos_embed" in learnable.state_dict()
    with pytest.raises(ValueError, match="video must be"):
        embed(torch.randn(1, 3, 4, 32, 32))


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8], ids=str)
@pytest.mark.parametrize("grid", GRIDS + [(16, 3, 16, 224, 224, 2, 16, 0.9)], ids=str)
def test_gpu_kernels_equal_cpu(dtype, grid):
    B, C, T, H, W, t, p, ratio = grid
    video = _video((B, C, T, H, W), dtype)
    ids = _masks(B, T, H, W, t, p, ratio).ids_keep
    mean, std = MEAN[:C], STD[:C]
    expected = masked_tubelet_patches(video, ids, t, p, mean, std)
    with use_backend("cuda", "masked_patch_embed"), poisoned_outputs():
        actual = masked_tubelet_patches(video.cuda(), ids.cuda(), t, p, mean, std)
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-6, atol=1e-6)
    if dtype != torch.uint8:
        grad = torch.randn_like(expected)
        cpu = torch.ops.internvideo_fast.masked_tubelet_patches_backward(grad, ids, list(video.shape), t, p, mean, std)
        gpu = torch.ops.internvideo_fast.masked_tubelet_patches_backward(grad.cuda(), ids.cuda(), list(video.shape), t, p, mean, std)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_gpu_masked_embedding_captures_in_a_cuda_graph():
    """The whole masked embed path (mask, gather, GEMM, position add) has no host sync."""
    embed = MaskedTubeEmbedding(mean=MEAN, std=STD).cuda().to(torch.bfloat16)
    video = torch.randint(0, 256, (8, 3, 16, 224, 224), dtype=torch.uint8, device="cuda")
    seed = torch.tensor(0, device="cuda")
    embed(video, mask_ratio=0.9, seed=seed)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens, masks = embed(video, mask_ratio=0.9, seed=seed)
    seed.fill_(5)
    graph.replay()
    expected, _ = embed(video, mask_ratio=0.9, seed=5)
    assert torch.equal(tokens, expected)
