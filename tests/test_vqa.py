"""VideoQA heads on the tiny multimodal encoder: shapes, choices scored exactly as separate pairs, frozen
encoders, and the demo's generated questions read back through read_qa."""

import pytest
import torch

from internvideo_fast.data.annotations import read_qa
from internvideo_fast.models import create_model
from internvideo_fast.models.tokenizer import tokenize
from internvideo_fast.models.video_qa import VideoQA


@pytest.fixture(scope="module")
def mm():
    torch.manual_seed(0)
    return create_model("internvideo_mm_tiny", with_caption=False)


def test_heads_shapes_and_choices_match_separate_pairs(mm):
    model = VideoQA(mm, num_answers=5, dim=32, depth=1, num_heads=2, dropout=0.0).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    question = tokenize(["what is it?", "where does it go now?"], 16)
    assert model.answer_logits(video, question).shape == (2, 5)
    choices = tokenize(["a", "b c", "d", "e f g", "h", "i"], 16).view(2, 3, 16)
    scores = model.choice_logits(video, choices)
    assert scores.shape == (2, 3)
    # choice 2 of video 1, scored on its own, gives the same score as inside the batch
    alone = model.choice_head(model.fuse(model.video_tokens(video[1:]), choices[1, 2][None]))
    torch.testing.assert_close(alone[0, 0], scores[1, 2], rtol=1e-5, atol=1e-5)
    # the end-of-text position carries the answer: padding after it does not matter
    short = tokenize(["what is it?"], 16)
    longer = tokenize(["what is it?"], 24)
    torch.testing.assert_close(model.answer_logits(video[:1], short), model.answer_logits(video[:1], longer),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no answer vocabulary"):
        VideoQA(mm, num_answers=0, dim=32, num_heads=2).answer_logits(video, question)


def test_frozen_encoders_get_no_gradient(mm):
    model = VideoQA(mm, num_answers=3, dim=32, depth=1, num_heads=2, freeze_encoders=True)
    loss = model.answer_logits(torch.randn(2, 3, 4, 32, 32), tokenize(["q a", "q b"], 16)).sum()
    loss.backward()
    assert all(p.grad is None for p in model.video_text.parameters())
    assert model.text_in.weight.grad is not None and model.answer_head.weight.grad is not None
    for parameter in mm.parameters():  # the module fixture is shared
        parameter.requires_grad_(True)


def test_demo_questions_round_trip(tmp_path):
    from internvideo_fast.train.tasks.vqa import ANSWERS, make_clips, write_questions

    video, colours, directions = make_clips(6, frames=4, seed=5)
    assert video.shape == (6, 3, 4, 32, 32)
    write_questions(tmp_path / "qa.json", colours, directions)
    records = read_qa(tmp_path / "qa.json", video_name="clip{}")
    open_ended = [r for r in records if not r.choices]
    multiple_choice = [r for r in records if r.choices]
    assert len(open_ended) == len(multiple_choice) == 6
    assert all(r.answer in ANSWERS for r in open_ended)
    for r in multiple_choice:
        n = int(r.video.removeprefix("clip"))
        assert r.choices[r.answer] == f"the square is {colours[n]} and moves {directions[n]}"
        assert len(set(r.choices)) == 4
