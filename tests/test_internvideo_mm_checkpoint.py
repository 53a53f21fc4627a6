"""Loading the released InternVideo-MM checkpoints (official ``InternVideo.load_model`` format).

A tiny random state dict with the official key names and shapes (IV ``Pretrain/Multi-Modalities-Pretraining/
InternVideo/clip_utils/model.py::VideoIntern`` + ``clip_utils/utils/clip_vit_only_global.py``), wrapped as the
Lightning file is (``{'state_dict': {'clip.' + key: tensor}}``), is loaded into our model; the features are
compared with a test-only reference of the official math written with plain torch ops on the same state
dict, in the official ``[L, N*T, C]`` / ``[L, N, W]`` layouts, importing none of the model code."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from internvideo_fast.errors import CheckpointError
from internvideo_fast.models import create_model
from official_math import balanced_feature, global_block, layer_norm, residual_block
from internvideo_fast.models.internvideo_mm import (
    build_internvideo_mm,
    load_internvideo_mm,
    release_config,
    release_model,
)
from internvideo_fast.ops import use_backend

# Tiny official-format sizes: visual width 64 (2 heads, head dim 32), 3 layers, UniBlocks after the last 2,
# 32x32 frames of 16x16 patches; text width 64 (2 heads), 2 layers, context 12, vocabulary 50; embed 32.
V = dict(width=64, layers=3, heads=2, patch=16, img=32, return_list=(1, 2))
TXT = dict(width=64, layers=2, heads=2, context=12, vocab=50)
EMBED = 32
EOT = TXT["vocab"] - 1  # the largest id, as CLIP's <|endoftext|>


@pytest.fixture(autouse=True)
def _reference_backends():
    with use_backend("reference"):
        yield


# ----------------------------------------------------------------------------------------------------
# The official key list, with random tensors
# ----------------------------------------------------------------------------------------------------
def _block_shapes(prefix: str, C: int, *, extractor: bool = False) -> dict[str, tuple]:
    shapes = {
        f"{prefix}.attn.in_proj_weight": (3 * C, C), f"{prefix}.attn.in_proj_bias": (3 * C,),
        f"{prefix}.attn.out_proj.weight": (C, C), f"{prefix}.attn.out_proj.bias": (C,),
        f"{prefix}.ln_1.weight": (C,), f"{prefix}.ln_1.bias": (C,),
        f"{prefix}.mlp.c_fc.weight": (4 * C, C), f"{prefix}.mlp.c_fc.bias": (4 * C,),
        f"{prefix}.mlp.c_proj.weight": (C, 4 * C), f"{prefix}.mlp.c_proj.bias": (C,),
        f"{prefix}.ln_2.weight": (C,), f"{prefix}.ln_2.bias": (C,),
    }
    if extractor:
        shapes |= {f"{prefix}.ln_3.weight": (C,), f"{prefix}.ln_3.bias": (C,)}
    return shapes


def official_shapes() -> dict[str, tuple]:
    """Every key of the released model's state dict (``clip.`` stripped), with its shape."""
    C, p, W = V["width"], V["patch"], TXT["width"]
    shapes = {
        "visual.conv1.weight": (C, 3, 1, p, p),
        "visual.class_embedding": (C,),
        "visual.positional_embedding": ((V["img"] // p) ** 2 + 1, C),
        "visual.ln_pre.weight": (C,), "visual.ln_pre.bias": (C,),
    }
    for i in range(V["layers"]):
        shapes |= _block_shapes(f"visual.transformer.resblocks.{i}", C)
    shapes["visual.transformer.temporal_cls_token"] = (1, 1, C)
    for j in range(len(V["return_list"])):
        dpe = f"visual.transformer.dpe.{j}"
        shapes |= {f"{dpe}.weight": (C, 1, 3, 3, 3), f"{dpe}.bias": (C,)}
        shapes |= _block_shapes(f"visual.transformer.dec.{j}", C, extractor=True)
    shapes["visual.transformer.balance"] = (C,)
    shapes |= {"visual_ln_post.weight": (C,), "visual_ln_post.bias": (C,), "visual_proj": (C, EMBED)}
    shapes |= {"token_embedding.weight": (TXT["vocab"], W), "positional_embedding": (TXT["context"], W)}
    for i in range(TXT["layers"]):
        shapes |= _block_shapes(f"transformer.resblocks.{i}", W)
    shapes |= {"ln_final.weight": (W,), "ln_final.bias": (W,), "text_projection": (W, EMBED),
               "logit_scale": (), "text_mask_embedding": (1, 1, W)}
    return shapes


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes().items():
        t = torch.randn(shape, generator=g)
        if re.search(r"ln_(1|2|3|pre|post|final)\.weight$", key):
            t = 1 + 0.1 * t
        elif key.endswith("balance") or key == "logit_scale":
            t = 0.5 * t
        elif not key.endswith("embedding") and not key.endswith("cls_token"):
            t = t / max(1, shape[-1]) ** 0.5  # fan-in scaling keeps activations O(1)
        state[key] = t
    return state


def lightning_file(state: dict[str, torch.Tensor]) -> dict:
    """The released file's layout: ``{'state_dict': {'clip.' + key: ...}, ...}`` plus entries outside
    ``clip.`` (here a made-up one, to check they are reported, not silently dropped)."""
    wrapped = {f"clip.{k}": v for k, v in state.items()}
    wrapped["other_head.weight"] = torch.zeros(2, 2)
    return {"epoch": 9, "global_step": 1000, "state_dict": wrapped}


# ----------------------------------------------------------------------------------------------------
# Test-only reference of the official math
# ----------------------------------------------------------------------------------------------------
def reference_encode_video(sd, video):
    """``VideoIntern.encode_video`` with ``vit_only_global``: [N, 3, T, H, W] -> [N, embed] (unnormalized)."""
    C, heads, p = V["width"], V["heads"], V["patch"]
    x = F.conv3d(video, sd["visual.conv1.weight"], stride=(1, p, p))
    N, _, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(N * T, H * W, C)
    x = torch.cat([sd["visual.class_embedding"] + torch.zeros(N * T, 1, C), x], dim=1)
    x = layer_norm(x + sd["visual.positional_embedding"], sd, "visual.ln_pre").permute(1, 0, 2)  # [L, N*T, C]
    cls_token = sd["visual.transformer.temporal_cls_token"].repeat(1, N, 1)
    j = -1
    for i in range(V["layers"]):
        x = residual_block(x, sd, f"visual.transformer.resblocks.{i}", heads)
        if i in V["return_list"]:
            j += 1
            cls_token = global_block(x, cls_token, sd, "visual.transformer", j, heads, N, T, H, W)
    feats = balanced_feature(x, cls_token, sd, "visual.transformer", N, T)
    return layer_norm(feats, sd, "visual_ln_post") @ sd["visual_proj"]


def reference_encode_text(sd, text):
    """``VideoIntern.encode_text`` (causal CLIP text transformer, EOT feature -> text_projection)."""
    n_ctx = text.shape[1]
    x = (sd["token_embedding.weight"][text] + sd["positional_embedding"]).permute(1, 0, 2)
    mask = torch.full((n_ctx, n_ctx), float("-inf")).triu_(1)
    for i in range(TXT["layers"]):
        x = residual_block(x, sd, f"transformer.resblocks.{i}", TXT["heads"], mask)
    x = layer_norm(x.permute(1, 0, 2), sd, "ln_final")
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ sd["text_projection"]


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------
def tiny_release_model():
    visual = dict(img_size=V["img"], patch_size=V["patch"], width=V["width"], layers=V["layers"],
                  heads=V["heads"], dec_layers=V["return_list"])
    text = dict(vocab_size=TXT["vocab"], context_length=TXT["context"], width=TXT["width"],
                layers=TXT["layers"], heads=TXT["heads"], embed_dim=EMBED)
    return release_model(visual, text)


def tokens(seed: int = 1) -> torch.Tensor:
    """CLIP-style ids: <sot>-like start, words, EOT (the largest id), zero padding."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(3, TXT["context"], dtype=torch.long)
    for row, length in enumerate((4, 7, TXT["context"])):
        out[row, :length - 1] = torch.randint(1, EOT, (length - 1,), generator=g)
        out[row, length - 1] = EOT
    return out


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------
def test_every_official_key_is_consumed_and_every_parameter_set(tmp_path):
    state = official_state_dict()
    path = tmp_path / "InternVideo-MM-tiny.ckpt"
    torch.save(lightning_file(state), path)
    model = tiny_release_model()
    report = load_internvideo_mm(model, path, strict=True)
    assert report.missing == [] and report.unexpected == [] and report.source == str(path)
    assert set(report.dropped) == {"other_head.weight", "text_mask_embedding"}  # reported by name, with why
    own = model.state_dict()
    for key, value in state.items():
        if key == "text_mask_embedding":
            continue
        ours = key if key.split(".")[0] in ("visual", "visual_ln_post", "visual_proj") else f"text.{key}"
        assert torch.equal(own[ours], value), key
    consumed = {k if k.split(".")[0] in ("visual", "visual_ln_post", "visual_proj") else f"text.{k}"
                for k in state if k != "text_mask_embedding"}
    assert consumed == set(own), sorted(set(own) ^ consumed)


def test_features_match_the_official_math():
    state = official_state_dict(seed=3)
    model = tiny_release_model().eval()
    load_internvideo_mm(model, lightning_file(state), strict=True)
    video = torch.randn(2, 3, 8, V["img"], V["img"], generator=torch.Generator().manual_seed(5))
    text = tokens()
    with torch.no_grad():
        ours_video = model.visual_ln_post(model.visual.forward_features(video)) @ model.visual_proj
        ours_text = model.text(text)
        ref_video, ref_text = reference_encode_video(state, video), reference_encode_text(state, text)
        assert (ours_video - ref_video).abs().max() <= 1e-5
        assert (ours_text - ref_text).abs().max() <= 1e-5
        assert (model.encode_video(video) - F.normalize(ref_video, dim=-1)).abs().max() <= 1e-5
        assert (model.encode_text(text) - F.normalize(ref_text, dim=-1)).abs().max() <= 1e-5
    torch.testing.assert_close(model.text.logit_scale, state["logit_scale"])


def test_build_sizes_the_model_from_the_checkpoint(tmp_path):
    state = official_state_dict()
    path = tmp_path / "mm.ckpt"
    torch.save(lightning_file(state), path)
    config = release_config(path)
    # Official build_model rules: heads = width // 64, UniBlocks after the last len(dec) layers.
    assert config["visual"] == dict(img_size=32, patch_size=16, width=64, layers=3, heads=1,
                                    dec_layers=(1, 2))
    assert config["text"] == dict(vocab_size=50, context_length=12, width=64, layers=2, heads=1,
                                  embed_dim=EMBED)
    model, report = build_internvideo_mm(path, visual_args={"heads": 2}, text_args={"heads": 2})
    assert not model.training and report.missing == [] and report.unexpected == []
    assert model.caption_decoder is None and model.visual.transformer.proj is None
    with torch.no_grad():
        assert (model.text(tokens()) - reference_encode_text(state, tokens())).abs().max() <= 1e-5


def test_mismatches_are_reported_by_name():
    state = official_state_dict()
    state["visual.transformer.extra_gate"] = torch.zeros(3)  # a key the model has no place for
    del state["visual.transformer.balance"]
    model = create_model("internvideo_mm_tiny")  # a caption decoder and a classifier head the release lacks
    report = load_internvideo_mm(model, {"state_dict": {f"clip.{k}": v for k, v in state.items()}}, strict=False)
    assert "visual.transformer.extra_gate" in report.unexpected
    assert "visual.transformer.balance" in report.missing
    assert all(why == "the release has no caption decoder"
               for k, why in report.initialized.items() if k.startswith("caption_decoder."))
    assert "visual.transformer.proj.2.weight" in report.initialized  # expected: not errors
    assert not any(k.startswith(("caption_decoder.", "visual.transformer.proj.")) for k in report.missing)
    assert "visual.transformer.resblocks.3.attn.in_proj_weight" in report.missing  # 4 layers, not 3
    assert report.mismatched["token_embedding.weight"].startswith("checkpoint (50, 64)")  # model's vocab: 49408
    with pytest.raises(CheckpointError, match=r"<state dict> does not fit VideoTextModel: .*missing key.*"
                                              r"visual.transformer.balance.*extra_gate.*token_embedding"):
        load_internvideo_mm(model, {"state_dict": {f"clip.{k}": v for k, v in state.items()}})


class _NotATensor:
    pass


def test_files_load_with_weights_only(tmp_path):
    path = tmp_path / "pickled.ckpt"
    state = {f"clip.{k}": v for k, v in official_state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match=f"{path.name} holds pickled Python objects.*weights_only"):
        load_internvideo_mm(tiny_release_model(), path)


def test_release_sizes_build_on_the_meta_device():
    with torch.device("meta"):
        b16 = create_model("internvideo_mm_b16_release")
        l14 = create_model("internvideo_mm_l14_release")
    assert b16.visual_proj.shape == (768, 512) and b16.text.text_projection.shape == (512, 512)
    assert l14.visual_proj.shape == (1024, 768) and l14.text.text_projection.shape == (768, 768)
    assert l14.visual.positional_embedding.shape == (257, 1024)
    assert l14.visual.transformer.dec_layers == (20, 21, 22, 23)
    assert not any(".proj." in k or "lmhra" in k for k in b16.state_dict()) and b16.caption_decoder is None


def test_registered_release_model_loads_a_checkpoint(tmp_path, capsys):
    state = official_state_dict()
    path = tmp_path / "mm.ckpt"
    torch.save(lightning_file(state), path)
    visual = dict(img_size=V["img"], width=V["width"], layers=V["layers"], heads=V["heads"],
                  dec_layers=V["return_list"])
    text = dict(vocab_size=TXT["vocab"], context_length=TXT["context"], width=TXT["width"],
                layers=TXT["layers"], heads=TXT["heads"], embed_dim=EMBED)
    model = create_model("internvideo_mm_b16_release", checkpoint=path, visual_args=visual, text_args=text)
    assert "dropped" in capsys.readouterr().out and not model.training
    video = torch.randn(1, 3, 8, V["img"], V["img"])
    with torch.no_grad():
        assert torch.equal(model.visual(video), model.visual.forward_features(video))  # no head
        assert (model.visual_ln_post(model.visual(video)) @ model.visual_proj
                - reference_encode_video(state, video)).abs().max() <= 1e-5
