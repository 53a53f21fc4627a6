"""mae_targets against the official target computation (rearrange, per-tube normalization, gather)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import poisoned_outputs
from internvideo_fast import HAS_C
from internvideo_fast.layers.constants import IMAGENET_MEAN as MEAN
from internvideo_fast.layers.constants import IMAGENET_STD as STD
from internvideo_fast.ops import mae_targets, mae_targets_ref, tube_mask, use_backend

BACKENDS = ["reference"] + (["cpu"] if HAS_C else [])


def _official_target(video_normalized, mask, tubelet, patch, mean, std, eps=1e-6):
    """VideoMAE engine_for_pretraining.py, written out with plain tensor ops (no einops)."""
    m = torch.tensor(mean, dtype=video_normalized.dtype)[None, :, None, None, None]
    s = torch.tensor(std, dtype=video_normalized.dtype)[None, :, None, None, None]
    unnorm = video_normalized * s + m
    B, C, T, H, W = unnorm.shape
    x = unnorm.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    squeeze = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, -1, tubelet * patch * patch, C)
    norm = (squeeze - squeeze.mean(dim=-2, keepdim=True)) / (squeeze.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps)
    patches = norm.reshape(B, -1, tubelet * patch * patch * C)
    return patches[mask].reshape(B, -1, tubelet * patch * patch * C)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "grid", [(2, 4, 32, 48, 2, 16, 0.9), (1, 2, 28, 28, 2, 14, 0.5), (7, 3, 8, 12, 1, 4, 0.75)], ids=str
)
def test_equals_the_official_target(backend, grid):
    B, T, H, W, t, p, ratio = grid
    masks = tube_mask(B, T // t, H // p, W // p, ratio, seed=9)
    video = torch.randn(B, 3, T, H, W, dtype=torch.float64)
    expected = _official_target(video, masks.mask, t, p, MEAN, STD)
    with use_backend(backend, "mae_targets"), poisoned_outputs():
        actual = mae_targets(video, masks.ids_masked, t, p, mean=MEAN, std=STD)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    with use_backend(backend, "mae_targets"):
        float32 = mae_targets(video.float(), masks.ids_masked, t, p, mean=MEAN, std=STD)
    assert float32.dtype == torch.float32
    torch.testing.assert_close(float32.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_and_unnormalized(backend):
    masks = tube_mask(3, 2, 2, 3, 0.5, seed=2)
    video = torch.randint(0, 256, (3, 3, 4, 8, 12), dtype=torch.uint8)
    with use_backend(backend, "mae_targets"):
        normalized = mae_targets(video, masks.ids_masked, 2, 4)
        raw = mae_targets(video, masks.ids_masked, 2, 4, normalize=False)
    torch.testing.assert_close(normalized, mae_targets_ref(video, masks.ids_masked, 2, 4), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(raw, mae_targets_ref(video, masks.ids_masked, 2, 4, normalize=False), rtol=0, atol=1e-7)
    assert raw.min() >= 0 and raw.max() <= 1


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(patch=3), "patch"),
        (dict(tubelet=3), "tubelet"),
        (dict(ids=torch.full((2, 2), 99)), r"ids_masked must be in \[0, 8\)"),
        (dict(video=torch.randint(0, 9, (2, 3, 4, 8, 8), dtype=torch.uint8), mean=MEAN, std=STD), "uint8"),
        (dict(eps=-1.0), "eps"),
        (dict(tubelet=1, patch=1, video=torch.randn(2, 3, 1, 1, 1), ids=torch.zeros(2, 1, dtype=torch.int64)), "2 pixels"),
    ],
)
def test_bad_input_names_the_argument(kwargs, argument):
    call = dict(video=torch.randn(2, 3, 4, 8, 8), ids=torch.zeros(2, 2, dtype=torch.int64), tubelet=2, patch=4,
                eps=1e-6, mean=None, std=None) | kwargs
    for backend in BACKENDS:
        with use_backend(backend, "mae_targets"), pytest.raises(ValueError, match=argument):
            mae_targets(call["video"], call["ids"], call["tubelet"], call["patch"], eps=call["eps"], mean=call["mean"], std=call["std"])


@pytest.mark.skipif(not HAS_C, reason="needs _C")
def test_opcheck_and_compile():
    video, ids = torch.randn(2, 3, 2, 8, 8), tube_mask(2, 1, 2, 2, 0.5, seed=1).ids_masked
    torch.library.opcheck(torch.ops.internvideo_fast.mae_targets.default, (video, ids, 2, 4, True, 1e-6, None, None))
    torch._dynamo.reset()
    compiled = torch.compile(lambda v, i: mae_targets(v, i, 2, 4), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(video, ids), mae_targets(video, ids, 2, 4))


@given(batch=st.integers(1, 3), token_frames=st.integers(1, 3), tubelet=st.integers(1, 2), grid_h=st.integers(1, 3),
       grid_w=st.integers(1, 3), patch=st.integers(2, 5), ratio=st.floats(0, 0.95))
def test_fuzz_shapes(batch, token_frames, tubelet, grid_h, grid_w, patch, ratio):
    video = torch.randn(batch, 3, token_frames * tubelet, grid_h * patch, grid_w * patch, dtype=torch.float64)
    ids = tube_mask(batch, token_frames, grid_h, grid_w, ratio, seed=3).ids_masked
    for backend in BACKENDS:
        with use_backend(backend, "mae_targets"):
            actual = mae_targets(video, ids, tubelet, patch)
        torch.testing.assert_close(actual, mae_targets_ref(video, ids, tubelet, patch), rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8], ids=str)
def test_gpu_kernel_equals_cpu(dtype):
    masks = tube_mask(16, 8, 14, 14, 0.9, seed=4)
    video = torch.randint(0, 256, (16, 3, 16, 224, 224), dtype=torch.uint8)
    if dtype != torch.uint8:
        video = torch.randn(video.shape).to(dtype)
    mean, std = (None, None) if dtype == torch.uint8 else (MEAN, STD)
    expected = mae_targets(video, masks.ids_masked, 2, 16, mean=mean, std=std)
    with use_backend("cuda", "mae_targets"), poisoned_outputs():
        actual = mae_targets(video.cuda(), masks.ids_masked.cuda(), 2, 16, mean=mean, std=std)
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-4, atol=1e-4)
