"""The downstream annotation readers: the formats read right, malformed files rejected naming file and line."""

import json

import pytest

from internvideo_fast.data.annotations import read_ava_csv, read_qa, read_temporal_annotations
from internvideo_fast.errors import UserError

ACTIVITYNET = """{
  "version": "1.3",
  "database": {
    "v_a": {
      "subset": "training", "duration": 30.0, "fps": 25,
      "annotations": [
        {"segment": [1.0, 5.5], "label": "Zumba"},
        {"segment": [20.0, 31.0], "label": "Archery"}
      ]
    },
    "v_b": {
      "subset": "validation", "duration": 12.0,
      "annotations": [
        {"segment": [2.0, 4.0], "label": "Zumba"}
      ]
    }
  }
}
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_temporal_annotations_read(tmp_path):
    annotations = read_temporal_annotations(_write(tmp_path, "anet.json", ACTIVITYNET))
    assert annotations.classes == ["Archery", "Zumba"]
    a = annotations.videos["v_a"]
    assert (a.duration, a.subset, a.fps) == (30.0, "training", 25.0)
    assert [(s.start, s.end, s.label) for s in a.segments] == [(1.0, 5.5, 1), (20.0, 30.0, 0)]
    assert annotations.clipped == 1  # 31.0 ends past the 30 s video
    assert [v.name for v in annotations.subset("validation")] == ["v_b"]
    assert len(annotations.ground_truth()) == 3
    # a given class order fixes the ids
    fixed = read_temporal_annotations(tmp_path / "anet.json", classes=["Zumba", "Archery", "Other"])
    assert [s.label for s in fixed.videos["v_a"].segments] == [0, 1]


@pytest.mark.parametrize("old, new, line, message", [
    ('[2.0, 4.0]', '[4.0, 2.0]', 14, "start < end"),
    ('[2.0, 4.0]', '[2.0]', 14, r"\[start, end\]"),
    ('"label": "Zumba"}\n      ]\n    }\n  }', '"label": ""}\n      ]\n    }\n  }', 14, "class name"),
    ('[1.0, 5.5]', '["1", 5.5]', 7, "finite number"),
    ('"duration": 12.0', '"duration": -1', 11, "duration must be positive"),
    ('"duration": 12.0', '"duration": 1.0', 14, "after the video's end"),
    ('"v_b": {', '"v_b": [', 12, "not valid JSON"),
])
def test_temporal_annotations_reject_malformed_entries(tmp_path, old, new, line, message):
    assert old in ACTIVITYNET
    path = _write(tmp_path, "bad.json", ACTIVITYNET.replace(old, new, 1))
    with pytest.raises(UserError, match=message) as error:
        read_temporal_annotations(path)
    assert f"{path}:{line}:" in str(error.value)


def test_temporal_annotations_reject_an_unknown_class_and_a_missing_database(tmp_path):
    path = _write(tmp_path, "anet.json", ACTIVITYNET)
    with pytest.raises(UserError, match=rf"{path}:8: .*.Archery' is not one of the 1 classes"):
        read_temporal_annotations(path, classes=["Zumba"])
    with pytest.raises(UserError, match="'database'"):
        read_temporal_annotations(_write(tmp_path, "x.json", '{"videos": {}}'))
    with pytest.raises(UserError, match="no such annotation file"):
        read_temporal_annotations(tmp_path / "missing.json")


AVA = "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,80,1\n-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,12,1\n\nvid2,0903,0.1,0.2,0.3,0.4,9\n"


def test_ava_csv_read(tmp_path):
    rows = read_ava_csv(_write(tmp_path, "ava.csv", AVA))
    assert len(rows) == 3
    assert rows[0].video == "-5KQ66BBWC4" and rows[0].timestamp == 902.0
    assert rows[0].box == (0.077, 0.151, 0.283, 0.811) and rows[0].label == 80 and rows[0].person == 1
    assert rows[2].person == -1
    scored = read_ava_csv(_write(tmp_path, "det.csv", "v,902,0.1,0.1,0.5,0.5,3,0.75\n"), scores=True)
    assert scored[0].score == 0.75 and scored[0].label == 3


@pytest.mark.parametrize("bad, message", [
    ("v,902,0.1,0.1,0.5,0.5", "6 columns"),
    ("v,902,0.5,0.1,0.1,0.5,3,1", "must be normalized"),
    ("v,902,0.1,0.1,0.5,1.5,3,1", "must be normalized"),
    ("v,abc,0.1,0.1,0.5,0.5,3,1", "could not convert"),
    ("v,902,0.1,0.1,0.5,0.5,x,1", "invalid literal"),
    (",902,0.1,0.1,0.5,0.5,3,1", "empty video id"),
])
def test_ava_csv_rejects_malformed_rows(tmp_path, bad, message):
    path = _write(tmp_path, "ava.csv", AVA + bad + "\n")
    with pytest.raises(UserError, match=message) as error:
        read_ava_csv(path)
    assert f"{path}:5:" in str(error.value)


def test_qa_read_open_ended_and_multiple_choice(tmp_path):
    items = [{"question": "what is a man doing?", "answer": "singing", "video_id": 7010, "id": 0},
             {"video": "clip3", "question": "which one?", "choices": ["a dog runs", "a cat sleeps"], "answer": 1}]
    records = read_qa(_write(tmp_path, "qa.json", json.dumps(items, indent=1)), video_name="video{}")
    assert records[0].video == "video7010" and records[0].answer == "singing" and records[0].choices == ()
    assert records[1].video == "videoclip3" and records[1].answer == 1 and len(records[1].choices) == 2
    lines = read_qa(_write(tmp_path, "qa.jsonl", "\n".join(json.dumps(i) for i in items)))
    assert lines[0].video == "7010"


@pytest.mark.parametrize("item, message", [
    ({"question": "q", "answer": "a"}, "missing 'video'"),
    ({"video": "v", "question": "q"}, "missing 'answer'"),
    ({"video": "v", "question": "q", "answer": ""}, "non-empty string"),
    ({"video": "v", "choices": ["x", "y"], "answer": 2}, "index below 2"),
    ({"video": "v", "choices": ["x"], "answer": 0}, "at least 2"),
    ({"video": "v", "question": 3, "answer": "a"}, "'question' must be a string"),
])
def test_qa_rejects_malformed_entries(tmp_path, item, message):
    good = {"video": "v", "question": "q", "answer": "a"}
    text = "[\n" + json.dumps(good) + ",\n" + json.dumps(good) + ",\n" + json.dumps(item) + "\n]\n"
    path = _write(tmp_path, "qa.json", text)
    with pytest.raises(UserError, match=message) as error:
        read_qa(path)
    assert f"{path}:4:" in str(error.value)
    lines = _write(tmp_path, "qa.jsonl", json.dumps(good) + "\n\n" + json.dumps(item) + "\n")
    with pytest.raises(UserError, match=rf"{lines}:3: "):
        read_qa(lines)


def test_qa_rejects_broken_json(tmp_path):
    with pytest.raises(UserError, match=r"qa.json:2: not valid JSON"):
        read_qa(_write(tmp_path, "qa.json", '[\n{"video": }\n]'))
    with pytest.raises(UserError, match="not closed"):
        read_qa(_write(tmp_path, "qa2.json", '[{"video": "v", "answer": "a"}'))
