"""The video-text model (InternVideo-MM): the vl_pretrain objective, zero-shot classification, retrieval."""

import pytest
import torch
import torch.nn.functional as F

from internvideo_fast.models import create_model
from internvideo_fast.models.tokenizer import tokenize
from internvideo_fast.models.videotext import class_embeddings, retrieval_metrics, zero_shot_classify
from internvideo_fast.ops import use_backend


@pytest.fixture(autouse=True)
def _reference_backends():
    with use_backend("reference"):
        yield


def test_vl_objective_trains_both_towers_and_the_decoder():
    model = create_model("internvideo_mm_tiny")
    out = model(torch.randn(3, 3, 4, 32, 32), tokenize(["a dog runs", "juggling balls", "archery"]))
    assert set(out) == {"loss", "contrastive", "caption"} and torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"], out["contrastive"] + out["caption"])
    out["loss"].backward()
    for part in ("visual", "text", "caption_decoder"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part
    assert model.visual_proj.grad is not None


def test_vl_objective_runs_the_video_tower_once_and_matches_separate_passes():
    torch.manual_seed(0)
    model = create_model("internvideo_mm_tiny").eval()  # eval: no dropout, so two passes would agree
    video, tokens = torch.randn(3, 3, 4, 32, 32), tokenize(["a dog runs", "juggling balls", "archery"])
    runs, run = [], model.visual._run
    model.visual._run = lambda *args, **kwargs: runs.append(1) or run(*args, **kwargs)
    out = model(video, tokens)
    assert len(runs) == 1
    from internvideo_fast.models.objectives import caption_loss, contrastive_loss

    expected_contrastive = contrastive_loss(model.encode_video(video), model.encode_text(tokens),
                                            model.text.logit_scale)
    expected_caption = caption_loss(model.caption_decoder, model.visual.forward_tokens(video), tokens)
    torch.testing.assert_close(out["contrastive"], expected_contrastive)
    torch.testing.assert_close(out["caption"], expected_caption)


def test_zero_shot_classification_is_scaled_cosine_similarity_to_prompt_ensembles():
    model = create_model("internvideo_mm_tiny", with_caption=False).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    names = ["running", "juggling", "archery"]
    logits = zero_shot_classify(model, video, names, templates=("a video of {}.", "{}"))
    with torch.no_grad():
        expected = model.encode_video(video) @ class_embeddings(model, names, ("a video of {}.", "{}")).t()
    torch.testing.assert_close(logits, expected * model.text.logit_scale.exp())
    assert torch.allclose(class_embeddings(model, names).norm(dim=-1), torch.ones(3))


def test_retrieval_metrics():
    features = F.normalize(torch.randn(6, 16), dim=-1)
    perfect = retrieval_metrics(features, features)
    assert perfect["t2v_R@1"] == 1.0 and perfect["v2t_R@1"] == 1.0 and perfect["t2v_median_rank"] == 1.0
    shuffled = retrieval_metrics(features, features.roll(1, 0))  # every text matches the wrong video
    assert shuffled["t2v_R@1"] == 0.0 and shuffled["t2v_R@10"] == 1.0
    with pytest.raises(ValueError, match="one text per video: got 6 videos and 5 texts"):
        retrieval_metrics(features, features[:5])  # unequal counts have no pairing (was: recall 1.0)
    with pytest.raises(ValueError, match="no pairs"):
        retrieval_metrics(features[:0], features[:0])


def test_full_size_model_builds_on_the_meta_device():
    with torch.device("meta"):
        model = create_model("internvideo_mm_b16")
    assert model.visual_proj.shape == (768, 512) and model.text.text_projection.shape == (512, 512)


def test_multiple_choice_picks_the_closest_caption():
    from internvideo_fast.models.videotext import multiple_choice

    model = create_model("internvideo_mm_tiny", with_caption=False).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    choices = [["a dog", "a cat", "a car"], ["juggling", "archery", "running"]]
    picked = multiple_choice(model, video, choices)
    with torch.no_grad():
        v = model.encode_video(video)
        expected = [int((model.encode_text(tokenize(c)) @ v[i]).argmax()) for i, c in enumerate(choices)]
    assert picked.tolist() == expected
    with pytest.raises(ValueError, match="same number"):
        multiple_choice(model, video, [["a"], ["b", "c"]])


def test_retrieval_embeds_the_loaders_caption_tokens():
    """Captions are embedded from the loader's tokens (cut to data.max_text_len as in training), not
    re-tokenized at 77 ids: a caption longer than the training length would reach untrained positions."""
    from internvideo_fast.eval.videotext import evaluate_retrieval
    from internvideo_fast.models.tokenizer import tokenize_captions

    torch.manual_seed(0)
    model = create_model("internvideo_mm_tiny", with_caption=False).eval()
    captions = ["a dog runs across the field and jumps over a fence", "juggling three balls", "archery"]
    tokens, cut = tokenize_captions(captions, 6)
    assert cut == [0]
    video = torch.randn(3, 3, 4, 32, 32)
    batch = {"video": video, "index": torch.arange(3), "label": torch.zeros(3, dtype=torch.int64),
             "caption": captions, "tokens": tokens}
    embedded, encode_text = [], model.encode_text
    model.encode_text = lambda ids: embedded.append(ids) or encode_text(ids)
    result = evaluate_retrieval(model, [batch], "cpu")
    assert len(embedded) == 1 and torch.equal(embedded[0], tokens)
    with torch.no_grad():
        expected = retrieval_metrics(model.encode_video(video), encode_text(tokens))
    assert {k: result[k] for k in expected} == expected and result["pairs"] == 3
    del batch["tokens"]  # a loader without tokens: CLIP's 77 ids
    evaluate_retrieval(model, [batch], "cpu")
    assert torch.equal(embedded[1], tokenize(captions))


def test_zero_shot_prompts_must_fit_the_trained_text_length():
    from types import SimpleNamespace

    from internvideo_fast.errors import ConfigError
    from internvideo_fast.eval.videotext import evaluate_zero_shot

    model = create_model("internvideo_mm_tiny", with_caption=False)
    batch = {"video": torch.randn(2, 3, 4, 32, 32), "index": torch.arange(2), "label": torch.tensor([0, 1])}

    class Loader(list):
        cfg = SimpleNamespace(max_text_len=8)

    names = ["running", "juggling"]
    assert evaluate_zero_shot(model, Loader([batch]), names, "cpu", templates=("{}",))["videos"] == 2
    with pytest.raises(ConfigError, match=r"the zero-shot prompt 'a video of a person running.' is longer than "
                                          r"data.max_text_len = 8 ids"):
        evaluate_zero_shot(model, Loader([batch]), names, "cpu")  # "a video of a person running." is 9 ids
