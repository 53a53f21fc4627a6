"""List files: `path label` lines, CSV with a header, video-text lists, and errors that name file and line."""

from __future__ import annotations

import pytest

from internvideo_fast.data import VideoRecord, VideoTextRecord, read_video_list
from internvideo_fast.data.lists import read_video_text_list, write_video_list


def test_space_separated(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("# comment\n\na/b.mp4 3\n  c.webm 0  \n/abs/d.mp4 12\n")
    records = read_video_list(path)
    assert records == [VideoRecord("a/b.mp4", 3), VideoRecord("c.webm", 0), VideoRecord("/abs/d.mp4", 12)]
    assert records[0].full_path("/root") == "/root/a/b.mp4"
    assert records[2].full_path("/root") == "/abs/d.mp4"


def test_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('path,label,youtube_id\nx/a b.mp4,1,abc\n"y,z.mp4",2,def\n\n')
    records = read_video_list(path)
    assert [(r.path, r.label) for r in records] == [("x/a b.mp4", 1), ("y,z.mp4", 2)]
    assert records[0].extra == {"youtube_id": "abc"}
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("label,path\n4,v.mp4\n")
    assert read_video_list(swapped) == [VideoRecord("v.mp4", 4)]


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("a.mp4 1\nb.mp4\n", 2, "expected 'path label'"),
        ("a.mp4 1\n\nb.mp4 x\n", 3, "not an integer"),
        ("a b.mp4 1\n", 1, "expected 'path label'"),
        ("path,label\na.mp4,1\nb.mp4\n", 3, "CSV columns"),
        ("path,label\na.mp4,one\n", 2, "not an integer"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_video_list(path)
    assert f"{path}:{line}:" in str(info.value)


def test_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_video_list(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    assert read_video_list(tmp_path / "empty.txt") == []


def test_extra_fields_allowed(tmp_path):
    path = tmp_path / "mm.txt"
    path.write_text("a.mp4 1 0 100\n")
    assert read_video_list(path, allow_extra=True) == [VideoRecord("a.mp4", 1)]


def test_round_trip(tmp_path):
    records = [VideoRecord("a/1.mp4", 0), VideoRecord("b/2.mp4", 5)]
    write_video_list(tmp_path / "l.txt", records)
    assert read_video_list(tmp_path / "l.txt") == records
    with pytest.raises(ValueError):
        write_video_list(tmp_path / "m.txt", [VideoRecord("a b.mp4", 0)])


def test_video_text(tmp_path):
    path = tmp_path / "captions.tsv"
    path.write_text("v/1.mp4\ta man plays the guitar\nv/2.mp4\t two dogs, running \n")
    assert read_video_text_list(path) == [
        VideoTextRecord("v/1.mp4", "a man plays the guitar"), VideoTextRecord("v/2.mp4", "two dogs, running")]
    path.write_text("v/1.mp4 no tab here\n")
    with pytest.raises(ValueError, match=f"{path}:1:"):
        read_video_text_list(path)


def test_records_know_their_line_and_labels_are_checked_against_the_classes(tmp_path):
    """A label beyond the model's classes is an error naming the list file and line (it was an index error
    deep in the loss or the confusion matrix), before any video is decoded; list errors are one-line
    UserErrors."""
    from internvideo_fast.data import DataConfig, build_loader
    from internvideo_fast.data.lists import ListFileError
    from internvideo_fast.errors import UserError

    path = tmp_path / "val.txt"
    path.write_text("# comment\na.mp4 0\n\nb.mp4 2\n")
    csv = tmp_path / "val.csv"
    csv.write_text("path,label\na.mp4,1\nb.mp4,5\n")
    assert [r.where for r in read_video_list(path)] == [f"{path}:2", f"{path}:4"]
    assert [r.where for r in read_video_list(csv)] == [f"{csv}:2", f"{csv}:3"]
    build_loader(DataConfig(list_file=str(path), train=False)).check_labels(3)
    with pytest.raises(UserError, match=f"{path}:4: label 2 is outside the model's 2 classes"):
        build_loader(DataConfig(list_file=str(path), train=False)).check_labels(2)
    with pytest.raises(UserError, match=f"{csv}:3: label 5 is outside"):
        build_loader(DataConfig(list_file=str(csv))).check_labels(5)
    (tmp_path / "broken.txt").write_text("a.mp4 zero\n")
    with pytest.raises(ListFileError, match="broken.txt:1: label 'zero' is not an integer"):
        read_video_list(tmp_path / "broken.txt")
    assert issubclass(ListFileError, UserError) and issubclass(ListFileError, ValueError)
