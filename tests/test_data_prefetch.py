"""DevicePrefetcher: the loader's batches, unchanged, on the device, read at most ``depth`` batches ahead."""

from __future__ import annotations

import pytest
import torch

from internvideo_fast.data import DevicePrefetcher


def _batches(count: int, pulled: list[int] | None = None):
    for i in range(count):
        if pulled is not None:
            pulled.append(i)
        yield {"video": torch.full((2, 3, 4, 5, 5), float(i)), "label": torch.tensor([i, i + 1]),
               "caption": [f"clip {i}", f"clip {i + 1}"]}


class _Sized:
    def __init__(self, count):
        self.count = count

    def __iter__(self):
        return _batches(self.count)

    def __len__(self):
        return self.count


@pytest.mark.parametrize("count,depth", [(0, 2), (1, 1), (5, 2), (3, 7)])
def test_same_batches_in_order(count, depth):
    got = list(DevicePrefetcher(_batches(count), "cpu", depth=depth))
    assert len(got) == count
    for i, (a, b) in enumerate(zip(got, _batches(count))):
        assert a.keys() == b.keys()
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["label"], b["label"])
        assert a["caption"] == b["caption"] and a["video"].device.type == "cpu"
        assert int(a["label"][0]) == i


@pytest.mark.parametrize("depth", [1, 3])
def test_reads_at_most_depth_ahead(depth):
    pulled: list[int] = []
    iterator = iter(DevicePrefetcher(_batches(10, pulled), "cpu", depth=depth))
    for consumed in range(6):
        batch = next(iterator)
        assert int(batch["label"][0]) == consumed
        assert len(pulled) == consumed + 1 + depth


def test_len_and_bad_depth():
    assert len(DevicePrefetcher(_Sized(4), "cpu")) == 4
    with pytest.raises(ValueError, match="depth"):
        DevicePrefetcher(_Sized(4), "cpu", depth=0)


@pytest.mark.gpu
@pytest.mark.gpu
def test_cuda_copies_on_a_side_stream():
    """Batches land on the GPU equal to the host's, their copies made on the prefetcher's own stream."""
    prefetcher = DevicePrefetcher(_batches(6), "cuda", depth=2)
    on_device = torch.full((2, 3, 4, 5, 5), -1.0, device="cuda")
    total = torch.zeros((), device="cuda")
    for i, batch in enumerate(prefetcher):
        assert batch["video"].is_cuda and batch["label"].is_cuda and batch["caption"] == [f"clip {i}", f"clip {i + 1}"]
        total += (batch["video"] + on_device).sum()  # consumed on the current stream, no host sync
    assert prefetcher._stream is not None and prefetcher._stream != torch.cuda.current_stream()
    expected = sum(float(((torch.full((2, 3, 4, 5, 5), float(i))) - 1).sum()) for i in range(6))
    assert float(total) == expected
    device_batch = {"video": on_device}
    assert next(iter(DevicePrefetcher([device_batch], "cuda")))["video"] is on_device  # already there


def _uint8_views(seed: int):
    """The same views twice: normalized by the transform on the host, and left as uint8."""
    from internvideo_fast.data.transforms import build_transform

    clip = torch.randint(0, 256, (6, 3, 30, 41), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    kwargs = dict(train=True, img_size=24, num_sample=2, flip=True, crop="random_resized", normalization="clip")
    host = build_transform(**kwargs)(clip, torch.Generator().manual_seed(seed))
    raw = build_transform(**kwargs, normalize=False)(clip, torch.Generator().manual_seed(seed))
    return host, raw


def test_normalize_after_the_copy_gives_the_hosts_values():
    """normalize=(mean, std): a uint8 video becomes exactly what the workers' normalization gives; a float
    video (normalized already) passes unchanged."""
    from internvideo_fast.data.transforms import CLIP_MEAN, CLIP_STD

    host, raw = _uint8_views(0)
    assert raw.dtype == torch.uint8 and raw.shape == host.shape
    batches = [{"video": raw, "label": torch.tensor([0, 1])}, {"video": host, "label": torch.tensor([1, 0])}]
    out = list(DevicePrefetcher(batches, "cpu", normalize=(CLIP_MEAN, CLIP_STD)))
    assert out[0]["video"].dtype == torch.float32 and torch.equal(out[0]["video"], host)
    assert out[1]["video"] is host
    assert list(DevicePrefetcher(batches[:1], "cpu"))[0]["video"].dtype == torch.uint8  # no normalize: as is


@pytest.mark.gpu
def test_cuda_normalization_equals_the_hosts():
    from internvideo_fast.data.transforms import CLIP_MEAN, CLIP_STD

    host, raw = _uint8_views(1)
    batch = next(iter(DevicePrefetcher([{"video": raw}], "cuda", normalize=(CLIP_MEAN, CLIP_STD))))
    assert batch["video"].is_cuda and torch.equal(batch["video"].cpu(), host)
