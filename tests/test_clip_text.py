"""The CLIP text encoder: shapes, causality, end-of-text pooling, OpenAI state-dict names and loading, and
the forward against an independent test-only reference of OpenAI CLIP's text tower (LND layout,
nn.MultiheadAttention with an additive -inf mask, QuickGELU), loaded from our state dict with strict=True."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from helpers import describe_difference
from internvideo_fast.errors import CheckpointError
from internvideo_fast.models.clip_text import (
    LOGIT_SCALE_MAX,
    CLIPTextEncoder,
    clip_text_b16,
    clip_text_l14,
    load_clip_text_state_dict,
)
from internvideo_fast.ops import use_backend

SMALL = dict(vocab_size=100, context_length=16, width=64, layers=2, heads=2, embed_dim=32)


@pytest.fixture(autouse=True)
def _reference_ops():
    with use_backend("reference"):
        yield


def _tokens(n, length, eot_positions, vocab=100):
    """Random ids in [1, vocab - 2], an end-of-text id (vocab - 1, the largest) at the given positions,
    zero padding after it."""
    tokens = torch.randint(1, vocab - 1, (n, length))
    for row, pos in enumerate(eot_positions):
        tokens[row, pos] = vocab - 1
        tokens[row, pos + 1 :] = 0
    return tokens


# ---- independent reference of OpenAI CLIP's text tower ------------------------------------------------
class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _RefBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=_QuickGELU(), c_proj=nn.Linear(4 * width, width)
        ))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask):  # x [L, N, width]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _RefTextTower(nn.Module):
    def __init__(self, vocab_size, context_length, width, layers, heads, embed_dim):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(_RefBlock(width, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, text):
        L = text.shape[1]
        mask = torch.full((L, L), float("-inf")).triu_(1)
        x = (self.token_embedding(text) + self.positional_embedding[:L]).permute(1, 0, 2)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection, x


# ---- tests ------------------------------------------------------------------------------------------
def test_shapes():
    model = CLIPTextEncoder(**SMALL)
    tokens = _tokens(3, 16, [3, 15, 0])
    features, token_features = model(tokens, return_tokens=True)
    assert features.shape == (3, 32) and token_features.shape == (3, 16, 64)
    torch.testing.assert_close(model(tokens), features, rtol=0, atol=0)
    torch.testing.assert_close(model.forward_tokens(tokens), token_features, rtol=0, atol=0)
    # shorter than the context
    assert model(tokens[:, :7]).shape == (3, 32)
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 4))


def test_matches_openai_reference():
    model = CLIPTextEncoder(**SMALL)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters and biases
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    reference = _RefTextTower(**SMALL)
    reference.load_state_dict(model.state_dict(), strict=True)
    tokens = _tokens(4, 16, [5, 15, 2, 9])
    expected, expected_tokens = reference(tokens)
    features, token_features = model(tokens, return_tokens=True)
    torch.testing.assert_close(
        features, expected, rtol=0, atol=1e-5, msg=lambda m: describe_difference(features, expected)
    )
    torch.testing.assert_close(token_features, expected_tokens, rtol=0, atol=1e-5)


def test_causal():
    model = CLIPTextEncoder(**SMALL)
    tokens = _tokens(2, 16, [12, 14])
    before = model.forward_tokens(tokens)
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] % 97) + 1  # a different non-EOT id
    after = model.forward_tokens(changed)
    torch.testing.assert_close(after[:, :6], before[:, :6], rtol=0, atol=1e-6)
    assert (after[:, 6:] - before[:, 6:]).abs().amax(dim=-1).min() > 1e-4


def test_eot_pooling():
    model = CLIPTextEncoder(**SMALL)
    tokens = _tokens(3, 16, [2, 9, 15])
    features, token_features = model(tokens, return_tokens=True)
    eot = torch.tensor([2, 9, 15])
    torch.testing.assert_close(features, token_features[torch.arange(3), eot] @ model.text_projection)
    # what follows the end-of-text token does not matter (causal attention, argmax pooling)
    other = tokens.clone()
    other[0, 3:] = torch.randint(1, 98, (13,))
    torch.testing.assert_close(model(other)[0], features[0], rtol=0, atol=1e-6)


def test_state_dict_names():
    model = CLIPTextEncoder(**SMALL)
    block = [
        "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
        "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
        "mlp.c_proj.weight", "mlp.c_proj.bias",
        "ln_2.weight", "ln_2.bias",
    ]
    expected = {
        "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
        "text_projection", "logit_scale",
    } | {f"transformer.resblocks.{i}.{name}" for i in range(2) for name in block}
    state = model.state_dict()
    assert set(state) == expected
    shapes = {
        "token_embedding.weight": (100, 64), "positional_embedding": (16, 64), "text_projection": (64, 32),
        "logit_scale": (), "transformer.resblocks.0.attn.in_proj_weight": (192, 64),
        "transformer.resblocks.1.mlp.c_fc.weight": (256, 64),
        "transformer.resblocks.1.mlp.c_proj.weight": (64, 256),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    # the OpenAI sizes
    assert tuple(clip_text_b16().state_dict()["text_projection"].shape) == (512, 512)
    l14 = clip_text_l14(layers=1)
    assert tuple(l14.state_dict()["text_projection"].shape) == (768, 768)
    assert l14.transformer.resblocks[0].attn.heads == 12


def test_logit_scale_clamp():
    model = CLIPTextEncoder(**SMALL)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.logit_scale_exp().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    value = model.logit_scale_exp()
    assert value.item() == pytest.approx(100.0, rel=1e-6)
    value.backward()
    assert model.logit_scale.grad.item() == 0.0  # clamped: no gradient pushes it further
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    assert model.logit_scale_exp().item() == pytest.approx(1.0)
    assert LOGIT_SCALE_MAX == pytest.approx(math.log(100))


def _openai_checkpoint(model):
    """A full-CLIP-like state dict: our text keys plus a visual tower and OpenAI's metadata."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update({
        "visual.conv1.weight": torch.zeros(8, 3, 4, 4), "visual.proj": torch.zeros(8, 32),
        "visual_ln_post.weight": torch.ones(8), "visual_proj": torch.zeros(8, 32),
        "input_resolution": torch.tensor(224), "context_length": torch.tensor(16),
        "vocab_size": torch.tensor(100),
    })
    return state


def test_load_report():
    source = CLIPTextEncoder(**SMALL)
    tokens = _tokens(2, 16, [4, 11])
    # InternVideo-MM layout: {'state_dict': {'clip.<key>': tensor}}, fp16 as OpenAI's release
    checkpoint = {"state_dict": {f"clip.{k}": v.half() for k, v in _openai_checkpoint(source).items()}}
    target = CLIPTextEncoder(**SMALL)
    report = target.load_openai_state_dict(checkpoint)
    assert report.ok and report.missing == [] and report.unexpected == []
    assert set(report.ignored) == {
        "clip.visual.conv1.weight", "clip.visual.proj", "clip.visual_ln_post.weight", "clip.visual_proj",
        "clip.input_resolution", "clip.context_length", "clip.vocab_size",
    }
    torch.testing.assert_close(target(tokens), source.half().float()(tokens), rtol=0, atol=1e-5)

    # missing and unexpected keys are reported, the rest still loads
    state = _openai_checkpoint(source)
    del state["logit_scale"]
    state["transformer.resblocks.0.attn.bias_k"] = torch.zeros(1, 1, 64)
    fresh = CLIPTextEncoder(**SMALL)
    with pytest.raises(CheckpointError, match="1 missing key.*logit_scale; 1 unexpected key.*bias_k"):
        load_clip_text_state_dict(fresh, {f"module.{k}": v for k, v in state.items()})  # strict by default
    report = load_clip_text_state_dict(fresh, {f"module.{k}": v for k, v in state.items()}, strict=False)
    assert report.missing == ["logit_scale"]
    assert report.unexpected == ["transformer.resblocks.0.attn.bias_k"]
    assert not report.ok
    torch.testing.assert_close(fresh.token_embedding.weight, source.token_embedding.weight.half().float())

    # a shape mismatch is an error that names the key
    bad = _openai_checkpoint(source)
    bad["text_projection"] = torch.zeros(64, 48)
    with pytest.raises(ValueError, match="text_projection"):
        CLIPTextEncoder(**SMALL).load_openai_state_dict(bad)


def test_from_openai_state_dict():
    source = CLIPTextEncoder(vocab_size=100, context_length=16, width=128, layers=3, heads=2, embed_dim=32)
    checkpoint = {"state_dict": {f"clip.{k}": v for k, v in source.state_dict().items()}}
    model = CLIPTextEncoder.from_openai_state_dict(checkpoint)
    assert (model.vocab_size, model.context_length, model.width, model.embed_dim) == (100, 16, 128, 32)
    assert len(model.transformer.resblocks) == 3
    assert model.transformer.resblocks[0].attn.heads == 2  # width / 64
    tokens = _tokens(2, 16, [3, 8])
    torch.testing.assert_close(model(tokens), source(tokens), rtol=0, atol=0)
