"""Annotation files of the downstream tasks, read strictly: a malformed entry raises
:class:`~internvideo_fast.errors.UserError` naming the file and line.

- :func:`read_temporal_annotations`: ActivityNet / THUMOS14 JSON (the layout ActionFormer reads),
  ``{"database": {video: {"duration": s, "subset": ..., "fps": ..., "annotations": [{"segment": [start, end],
  "label": name}, ...]}}}``. Class names map to ids in sorted order unless ``classes`` gives the order.
  A segment must satisfy ``0 <= start < end``; one that ends past the video's duration is clipped to it
  (ActivityNet has such segments) and counted in ``TemporalAnnotations.clipped``.
- :func:`read_ava_csv`: AVA rows ``video,timestamp,x1,y1,x2,y2,action_id[,person_id]`` with boxes normalized
  to [0, 1]; with ``scores=True`` the eighth column is a detection score instead (AVA's result files).
- :func:`read_qa`: MSRVTT-QA / MSVD-QA-style JSON (an array) or JSON lines, one question per entry:
  ``{"video" or "video_id", "question", "answer"}`` (open-ended: the answer is a string) or with
  ``"choices"`` / ``"options"`` (multiple choice: the answer is the index of the right choice).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from internvideo_fast.errors import UserError

__all__ = [
    "Segment", "BoxDetection", "VideoSegments", "TemporalAnnotations", "QARecord",
    "read_temporal_annotations", "read_ava_csv", "read_qa",
]


@dataclass(frozen=True)
class Segment:
    """One temporal segment (seconds) of class ``label`` in ``video``: ground truth (score 1) or a detection."""

    video: str
    start: float
    end: float
    label: int
    score: float = 1.0


@dataclass(frozen=True)
class BoxDetection:
    """One box of class ``label`` on the keyframe ``(video, timestamp)``; (x1, y1, x2, y2) normalized to
    [0, 1]: ground truth (score 1) or a detection. ``person`` is AVA's person id (-1 when absent)."""

    video: str
    timestamp: float
    box: tuple[float, float, float, float]
    label: int
    score: float = 1.0
    person: int = -1


@dataclass
class VideoSegments:
    """One video of a temporal annotation file: its duration (seconds), subset and segments."""

    name: str
    duration: float
    subset: str
    segments: list[Segment]
    fps: float | None = None


@dataclass
class TemporalAnnotations:
    videos: dict[str, VideoSegments]
    classes: list[str]
    clipped: int = 0  # segments that ended past their video's duration, clipped to it

    def subset(self, name: str) -> list[VideoSegments]:
        """The videos whose ``subset`` is ``name`` (e.g. ``training``, ``validation``), in file order."""
        return [video for video in self.videos.values() if video.subset == name]

    def ground_truth(self, subset: str | None = None) -> list[Segment]:
        videos = self.videos.values() if subset is None else self.subset(subset)
        return [segment for video in videos for segment in video.segments]


@dataclass(frozen=True)
class QARecord:
    """One question about ``video``: open-ended (``answer`` a string, ``choices`` empty) or multiple choice
    (``answer`` the index of the right one of ``choices``)."""

    video: str
    question: str
    answer: str | int
    choices: tuple[str, ...] = field(default=())


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, max(offset, 0)) + 1


def _load_json(path: Path) -> tuple[str, object]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such annotation file") from None
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None


def _number(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(value)


def read_temporal_annotations(path: str | os.PathLike, classes: list[str] | None = None) -> TemporalAnnotations:
    """Read an ActivityNet / THUMOS14-style JSON file (see the module); ``classes`` fixes the label ids."""
    path = Path(path)
    text, data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise UserError(f"{path}:1: expected an object with a 'database' object of videos")
    database = data["database"]
    search_from = max(text.find('"database"'), 0)

    def where_video(name: str) -> tuple[str, int]:
        offset = text.find(json.dumps(name), search_from)
        return f"{path}:{_line_of(text, offset)}", offset

    names = set()
    raw = []
    for name, entry in database.items():
        where, offset = where_video(name)
        if not isinstance(entry, dict):
            raise UserError(f"{where}: video {name!r} must be an object")
        annotations = entry.get("annotations", [])
        if not isinstance(annotations, list):
            raise UserError(f"{where}: video {name!r}: 'annotations' must be a list")
        anchor = offset
        for index, item in enumerate(annotations):
            anchor = text.find('"segment"', anchor + 1) if anchor >= 0 else -1
            item_where = f"{path}:{_line_of(text, anchor)}" if anchor >= 0 else where
            if not isinstance(item, dict) or "segment" not in item or "label" not in item:
                raise UserError(f"{item_where}: video {name!r} annotation {index} needs 'segment' and 'label'")
            segment = item["segment"]
            if not isinstance(segment, list) or len(segment) != 2:
                raise UserError(f"{item_where}: video {name!r} annotation {index}: segment must be [start, end]")
            start = _number(segment[0], "segment start", item_where)
            end = _number(segment[1], "segment end", item_where)
            if not 0 <= start < end:
                raise UserError(f"{item_where}: video {name!r} annotation {index}: segment [{start}, {end}] "
                                "needs 0 <= start < end")
            label = item["label"]
            if not isinstance(label, str) or not label:
                raise UserError(f"{item_where}: video {name!r} annotation {index}: label must be a class name")
            names.add(label)
            raw.append((name, start, end, label, item_where))
    if classes is None:
        classes = sorted(names)
    ids = {name: index for index, name in enumerate(classes)}
    videos: dict[str, VideoSegments] = {}
    for name, entry in database.items():
        where, _ = where_video(name)
        duration = _number(entry.get("duration"), "duration", where) if "duration" in entry else math.inf
        if duration <= 0:
            raise UserError(f"{where}: video {name!r}: duration must be positive, got {duration}")
        fps = _number(entry["fps"], "fps", where) if "fps" in entry else None
        videos[name] = VideoSegments(name, duration, str(entry.get("subset", "")), [], fps)
    clipped = 0
    for name, start, end, label, where in raw:
        if label not in ids:
            raise UserError(f"{where}: video {name!r}: label {label!r} is not one of the {len(classes)} classes")
        duration = videos[name].duration
        if start >= duration:
            raise UserError(f"{where}: video {name!r}: segment starts at {start}, after the video's end ({duration})")
        if end > duration:
            end, clipped = duration, clipped + 1
        videos[name].segments.append(Segment(name, start, end, ids[label]))
    return TemporalAnnotations(videos, list(classes), clipped)


def read_ava_csv(path: str | os.PathLike, scores: bool = False) -> list[BoxDetection]:
    """Read AVA rows (see the module). Action ids are kept as written (AVA's are 1-based)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such annotation file")
    rows = []
    with open(path, newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"{path}:{line_number}"
            if len(row) not in ((8,) if scores else (7, 8)):
                wanted = "8 (video,timestamp,x1,y1,x2,y2,action_id,score)" if scores else \
                    "7 or 8 (video,timestamp,x1,y1,x2,y2,action_id[,person_id])"
                raise UserError(f"{where}: {len(row)} columns, expected {wanted}")
            video = row[0].strip()
            if not video:
                raise UserError(f"{where}: empty video id")
            try:
                timestamp = float(row[1])
                box = tuple(float(cell) for cell in row[2:6])
                label = int(row[6])
                last = float(row[7]) if scores else (int(row[7]) if len(row) == 8 else -1)
            except ValueError as error:
                raise UserError(f"{where}: {error}") from None
            x1, y1, x2, y2 = box
            if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
                raise UserError(f"{where}: box {box} must be normalized with 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1")
            if not math.isfinite(timestamp):
                raise UserError(f"{where}: timestamp must be finite")
            if scores:
                rows.append(BoxDetection(video, timestamp, box, label, score=last))
            else:
                rows.append(BoxDetection(video, timestamp, box, label, person=last))
    return rows


def _json_lines(text: str, path: Path):
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{line_number}: not valid JSON: {error.msg}") from None


def _json_array(text: str, path: Path):
    """The items of a top-level JSON array with the line each starts on."""
    decoder = json.JSONDecoder()
    position = len(text) - len(text.lstrip())
    if not text.startswith("[", position):
        raise UserError(f"{path}:{_line_of(text, position)}: expected a JSON array of questions (or JSON lines)")
    position += 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            raise UserError(f"{path}:{_line_of(text, position)}: the JSON array is not closed")
        if text[position] == "]":
            return
        try:
            item, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
        yield _line_of(text, position), item
        position = end


def read_qa(path: str | os.PathLike, video_name: str = "{}") -> list[QARecord]:
    """Read questions (see the module). ``video_name`` formats the video id into a name, e.g. ``"video{}"``
    for MSRVTT-QA's numeric ``video_id``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such question file") from None
    items = _json_lines(text, path) if path.suffix == ".jsonl" else _json_array(text, path)
    records = []
    for line_number, item in items:
        where = f"{path}:{line_number}"
        if not isinstance(item, dict):
            raise UserError(f"{where}: a question must be an object")
        video = item.get("video", item.get("video_id"))
        if video is None or isinstance(video, (dict, list)) or str(video) == "":
            raise UserError(f"{where}: missing 'video' (or 'video_id')")
        question = item.get("question", "")
        if not isinstance(question, str):
            raise UserError(f"{where}: 'question' must be a string")
        if "answer" not in item:
            raise UserError(f"{where}: missing 'answer'")
        answer = item["answer"]
        choices = item.get("choices", item.get("options"))
        if choices is not None:
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise UserError(f"{where}: 'choices' must be a list of at least 2 strings")
            if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
                raise UserError(f"{where}: a multiple-choice 'answer' must be an index below {len(choices)}, "
                                f"got {answer!r}")
            records.append(QARecord(video_name.format(video), question, answer, tuple(choices)))
        else:
            if not isinstance(answer, str) or not answer.strip():
                raise UserError(f"{where}: an open-ended 'answer' must be a non-empty string")
            records.append(QARecord(video_name.format(video), question, answer))
    return records
