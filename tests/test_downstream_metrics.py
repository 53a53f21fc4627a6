"""The downstream metrics against small cases worked out by hand (numbers derived in the comments)."""

import pytest

from internvideo_fast.eval.detection_metrics import (
    BoxDetection, Segment, average_precision, box_iou, frame_map, tal_map, temporal_iou,
)
from internvideo_fast.eval.recognition_metrics import closed_set_accuracy, open_set_auroc, vqa_accuracy


def test_average_precision_interpolates_precision_from_the_right():
    # flags T F T F, 3 ground truths: precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3
    # AP = 1/3 * 1 + 1/3 * 2/3 (the missing third of recall adds nothing)
    assert average_precision([True, False, True, False], 3) == pytest.approx(1 / 3 + 2 / 9)
    # the interpolated precision at recall 1/2 is max(1/2, 2/3) = 2/3, not 1/2: F T T, 2 ground truths
    # precision 0, 1/2, 2/3; recall 0, 1/2, 1 -> AP = 1/2 * 2/3 + 1/2 * 2/3
    assert average_precision([False, True, True], 2) == pytest.approx(2 / 3)
    assert average_precision([], 2) == 0.0
    assert average_precision([True], 0) == 0.0


def test_temporal_and_box_iou():
    assert temporal_iou((0, 10), [[5, 15], [20, 30], [0, 10]]).tolist() == pytest.approx([5 / 15, 0, 1])
    assert box_iou((0, 0, 0.5, 0.5), [[0, 0, 0.5, 1.0], [0.25, 0.25, 0.75, 0.75]]).tolist() == pytest.approx(
        [0.5, 0.0625 / (0.25 + 0.25 - 0.0625)])


def test_tal_map_by_hand():
    truth = [Segment("a", 0, 10, 0), Segment("a", 20, 30, 0), Segment("b", 5, 15, 1)]
    detections = [
        Segment("a", 0, 10, 0, 0.9),   # tIoU 1 with [0, 10]: true positive
        Segment("a", 1, 9, 0, 0.8),    # tIoU 0.8 with [0, 10], already matched; 0 with [20, 30]: false positive
        Segment("a", 20, 28, 0, 0.7),  # tIoU 0.8 with [20, 30]: true positive
        Segment("b", 10, 20, 1, 0.5),  # tIoU 5/15 = 1/3 with [5, 15]: true positive at 0.3 only
        Segment("b", 10, 20, 7, 0.5),  # a class without ground truth: ignored
    ]
    result = tal_map(detections, truth, tious=(0.3, 0.5))
    # class 0: flags T F T, 2 ground truths -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6 at both thresholds
    # class 1: AP 1 at tIoU 0.3, 0 at 0.5
    assert result["mAP@0.3"] == pytest.approx((5 / 6 + 1) / 2)
    assert result["mAP@0.5"] == pytest.approx((5 / 6 + 0) / 2)
    assert result["mAP"] == pytest.approx((11 / 12 + 5 / 12) / 2)
    assert result["per_class"][1] == pytest.approx(0.5)


def test_tal_map_falls_back_to_the_next_best_unmatched_segment():
    truth = [Segment("a", 0, 10, 0), Segment("a", 2, 12, 0)]
    detections = [Segment("a", 0, 10, 0, 0.9),   # [0, 10] (tIoU 1)
                  Segment("a", 0, 11, 0, 0.8)]   # best [0, 10] (10/11) is taken; [2, 12] has tIoU 9/12 = 0.75
    assert tal_map(detections, truth, tious=(0.7,))["mAP"] == pytest.approx(1.0)
    # at 0.8 the second detection is a false positive: flags T F -> AP = 1/2
    assert tal_map(detections, truth, tious=(0.8,))["mAP"] == pytest.approx(0.5)


def test_frame_map_by_hand():
    a, b, c = (0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1), (0.1, 0.1, 0.4, 0.4)
    truth = [BoxDetection("v", 902, a, 1), BoxDetection("v", 902, b, 1), BoxDetection("v", 903, c, 1),
             BoxDetection("v", 902, a, 2)]
    detections = [
        BoxDetection("v", 902, (0, 0, 0.5, 1.0), 1, 0.9),   # IoU exactly 0.5 with a: true positive
        BoxDetection("v", 902, (0, 0, 0.5, 0.45), 1, 0.8),  # best box a is taken: false positive
        BoxDetection("v", 903, c, 1, 0.7),                  # true positive
        BoxDetection("v", 904, c, 1, 0.6),                  # a keyframe without ground truth: false positive
        BoxDetection("v", 902, a, 2, 0.5),                  # class 2: true positive
    ]
    result = frame_map(detections, truth)
    # class 1: flags T F T F, 3 ground truths -> AP = 1/3 + 2/9 = 5/9; class 2: AP 1
    assert result["per_class"] == pytest.approx({1: 5 / 9, 2: 1.0})
    assert result["mAP"] == pytest.approx(7 / 9)
    # only the listed classes count, and a listed class without ground truth is left out
    assert frame_map(detections, truth, labels=[2, 5])["mAP"] == pytest.approx(1.0)


def test_open_set_auroc_by_hand():
    # unknown 0.9, 0.4 against known 0.5, 0.1, 0.4: 0.9 beats all 3; 0.4 beats 0.1, ties 0.4 (half), loses
    # to 0.5 -> (3 + 1.5) / 6
    scores = [0.9, 0.5, 0.4, 0.1, 0.4]
    unknown = [True, False, True, False, False]
    assert open_set_auroc(scores, unknown) == pytest.approx(0.75)
    assert open_set_auroc([1.0, 0.0], [False, True]) == 0.0
    with pytest.raises(ValueError, match="both"):
        open_set_auroc([0.1, 0.2], [True, True])


def test_closed_set_and_vqa_accuracy_by_hand():
    assert closed_set_accuracy([0, 1, 2, 3], [0, 1, 1, 9], [False, False, False, True]) == pytest.approx(2 / 3)
    assert vqa_accuracy(["Dog", " cat "], ["dog", "bird"]) == 0.5
    assert vqa_accuracy([1, 2, 0], [1, 0, 0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1"):
        vqa_accuracy([1, 2], [1])
