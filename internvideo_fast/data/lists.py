"""Video list files: the VideoMAE / mmaction2 formats, and video-text lists for multimodal pretraining.

Formats read by :func:`read_video_list` (detected from the first non-empty line):

- ``path label`` lines, space separated (VideoMAE, mmaction2 ``VideoDataset``). The path may not contain
  spaces; anything after the label is ignored only if ``allow_extra=True`` (mmaction2 writes nothing else).
  Empty lines and lines starting with ``#`` are skipped.
- CSV with a header that has the columns ``path`` and ``label`` (more columns are allowed and kept in
  ``VideoRecord.extra``); quoting follows Python's ``csv`` module, so such paths may contain spaces.

Paths are relative to ``root`` (absolute paths are kept as they are). Malformed lines raise
:class:`ListFileError` (a ``ValueError`` and a one-line ``UserError``) ``"<file>:<line>: ..."``; every record
keeps its ``where`` (``"<file>:<line>"``), so later checks (a label beyond the model's classes) name the line.

:func:`read_video_text_list` reads ``path<TAB>caption`` lines into :class:`VideoTextRecord`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from internvideo_fast.errors import UserError

__all__ = ["ListFileError", "VideoRecord", "VideoTextRecord", "read_video_list", "read_video_text_list",
           "write_video_list"]


class ListFileError(UserError, ValueError):
    """A malformed line of a video list; the message starts with ``<file>:<line>``."""


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video: ``path`` as written in the list (relative to the dataset root) and its label."""

    path: str
    label: int
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    where: str = field(default="", compare=False, hash=False)  # "list_file:line", for errors about it

    def full_path(self, root: str | os.PathLike | None) -> str:
        return self.path if root is None or os.path.isabs(self.path) else os.path.join(os.fspath(root), self.path)


@dataclass(frozen=True)
class VideoTextRecord:
    """One video with its caption (video-text pretraining lists)."""

    path: str
    caption: str
    label: int = -1  # no action label: the loader's contract keeps a label column

    def full_path(self, root: str | os.PathLike | None) -> str:
        return self.path if root is None or os.path.isabs(self.path) else os.path.join(os.fspath(root), self.path)


def _parse_label(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ListFileError(f"{where}: label {text!r} is not an integer") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"video list {path} does not exist") from None


def _looks_like_csv(first_line: str) -> bool:
    header = [cell.strip().lower() for cell in next(csv.reader([first_line]))]
    return "path" in header and "label" in header


def read_video_list(list_file: str | os.PathLike, allow_extra: bool = False) -> list[VideoRecord]:
    """Reads a ``path label`` list or a CSV list with a ``path,label`` header (see the module docstring)."""
    list_path = Path(list_file)
    text = _read_text(list_path)
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), None)
    if first is None:
        return []
    if _looks_like_csv(first):
        return _read_csv(list_path, text)
    records = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{list_path}:{number}"
        parts = stripped.split()
        if len(parts) < 2 or (len(parts) > 2 and not allow_extra):
            raise ListFileError(
                f"{where}: expected 'path label' (a path without spaces, then an integer label), got {stripped!r}"
            )
        records.append(VideoRecord(parts[0], _parse_label(parts[1], where), where=where))
    return records


def _read_csv(list_path: Path, text: str) -> list[VideoRecord]:
    reader = csv.reader(io.StringIO(text))
    header = None
    records = []
    for row in reader:
        number = reader.line_num
        if not row or not "".join(row).strip():
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            path_col, label_col = header.index("path"), header.index("label")
            continue
        where = f"{list_path}:{number}"
        if len(row) != len(header):
            raise ListFileError(f"{where}: expected {len(header)} CSV columns {header}, got {len(row)}: {row!r}")
        path = row[path_col].strip()
        if not path:
            raise ListFileError(f"{where}: empty path")
        extra = {name: row[i] for i, name in enumerate(header) if i not in (path_col, label_col)}
        records.append(VideoRecord(path, _parse_label(row[label_col].strip(), where), extra, where=where))
    return records


def read_video_text_list(list_file: str | os.PathLike) -> list[VideoTextRecord]:
    """Reads ``path<TAB>caption`` lines (the caption may contain spaces, not tabs or newlines)."""
    list_path = Path(list_file)
    records = []
    for number, line in enumerate(_read_text(list_path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ListFileError(f"{list_path}:{number}: expected 'path<TAB>caption', got {line!r}")
        records.append(VideoTextRecord(parts[0].strip(), parts[1].strip()))
    return records


def write_video_list(list_file: str | os.PathLike, records) -> None:
    """Writes ``path label`` lines (the format :func:`read_video_list` reads first)."""
    lines = []
    for record in records:
        if any(ch.isspace() for ch in record.path):
            raise ListFileError(f"path {record.path!r} contains whitespace; use a CSV list")
        lines.append(f"{record.path} {int(record.label)}\n")
    Path(list_file).write_text("".join(lines))
