"""STAL: RoIAlign against torchvision's algorithm written out in float64, its gradient, the AVA head's box
locality and the token map layout, and the generated-data demo's structure."""

import pytest
import torch

from internvideo_fast.models import create_model
from internvideo_fast.models.ava_head import ActionDetector, AVAHead, token_feature_map
from internvideo_fast.models.roi_align import roi_align, roi_align_reference


@pytest.mark.parametrize("output_size, scale, ratio", [((3, 2), 1.0, 2), ((2, 2), 2.0, 3), ((1, 5), 0.5, 1)])
def test_roi_align_matches_the_reference(output_size, scale, ratio):
    features = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    rois = torch.tensor([[0, 0.0, 0.0, 9.0, 7.0], [1, 1.3, 2.2, 5.7, 6.1], [0, 3.0, 1.0, 3.5, 1.2],
                         [1, 0.1, 0.2, 8.9, 6.95]], dtype=torch.float64)
    rois[:, 1:] /= scale
    expected = roi_align_reference(features, rois, output_size, scale, ratio)
    torch.testing.assert_close(roi_align(features, rois, output_size, scale, ratio), expected)


def test_roi_align_by_hand_and_gradient():
    # a linear ramp f(y, x) = x: bilinear sampling is exact, so a bin's value is its centre's x (pixel
    # centres at integers after the -0.5 shift): box x in [1, 5] -> shifted [0.5, 4.5], 2 bins -> 1.5, 3.5
    ramp = torch.arange(6, dtype=torch.float64).expand(1, 1, 4, 6).contiguous()
    out = roi_align(ramp, torch.tensor([[0, 1.0, 0.0, 5.0, 4.0]], dtype=torch.float64), (1, 2))
    assert out.flatten().tolist() == pytest.approx([1.5, 3.5])
    features = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.7, 1.1, 3.9, 4.2]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, 2), (features,))
    assert roi_align(features, rois[:0], 2).shape == (0, 2, 2, 2)


def test_ava_head_sees_only_its_box():
    head = AVAHead(4, 3, resolution=2, dropout=0.0).eval()
    feature_map = torch.randn(1, 4, 2, 8, 8)
    boxes = torch.tensor([[0, 0.0, 0.0, 0.5, 0.5]])  # the top-left 4 x 4 cells
    before = head(feature_map, boxes)
    changed = feature_map.clone()
    changed[..., 5:, :] = 100.0  # rows and columns beyond the box and its one-cell bilinear reach
    changed[..., :, 5:] = -100.0
    torch.testing.assert_close(head(changed, boxes), before)
    changed[..., 1, 1] += 50.0
    assert not torch.allclose(head(changed, boxes), before)


def test_token_feature_map_layout_and_detector():
    encoder = create_model("videomae_vit_micro_patch16", img_size=32, num_frames=4, num_classes=0).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    tokens = encoder.forward_features(video)
    feature_map = token_feature_map(encoder, video)
    assert feature_map.shape == (2, 96, 2, 2, 2)
    # token (t, h, w) = index t * 4 + h * 2 + w
    torch.testing.assert_close(feature_map[1, :, 1, 0, 1], tokens[1, 1 * 4 + 0 * 2 + 1])
    detector = ActionDetector(encoder, 5, resolution=2)
    logits = detector(video, torch.tensor([[0, 0.1, 0.1, 0.6, 0.9], [1, 0.0, 0.0, 1.0, 1.0], [1, 0.2, 0.3, 0.4, 0.5]]))
    assert logits.shape == (3, 5)


def test_generated_clips_have_the_structure_the_demo_needs():
    from internvideo_fast.train.tasks.stal import make_clips

    video, boxes, labels = make_clips(4, seed=3)
    assert video.shape == (4, 3, 4, 64, 64)
    assert boxes.shape[1] == 5 and ((boxes[:, 1:] >= 0) & (boxes[:, 1:] <= 1)).all()
    assert (boxes[:, 3] > boxes[:, 1]).all() and (boxes[:, 4] > boxes[:, 2]).all()
    assert (labels[:, :3].sum(1) == 1).all()  # one colour action each, "walking" on its own
    assert boxes[:, 0].unique().numel() == 4
