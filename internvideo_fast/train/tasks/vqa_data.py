"""Questions with their decoded clips for ``recipe: vqa``: each item is one question of a
:func:`~internvideo_fast.data.annotations.read_qa` file and ``data.num_frames`` frames of its video
(TSN segment sampling, the centre crop, CLIP normalization). A video that cannot be decoded is reported by
name and its questions are left out of the batch."""

from __future__ import annotations

import os
from collections import Counter

import torch

from internvideo_fast.data.annotations import QARecord

__all__ = ["QADataset", "answer_vocabulary", "collate_questions"]


def answer_vocabulary(records: list[QARecord], size: int) -> list[str]:
    """The ``size`` most frequent open-ended answers (ties in first-seen order), normalized."""
    from internvideo_fast.eval.recognition_metrics import normalize_answer

    counts = Counter(normalize_answer(r.answer) for r in records if not r.choices)
    return [answer for answer, _ in counts.most_common(size)]


class QADataset(torch.utils.data.Dataset):
    def __init__(self, records: list[QARecord], root: str, extension: str, num_frames: int, img_size: int,
                 short_side: int | None, backend: str = "auto"):
        from internvideo_fast.data.transforms import build_transform

        self.records, self.root, self.extension = records, root, extension
        self.num_frames, self.backend = num_frames, backend
        self.transform = build_transform(train=False, img_size=img_size, short_side=short_side or img_size,
                                         normalization="clip")

    def __len__(self) -> int:
        return len(self.records)

    def path(self, record: QARecord) -> str:
        name = record.video if os.path.splitext(record.video)[1] else record.video + self.extension
        return name if os.path.isabs(name) else os.path.join(self.root, name)

    def __getitem__(self, index: int):
        from internvideo_fast.data.decode import read_clip
        from internvideo_fast.data.sampling import segment_indices

        record = self.records[index]
        path = self.path(record)
        try:
            frames, _, _ = read_clip(path, lambda n: segment_indices(n, self.num_frames, train=False),
                                     backend=self.backend)
        except Exception as error:  # noqa: BLE001 - reported by name, the batch goes on without it
            print(f"vqa: bad video {path}: {type(error).__name__}: {error}", flush=True)
            return None
        return self.transform(frames)[0], record


def collate_questions(items):
    """``(video [B, 3, T, H, W], records)`` of the items whose video decoded (None when none did)."""
    items = [item for item in items if item is not None]
    if not items:
        return None
    return torch.stack([video for video, _ in items]), [record for _, record in items]
