"""Dataset and loader: a corpus of bad files never crashes an epoch (each reported once, replaced or
skipped, counted), shards are disjoint and cover the list, `start_step` resumes exactly, workers, views."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from internvideo_fast.data import DataConfig, VideoDataset, build_loader, make_sample_dataset, read_video_list
from internvideo_fast.data.dataset import is_skipped
from internvideo_fast.data.decode import DecodeError
from internvideo_fast.data.lists import VideoRecord
from internvideo_fast.data.sampling import DenseSampler
from internvideo_fast.data.transforms import build_transform

MUST_BE_BAD = ["bad/random.mp4", "bad/empty.mp4", "bad/missing.mp4", "bad/moov_at_end_cut.mp4",
               "bad/one_frame.mp4"]
MAY_BE_BAD = ["bad/faststart_cut.mp4", "bad/webm_cut.webm"]


def _ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small sample dataset plus a bad-video corpus, with list files mixing both."""
    root = tmp_path_factory.mktemp("loader")
    sample = make_sample_dataset(root, num_classes=3, clips_per_class=4, val_per_class=2, num_frames=20,
                                 size=(32, 40), fps=8, seed=1)
    bad = root / "bad"
    bad.mkdir()
    (bad / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    (bad / "empty.mp4").write_bytes(b"")
    source = ["-f", "lavfi", "-i", "testsrc=size=40x32:rate=8", "-frames:v", "24"]
    _ffmpeg([*source, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(bad / "full_moov_end.mp4")])
    _ffmpeg([*source, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(bad / "full_fast.mp4")])
    _ffmpeg([*source, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", str(bad / "full.webm")])
    _ffmpeg([*source[:-1], "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(bad / "one_frame.mp4")])
    for name, cut, fraction in (("full_moov_end.mp4", "moov_at_end_cut.mp4", 0.6),
                                ("full_fast.mp4", "faststart_cut.mp4", 0.5), ("full.webm", "webm_cut.webm", 0.5)):
        data = (bad / name).read_bytes()
        (bad / cut).write_bytes(data[: int(len(data) * fraction)])
    good = read_video_list(sample.train_list)
    bad_records = [VideoRecord(name, 0) for name in MUST_BE_BAD + MAY_BE_BAD]
    mixed = good[:6] + bad_records[:4] + good[6:] + bad_records[4:]
    (root / "mixed.txt").write_text("".join(f"{r.path} {r.label}\n" for r in mixed))
    return root, sample, good, mixed


def _dataset(root, records, on_error="replace", short_video="error"):
    return VideoDataset(records, root, DenseSampler(4, 2, train=True, short_video=short_video),
                        build_transform(train=True, img_size=24, crop="multiscale"), on_error=on_error,
                        decode_timeout_s=20, seed=3)


def test_bad_files_replaced_and_reported_once(corpus, caplog):
    root, _, good, mixed = corpus
    dataset = _dataset(root, mixed)
    good_paths = {r.path for r in good}
    with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.dataset"):
        for _ in range(2):
            for i in range(len(dataset)):
                sample = dataset[i]
                assert sample["video"].shape == (3, 4, 24, 24)
                assert sample["frame_indices"].shape == (4,)
                returned = mixed[int(sample["index"])]
                if mixed[i].path in MUST_BE_BAD:
                    assert returned.path in good_paths and int(sample["label"]) == returned.label
    bad = {Path(p).relative_to(root).as_posix(): reason for p, reason in dataset.bad_videos().items()}
    assert set(MUST_BE_BAD) <= set(bad) <= set(MUST_BE_BAD + MAY_BE_BAD)
    assert "too short" not in bad["bad/one_frame.mp4"] or "ShortVideoError" in bad["bad/one_frame.mp4"]
    assert "FileNotFoundError" in bad["bad/missing.mp4"]
    for name in bad:
        assert sum(name in record.getMessage() for record in caplog.records) == 1, name
    summary = dataset.summary()
    assert summary["bad_videos"] == len(bad) and summary["replaced"] >= 2 * len(MUST_BE_BAD)


def test_replacement_is_deterministic(corpus):
    root, _, _, mixed = corpus
    first = [int(_dataset(root, mixed)[i]["index"]) for i in range(len(mixed))]
    second = [int(_dataset(root, mixed)[i]["index"]) for i in reversed(range(len(mixed)))][::-1]
    assert first == second


def test_skip_raise_and_loop(corpus):
    root, _, _, mixed = corpus
    skipping = _dataset(root, mixed, on_error="skip")
    position = [r.path for r in mixed].index("bad/empty.mp4")
    marker = skipping[position]  # a skip marker carrying the report, so the loader can name the file
    assert is_skipped(marker) and int(marker["index"]) == position and skipping.summary()["skipped"] == 1
    ((path, reason),) = marker["bad_videos"]
    assert path.endswith("bad/empty.mp4") and "empty file" in reason
    again = skipping[position]  # known bad: skipped without decoding, reported once
    assert is_skipped(again) and again["bad_videos"] == []
    with pytest.raises(DecodeError, match="random.mp4"):
        _dataset(root, mixed, on_error="raise")[[r.path for r in mixed].index("bad/random.mp4")]
    looping = _dataset(root, mixed, short_video="loop")
    position = [r.path for r in mixed].index("bad/one_frame.mp4")
    one = looping[position]
    assert one["frame_indices"].tolist() == [0, 0, 0, 0] and int(one["index"]) == position


def _cfg(corpus, **overrides):
    root, sample, _, _ = corpus
    fields = dict(list_file=str(sample.train_list), num_frames=4, stride=2, img_size=24, batch_size=3,
                  decode_timeout_s=20)
    fields.update(overrides)
    return DataConfig(**fields)


@pytest.mark.parametrize("train", [False, True])
def test_shards_disjoint_and_covering(corpus, train):
    n = len(corpus[2])  # 12
    for world_size in (1, 3, 5):
        shards = [build_loader(_cfg(corpus, train=train), rank=r, world_size=world_size, seed=7).indices()
                  for r in range(world_size)]
        flat = [i for shard in shards for i in shard]
        assert set(flat) == set(range(n))
        if train:
            assert len({len(s) for s in shards}) == 1  # padded to equal length
        else:
            assert sorted(flat) == list(range(n))  # disjoint, each once
    a = build_loader(_cfg(corpus), seed=7).indices()
    b = build_loader(_cfg(corpus), seed=8).indices()
    loader = build_loader(_cfg(corpus), seed=7)
    loader.set_epoch(1)
    assert a != b and a != loader.indices() and sorted(a) == sorted(b)


def test_eval_pass_indices(corpus):
    loader = build_loader(_cfg(corpus, train=False, batch_size=5), rank=1, world_size=2)
    seen = torch.cat([batch["index"] for batch in loader]).tolist()
    assert seen == loader.indices() and len(loader) == 2


def test_resume_start_step(corpus):
    full = list(build_loader(_cfg(corpus), seed=11))
    assert len(full) == len(build_loader(_cfg(corpus), seed=11)) == 4
    resumed = list(build_loader(_cfg(corpus), seed=11, start_step=2))
    assert len(resumed) == 2
    for a, b in zip(full[2:], resumed):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    batch = full[0]
    assert batch["video"].shape == (3, 3, 4, 24, 24) and batch["video"].dtype == torch.float32
    assert batch["label"].shape == (3,) and batch["frame_indices"].shape == (3, 4)


def test_workers_views_and_bad_summary(corpus, caplog):
    root = corpus[0]
    cfg = _cfg(corpus, list_file=str(root / "mixed.txt"), num_workers=2, repeated_aug=2, short_video="error",
               batch_size=5, drop_last=False)  # 19 records, all seen
    loader = build_loader(cfg, seed=2)
    with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.loader"):
        batches = list(loader)
    assert len(batches) == len(loader) == 4 and len(read_video_list(root / "mixed.txt")) == 19
    for k, batch in enumerate(batches):
        videos = 5 if k < 3 else 4
        assert batch["video"].shape == (2 * videos, 3, 4, 24, 24)
        assert torch.equal(batch["index"][0::2], batch["index"][1::2]) and batch["view"].tolist() == [0, 1] * videos
    bad = {Path(p).relative_to(root).as_posix() for p in loader.bad_videos()}
    assert set(MUST_BE_BAD) <= bad <= set(MUST_BE_BAD + MAY_BE_BAD)
    for name in bad:
        assert sum(name in record.getMessage() for record in caplog.records) == 1, name
    assert loader.summary()["bad_videos"] == len(bad)


def test_remembered_bad_files_are_not_decoded_or_named_again(corpus, caplog, monkeypatch):
    from internvideo_fast.data import decode

    root = corpus[0]
    cfg = _cfg(corpus, list_file=str(root / "mixed.txt"), short_video="error", batch_size=5, drop_last=False)
    first = build_loader(cfg, seed=2)
    list(first)
    second = build_loader(cfg, seed=2)
    second.set_epoch(1)
    second.remember_bad(first.bad_videos())
    opened = []
    real_open = decode.open_video
    monkeypatch.setattr(decode, "open_video", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="internvideo_fast.data.loader"):
        list(second)
    assert not [r for r in caplog.records if "bad video" in r.getMessage()]
    assert opened and not set(opened) & set(first.bad_videos())


def test_multi_view_test_and_segment(corpus):
    cfg = _cfg(corpus, train=False, test_clips=2, test_crops=3, batch_size=2, short_side=28)
    batch = next(iter(build_loader(cfg)))
    assert batch["video"].shape == (12, 3, 4, 24, 24) and batch["view"].tolist() == list(range(6)) * 2
    assert torch.equal(batch["frame_indices"][0], batch["frame_indices"][2])  # crops of one clip
    assert not torch.equal(batch["frame_indices"][0], batch["frame_indices"][3])  # the next clip
    segment = next(iter(build_loader(_cfg(corpus, sampling="segment", num_segments=5, normalization="clip"))))
    assert segment["video"].shape == (3, 3, 5, 24, 24)


def test_loader_kinds(corpus):
    from internvideo_fast.data.dali import DaliVideoLoader, dali_available

    if dali_available():
        assert isinstance(build_loader(_cfg(corpus, loader="dali")), DaliVideoLoader)
    else:
        with pytest.raises(ImportError):
            build_loader(_cfg(corpus, loader="dali"))
    assert len(build_loader(_cfg(corpus, loader="torch"))) == 4
    assert not isinstance(build_loader(_cfg(corpus, loader="auto")), DaliVideoLoader)  # no GPU here
    with pytest.raises(ValueError):
        _cfg(corpus, loader="decord")


def test_hanging_decode_times_out(corpus, monkeypatch):
    import time

    from internvideo_fast.data import decode

    root, _, good, _ = corpus
    real_open = decode.open_video

    def slow_open(path, *args, **kwargs):
        if str(path).endswith(good[0].path):
            time.sleep(3)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(decode, "open_video", slow_open)
    dataset = VideoDataset(good, root, DenseSampler(4, 2), build_transform(img_size=24), decode_timeout_s=0.3)
    start = time.perf_counter()
    sample = dataset[0]
    assert time.perf_counter() - start < 2.5
    assert int(sample["index"]) != 0
    (reason,) = dataset.bad_videos().values()
    assert "DecodeTimeout" in reason


def test_loader_benchmark_runs_every_available_loader(tmp_path):
    """bench/loader.py (the loader throughput benchmark) on a tiny dataset: one row per loader it can run,
    each with a rate, and its JSON written."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "bench" / "loader.py"
    spec = importlib.util.spec_from_file_location("loader_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "loader.json"
    bench.main(["--data", str(tmp_path / "clips"), "--clips", "4", "--frames", "72", "--size", "96", "64",
                "--batch-size", "2", "--batches", "1", "--workers", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    loaders = {row["loader"] for row in result["rows"]}
    assert {"torch+torchcodec", "torch+pyav"} <= loaders
    assert all("error" not in row and row["clips_per_s"] > 0 for row in result["rows"]), result["rows"]
    assert result["cpu_augmentation_ms_per_clip"] > 0


def test_caption_tokens_come_from_the_workers(corpus, tmp_path):
    """A video-text list's batches carry `tokens` [B, max_text_len] (CLIP ids, one row per view) and the
    record indices of the captions cut to max_text_len."""
    from internvideo_fast.models.tokenizer import tokenize

    root, sample, good, _ = corpus
    captions = ["a square moving left", "a square moving to the right across the whole frame quickly", "up"]
    text_list = tmp_path / "captions.txt"
    text_list.write_text("".join(f"{r.path}\t{captions[i % 3]}\n" for i, r in enumerate(good[:6])))
    cfg = _cfg(corpus, list_file=str(text_list), root=str(root), text=True, max_text_len=8, num_workers=1,
               repeated_aug=2, shuffle=False)
    batches = list(build_loader(cfg, seed=0))
    assert len(batches) == 2
    for batch in batches:
        expected = tokenize(batch["caption"], context_length=8)
        assert batch["tokens"].shape == (6, 8) and torch.equal(batch["tokens"], expected)
        assert batch["tokens"][:, -1].tolist().count(49407) == 2  # the long caption's two views end in EOT
    assert [batch["captions_cut"] for batch in batches] == [[1], [4]]
    with pytest.raises(ValueError, match="max_text_len must be an int >= 2"):
        _cfg(corpus, list_file=str(text_list), text=True, max_text_len=1)
