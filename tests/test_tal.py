"""The ActionFormer-style detector: its losses, assignment and Soft-NMS against hand-computed cases, the local
attention against a loop over float64, padding invariance, and a detector that learns a toy sequence."""

import math

import pytest
import torch

from internvideo_fast.models.actionformer import ActionFormer, LocalAttentionBlock, local_attention_mask
from internvideo_fast.models.temporal_detection import (
    assign_targets, decode_segments, diou_loss_1d, point_grid, sigmoid_focal_loss, soft_nms,
)


def test_sigmoid_focal_loss_by_hand():
    # logit 0: p = 1/2. target 1: alpha 0.25 * (1 - 1/2)^2 * ln 2; target 0: 0.75 * (1/2)^2 * ln 2
    loss = sigmoid_focal_loss(torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert loss.tolist() == pytest.approx([0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)])
    # a confident right answer costs almost nothing, a confident wrong one a lot
    logits = torch.tensor([6.0, 6.0], dtype=torch.float64)
    easy, hard = sigmoid_focal_loss(logits, torch.tensor([1.0, 0.0], dtype=torch.float64)).tolist()
    assert easy < 1e-6 < 1.0 < hard


def test_diou_loss_by_hand():
    # predicted [-1, 1], target [-1, 3]: IoU 2/4, enclosing 4, centres 0 and 1 -> 1 - 1/2 + (1/4)^2
    predicted = torch.tensor([[1.0, 1.0], [2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[1.0, 3.0], [2.0, 3.0]], dtype=torch.float64)
    loss = diou_loss_1d(predicted, target)
    assert loss.tolist() == pytest.approx([0.5625, 0.0])
    loss.sum().backward()
    assert torch.isfinite(predicted.grad).all() and predicted.grad[0].abs().sum() > 0


def test_point_grid_and_assignment_by_hand():
    grid = point_grid(8, 2, [(0, 2), (2, 100)])
    assert grid.position.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 4, 6]
    assert grid.level_sizes == [8, 4]
    # [2, 6] (class 1) and the longer [0, 8] (class 0). Level 0 (stride 1): the central region of [2, 6]
    # is (2.5, 5.5) (points 3, 4, 5); only point 4's longer distance (3, 2, 3) lies in [0, 2]. Level 1
    # (stride 2): region (2, 6) -> point 4 only (longer distance 2, in [2, 100]); [0, 8]'s region (1, 7)
    # holds points 2, 4, 6 (longer distances 6, 4, 6); at 4 the shorter segment wins.
    # Offsets (x - a, b - x) / stride.
    classes, offsets = assign_targets(grid, torch.tensor([[2.0, 6.0], [0.0, 8.0]]), torch.tensor([1, 0]), 3)
    positive = classes.sum(1) > 0
    assert positive.nonzero().flatten().tolist() == [4, 9, 10, 11]
    assert classes[positive].argmax(1).tolist() == [1, 0, 1, 0]
    assert offsets[positive].tolist() == [[2.0, 2.0], [1.0, 3.0], [1.0, 1.0], [3.0, 1.0]]
    assert offsets[~positive].abs().sum() == 0
    none, _ = assign_targets(grid, torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), 3)
    assert none.sum() == 0


def test_soft_nms_by_hand():
    segments = torch.tensor([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0], [0.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 1])
    kept_segments, kept_scores, kept_labels = soft_nms(segments, scores, labels, sigma=0.5)
    # [1, 10] overlaps the best by IoU 0.9: 0.8 * exp(-0.81 / 0.5); another class is left alone
    assert kept_scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.8 * math.exp(-0.81 / 0.5)], rel=1e-5)
    assert kept_labels.tolist() == [0, 0, 1, 0]
    assert kept_segments[3].tolist() == [1.0, 10.0]
    assert len(soft_nms(segments, scores, labels, max_keep=2)[1]) == 2
    assert len(soft_nms(segments, scores * 1e-4, labels)[1]) == 0


def test_local_attention_mask_by_hand():
    mask = local_attention_mask(torch.tensor([[True, True, True, False]]), window=3)[0, 0]
    assert mask.int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


def test_local_attention_block_matches_a_float64_loop():
    torch.manual_seed(0)
    block = LocalAttentionBlock(dim=8, num_heads=2, window=5).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[1, 7:] = False
    out = block(x, valid)
    h = block.norm1(x)
    q, k, v = block.qkv(h).view(2, 11, 3, 2, 4).unbind(2)
    expected = torch.zeros_like(x)
    for b in range(2):
        for i in range(11):
            keys = [j for j in range(11) if abs(i - j) <= 2 and valid[b, j]] or [i]
            heads = []
            for head in range(2):
                weights = torch.softmax(torch.stack([q[b, i, head] @ k[b, j, head] for j in keys]) / 2.0, 0)
                heads.append(sum(w * v[b, j, head] for w, j in zip(weights, keys)))
            expected[b, i] = x[b, i] + block.proj(torch.cat(heads))
    expected = (expected + block.mlp(block.norm2(expected))) * valid[..., None]
    torch.testing.assert_close(out, expected)


def _tiny(**overrides):
    args = dict(input_dim=6, num_classes=2, embed_dim=16, num_heads=2, window=5, stem_blocks=1, num_levels=3,
                head_dim=16, regression_ranges=[(0, 4), (4, 8), (8, 1000)])
    args.update(overrides)
    return ActionFormer(**args)


def test_padding_does_not_change_the_valid_points():
    torch.manual_seed(0)
    model = _tiny().eval()
    features = torch.randn(1, 6, 16)
    padded = torch.cat([features, torch.randn(1, 6, 16)], dim=-1)
    valid = torch.cat([torch.ones(1, 16, dtype=torch.bool), torch.zeros(1, 16, dtype=torch.bool)], dim=1)
    logits, offsets, _ = model(features, torch.ones(1, 16, dtype=torch.bool))
    padded_logits, padded_offsets, point_valid = model(padded, valid)
    # level l keeps the first 16 / 2^l of its 32 / 2^l points
    keep = torch.cat([torch.arange(0, 16), torch.arange(32, 40), torch.arange(48, 52)])
    assert point_valid[0, keep].all() and point_valid.sum() == len(keep)
    torch.testing.assert_close(padded_logits[:, keep], logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded_offsets[:, keep], offsets, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.randn(1, 6, 18), torch.ones(1, 18, dtype=torch.bool))


def test_detector_learns_a_toy_sequence():
    """Two classes whose features light up one channel inside their segments: after a short fit the best
    detection of each video is the right class at the right place."""
    torch.manual_seed(0)
    model = _tiny()
    length, batch = 32, 4
    features = 0.1 * torch.randn(batch, 6, length)
    segments, labels = [], []
    for b in range(batch):
        start = 3 + 5 * b
        label = b % 2
        features[b, label, start:start + 8] += 2.0
        segments.append(torch.tensor([[float(start), float(start + 8)]]))
        labels.append(torch.tensor([label]))
    valid = torch.ones(batch, length, dtype=torch.bool)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(120):
        out = model.loss(features, valid, segments, labels)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < 0.5 * first
    model.eval()
    for b, (found, scores, found_labels) in enumerate(model.detect(features, valid)):
        assert found_labels[0].item() == labels[b].item()
        start, end = segments[b][0].tolist()
        inter = max(0.0, min(end, found[0, 1].item()) - max(start, found[0, 0].item()))
        assert inter / ((end - start) + (found[0, 1] - found[0, 0]).item() - inter) > 0.5


def test_decode_segments_uses_strides():
    grid = point_grid(8, 2, [(0, 2), (2, 100)])
    logits = torch.full((12, 1), -20.0)
    logits[10, 0] = 5.0  # level 1, position 4, stride 2
    offsets = torch.zeros(12, 2)
    offsets[10] = torch.tensor([1.0, 1.5])
    segments, scores, labels = decode_segments(grid, logits, offsets, torch.ones(12, dtype=torch.bool))
    assert segments[0].tolist() == [2.0, 7.0] and labels.tolist() == [0]
