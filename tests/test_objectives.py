"""Objectives: the contrastive loss against plain references, its 2-process gloo version against the
single-process loss on the same global batch (loss and gradients), and the caption decoder / LM loss."""

import math
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from helpers import describe_difference
from internvideo_fast.models.clip_text import CLIPTextEncoder
from internvideo_fast.models.objectives import (
    CaptionDecoder,
    all_gather_with_grad,
    caption_loss,
    contrastive_loss,
    contrastive_loss_ref,
)
from internvideo_fast.ops import use_backend

WORLD = 2
GLOBAL_BATCH, FEATURE_DIM = 6, 16


@pytest.fixture(autouse=True)
def _reference_ops():
    with use_backend("reference"):
        yield


def _loop_reference(v, t, scale):
    """InfoNCE written out per row in float64: the mean over i of -log softmax_j(s cos(v_i, t_j))[i],
    both ways."""
    v, t = v.double(), t.double()
    total = 0.0
    n = v.shape[0]
    for i in range(n):
        row_v = torch.stack([scale * F.cosine_similarity(v[i], t[j], dim=0) for j in range(n)])
        row_t = torch.stack([scale * F.cosine_similarity(t[i], v[j], dim=0) for j in range(n)])
        total = total - torch.log_softmax(row_v, 0)[i] - torch.log_softmax(row_t, 0)[i]
    return total / (2 * n)


# ---- contrastive loss, one process --------------------------------------------------------------------
def test_contrastive_matches_references():
    v = torch.randn(7, FEATURE_DIM, requires_grad=True)
    t = torch.randn(7, FEATURE_DIM, requires_grad=True)
    logit_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss = contrastive_loss(v, t, logit_scale)
    expected = _loop_reference(v.detach(), t.detach(), 1 / 0.07)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) < 1e-5
    ref = contrastive_loss_ref(v, t, logit_scale)
    torch.testing.assert_close(loss, ref)
    grads = torch.autograd.grad(loss, (v, t, logit_scale))
    ref_grads = torch.autograd.grad(ref, (v, t, logit_scale))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # a plain float scale, and half-precision features (computed in fp32)
    torch.testing.assert_close(contrastive_loss(v, t, math.log(1 / 0.07)), ref)
    half = contrastive_loss(v.half(), t.half(), logit_scale)
    assert half.dtype == torch.float32 and abs(half.item() - ref.item()) < 2e-2


def test_contrastive_logit_scale_clamp():
    v, t = torch.randn(5, FEATURE_DIM), torch.randn(5, FEATURE_DIM)
    high = torch.tensor(8.0, requires_grad=True)  # exp(8) > 100: clamped to ln 100
    loss = contrastive_loss(v, t, high)
    assert abs(loss.item() - _loop_reference(v, t, 100.0).item()) < 1e-5
    loss.backward()
    assert high.grad.item() == 0.0
    low = torch.tensor(-2.0)  # clamped to 0: scale 1
    assert abs(contrastive_loss(v, t, low).item() - _loop_reference(v, t, 1.0).item()) < 1e-5


def test_contrastive_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(torch.randn(4, 8), torch.randn(3, 8), 1.0)


def test_all_gather_identity_without_distributed():
    x = torch.randn(3, 4)
    assert not dist.is_initialized()
    assert all_gather_with_grad(x) is x


# ---- contrastive loss, two gloo processes ------------------------------------------------------------
def _global_batch():
    generator = torch.Generator().manual_seed(1234)
    v = torch.randn(GLOBAL_BATCH, FEATURE_DIM, generator=generator)
    t = torch.randn(GLOBAL_BATCH, FEATURE_DIM, generator=generator)
    return v, t, math.log(1 / 0.07)


def _gloo_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        v, t, scale = _global_batch()
        n = GLOBAL_BATCH // WORLD
        v = v[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        t = t[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        logit_scale = torch.tensor(scale, requires_grad=True)
        loss = contrastive_loss(v, t, logit_scale)
        gathered = all_gather_with_grad(v.detach())
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "v": v.grad, "t": t.grad, "scale": logit_scale.grad,
             "gathered": gathered},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_contrastive_two_process_gloo_matches_single_process(tmp_path):
    mp.spawn(_gloo_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    v, t, scale = _global_batch()
    v.requires_grad_(True)
    t.requires_grad_(True)
    logit_scale = torch.tensor(scale, requires_grad=True)
    loss = contrastive_loss(v, t, logit_scale)  # one process: the whole global batch
    loss.backward()

    for r in results:
        torch.testing.assert_close(r["gathered"], v.detach())  # rank order
    # DDP averages over ranks: the mean loss and the mean gradients equal the single-process ones.
    mean_loss = sum(r["loss"] for r in results) / WORLD
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-6, atol=1e-6)
    grad_v = torch.cat([r["v"] for r in results]) / WORLD
    grad_t = torch.cat([r["t"] for r in results]) / WORLD
    grad_scale = sum(r["scale"] for r in results) / WORLD
    torch.testing.assert_close(
        grad_v, v.grad, rtol=1e-5, atol=1e-7, msg=lambda m: describe_difference(grad_v, v.grad)
    )
    torch.testing.assert_close(grad_t, t.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_scale, logit_scale.grad, rtol=1e-5, atol=1e-7)
    # each rank's loss is not the global one on its own (the test would be vacuous otherwise)
    assert all(abs(r["loss"].item() - loss.item()) > 1e-4 for r in results)


# ---- caption decoder ----------------------------------------------------------------------------------
VOCAB, DIM, VISION_DIM = 50, 64, 48


def _decoder(**overrides):
    config = dict(dim=DIM, vocab_size=VOCAB, num_queries=4, layers=2, heads=2, context_length=12,
                  vision_dim=VISION_DIM)
    config.update(overrides)
    return CaptionDecoder(**config)


def _captions(lengths, total=12, eot=VOCAB - 1):
    """CLIP-style rows: SOT-like id, random ids, EOT, zero padding; `lengths` counts ids between them."""
    rows = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        rows[row, 0] = VOCAB - 2
        rows[row, 1 : n + 1] = torch.randint(1, VOCAB - 2, (n,))
        rows[row, n + 1] = eot
    return rows


def test_caption_decoder_shapes_and_names():
    decoder = _decoder()
    video = torch.randn(3, 10, VISION_DIM)
    tokens = _captions([3, 5, 10])
    assert decoder(video, tokens[:, :-1]).shape == (3, 11, VOCAB)
    assert decoder.encode_video(video).shape == (3, 4, DIM)
    names = set(decoder.state_dict())
    assert "head.weight" not in names and "visual_queries" in names
    assert {"blocks.1.self_attn.in_proj_weight", "blocks.1.cross_attn.kv_proj.weight",
            "blocks.1.mlp.fc1.weight",
            "visual_pool.q_proj.weight", "visual_pool.kv_proj.weight"} <= names
    assert decoder.visual_pool.kv_proj.weight.shape == (2 * DIM, VISION_DIM)
    separate = _decoder(tie_embeddings=False, num_queries=256)
    assert separate.num_queries == 256 and separate.state_dict()["head.weight"].shape == (VOCAB, DIM)
    with pytest.raises(ValueError, match="exactly one"):
        decoder(video)
    with pytest.raises(ValueError, match="video_tokens"):
        decoder(torch.randn(3, 10, DIM + 1), tokens)


def _reference_caption_loss(logits, targets, valid):
    """Per-token -log p(target) summed over valid positions, divided by their count, in float64."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    total, count = 0.0, 0
    for b in range(targets.shape[0]):
        for i in range(targets.shape[1]):
            if valid[b, i]:
                total = total - log_probs[b, i, targets[b, i]]
                count += 1
    return total / count


def test_caption_loss_matches_reference_and_ignores_padding():
    decoder = _decoder()
    video = torch.randn(3, 10, VISION_DIM)
    tokens = _captions([3, 6, 10])
    loss = caption_loss(decoder, video, tokens)
    logits = decoder(video, tokens[:, :-1])
    targets = tokens[:, 1:]
    expected = _reference_caption_loss(logits, targets, targets != 0)
    assert abs(loss.item() - expected.item()) < 1e-5
    torch.testing.assert_close(
        loss, F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=0)
    )
    # more padding columns change nothing (causal decoder, padding targets ignored)
    padded_decoder = _decoder(context_length=16)
    state = decoder.state_dict()
    state["positional_embedding"] = torch.cat([state["positional_embedding"], torch.randn(4, DIM)])
    padded_decoder.load_state_dict(state)
    padded = F.pad(tokens, (0, 4))
    torch.testing.assert_close(caption_loss(padded_decoder, video, padded), loss, rtol=1e-6, atol=1e-6)

    # eot_id: a caption's own id 0 inside the text counts as a target; padding after EOT still does not
    with_zero = tokens.clone()
    with_zero[0, 2] = 0
    by_eot = caption_loss(decoder, video, with_zero, eot_id=VOCAB - 1)
    logits = decoder(video, with_zero[:, :-1])
    targets = with_zero[:, 1:]
    positions = torch.arange(targets.shape[1])
    eot_at = (targets == VOCAB - 1).int().argmax(dim=1)
    valid = positions[None, :] <= eot_at[:, None]
    assert abs(by_eot.item() - _reference_caption_loss(logits, targets, valid).item()) < 1e-5
    by_pad = caption_loss(decoder, video, with_zero)
    assert abs(by_pad.item() - _reference_caption_loss(logits, targets, targets != 0).item()) < 1e-5

    # all padding: zero loss, finite zero gradients
    empty = torch.zeros(2, 5, dtype=torch.long)
    zero = caption_loss(decoder, video[:2], empty)
    zero.backward()
    assert zero.item() == 0.0 and decoder.visual_queries.grad.abs().sum().item() == 0.0


def test_caption_decoder_is_causal():
    decoder = _decoder()
    video = torch.randn(2, 10, VISION_DIM)
    tokens = _captions([9, 9])[:, :-1]
    before = decoder(video, tokens)
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] % (VOCAB - 3)) + 1
    assert not torch.equal(changed, tokens)
    after = decoder(video, changed)
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=0, atol=1e-6)
    assert (after[:, 5:] - before[:, 5:]).abs().amax(dim=-1).min() > 1e-5


def test_caption_decoder_video_lengths_and_gradients():
    decoder = _decoder()
    video = torch.randn(2, 10, VISION_DIM)
    tokens = _captions([4, 7])
    lengths = torch.tensor([6, 10], dtype=torch.int32)
    noisy = video.clone()
    noisy[0, 6:] = torch.randn(4, VISION_DIM) * 5  # beyond sample 0's length
    a = caption_loss(decoder, video, tokens, video_lengths=lengths)
    b = caption_loss(decoder, noisy, tokens, video_lengths=lengths)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    a.backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert decoder.visual_queries.grad.abs().sum() > 0 and decoder.token_embedding.weight.grad.abs().sum() > 0


def test_caption_loss_with_text_encoder_features():
    """InternVideo's wiring: the CLIP text encoder's per-token features feed the decoder."""
    text_encoder = CLIPTextEncoder(
        vocab_size=VOCAB, context_length=12, width=DIM, layers=1, heads=2, embed_dim=32
    )
    decoder = _decoder()
    video = torch.randn(2, 10, VISION_DIM)
    tokens = _captions([4, 8])
    features, token_features = text_encoder(tokens, return_tokens=True)
    loss = caption_loss(decoder, video, tokens, text_embeds=token_features)
    logits = decoder(video, text_embeds=token_features[:, :-1])
    targets = tokens[:, 1:]
    assert abs(loss.item() - _reference_caption_loss(logits, targets, targets != 0).item()) < 1e-5
    (loss + contrastive_loss(video.mean(1)[:, :32], features, text_encoder.logit_scale)).backward()
    assert text_encoder.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0
