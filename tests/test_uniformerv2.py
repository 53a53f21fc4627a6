"""UniFormerV2 against an independent, test-only reference of the official math.

The reference below re-derives UV2 ``slowfast/models/uniformerv2_model.py`` with plain torch ops on a state
dict, in the official ``[1+HW, N*T, C]`` layout, without importing any of the model code; the model loads
the same random weights through ``load_state_dict`` (so the key names are checked too)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import describe_difference
from official_math import balanced_feature, clip_mlp, global_block, layer_norm, mha
from internvideo_fast.models.uniformerv2 import (
    UniFormerV2,
    UniFormerV2Config,
    inflate_weight,
    load_checkpoint,
    load_clip_image_weights,
    uniformerv2_b16,
    uniformerv2_l14,
    uniformerv2_tiny,
)
from internvideo_fast.ops import use_backend

TINY = dict(img_size=32, patch_size=16, width=64, layers=4, heads=2, dec_layers=(2, 3), num_classes=7)


# ----------------------------------------------------------------------------------------------------
# Test-only reference of the official math
# ----------------------------------------------------------------------------------------------------
def _local_mhra(x, sd, prefix):
    """BN3d (eval) -> conv 1x1x1 -> depthwise (3,1,1) -> conv 1x1x1 on [N, C, T, H, W]."""
    p = prefix + ".pos_embed."
    x = F.batch_norm(x, sd[p + "0.running_mean"], sd[p + "0.running_var"], sd[p + "0.weight"],
                     sd[p + "0.bias"], False, 0.0, 1e-5)
    x = F.conv3d(x, sd[p + "1.weight"], sd[p + "1.bias"])
    w2 = sd[p + "2.weight"]
    x = F.conv3d(x, w2, sd[p + "2.bias"], padding=(1, 0, 0), groups=w2.shape[0])
    return F.conv3d(x, sd[p + "3.weight"], sd[p + "3.bias"])


def _lmhra_residual(x, sd, prefix, N, T):
    tmp = x[1:]
    L, NT, C = tmp.shape
    H = W = int(L ** 0.5)
    tmp = tmp.view(H, W, N, T, C).permute(2, 4, 3, 0, 1).contiguous()
    tmp = tmp + _local_mhra(tmp, sd, prefix)
    tmp = tmp.view(N, C, T, L).permute(3, 0, 2, 1).contiguous().view(L, NT, C)
    return torch.cat([x[:1], tmp], dim=0)


def reference_forward(sd, video, cfg, lmhra):
    heads, dec_layers = cfg["heads"], cfg["dec_layers"]
    w = sd["conv1.weight"]
    kt = w.shape[2]
    stride = (1 if kt == 1 else 2, w.shape[3], w.shape[4])
    x = F.conv3d(video, w, None, stride=stride, padding=(kt // 2, 0, 0))
    N, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(N * T, H * W, C)
    x = torch.cat([sd["class_embedding"] + torch.zeros(x.shape[0], 1, C), x], dim=1)
    x = layer_norm(x + sd["positional_embedding"], sd, "ln_pre").permute(1, 0, 2)  # [L, NT, C]
    cls_token = sd["transformer.temporal_cls_token"].repeat(1, N, 1)
    j = -1
    for i in range(cfg["layers"]):
        p = f"transformer.resblocks.{i}"
        if lmhra:
            x = _lmhra_residual(x, sd, p + ".lmhra1", N, T)
        h = layer_norm(x, sd, p + ".ln_1")
        x = x + mha(h, h, sd, p + ".attn", heads)
        if lmhra:
            x = _lmhra_residual(x, sd, p + ".lmhra2", N, T)
        x = x + clip_mlp(layer_norm(x, sd, p + ".ln_2"), sd, p + ".mlp")
        if i in dec_layers:
            j += 1
            cls_token = global_block(x, cls_token, sd, "transformer", j, heads, N, T, H, W)
    h = layer_norm(balanced_feature(x, cls_token, sd, "transformer", N, T), sd, "transformer.proj.0")
    return h @ sd["transformer.proj.2.weight"].T + sd["transformer.proj.2.bias"]


def _randomize(model, scale=0.2):
    """Random values for every tensor (the zero-inits included), positive BN variances; returns the sd."""
    sd = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            sd[key] = value
        elif key.endswith("running_var"):
            sd[key] = torch.rand_like(value) + 0.5
        elif key.endswith(("ln_1.weight", "ln_2.weight", "ln_3.weight", "ln_pre.weight", "proj.0.weight")):
            sd[key] = 1.0 + scale * torch.randn_like(value)
        else:
            sd[key] = scale * torch.randn_like(value)
    model.load_state_dict(sd)
    return sd


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lmhra", [False, True])
@pytest.mark.parametrize("frames", [2, 3])
def test_matches_official_math(lmhra, frames):
    model = UniFormerV2(UniFormerV2Config(lmhra=lmhra, **TINY)).eval()
    sd = _randomize(model)
    video = torch.randn(2, 3, frames, 32, 32)
    with use_backend("reference"), torch.no_grad():
        out = model(video)
        expected = reference_forward(sd, video, TINY, lmhra)
    assert out.shape == (2, TINY["num_classes"])
    assert (out - expected).abs().max().item() <= 1e-5, describe_difference(out, expected)


def test_matches_official_math_temporal_downsample():
    cfg = dict(TINY, temporal_downsample=True)
    model = UniFormerV2(UniFormerV2Config(lmhra=True, **cfg)).eval()
    assert model.conv1.weight.shape == (64, 3, 3, 16, 16)
    sd = _randomize(model)
    video = torch.randn(1, 3, 4, 32, 32)
    with use_backend("reference"), torch.no_grad():
        out = model(video)
        expected = reference_forward(sd, video, cfg, True)
    assert (out - expected).abs().max().item() <= 1e-5, describe_difference(out, expected)


def test_uniblock_through_triton_cross_attention():
    """One tiny forward with the UniBlock query attention on the Triton kernel (interpreter on CPU)."""
    model = uniformerv2_tiny(num_classes=3).eval()
    _randomize(model)
    video = torch.randn(1, 3, 2, 32, 32)
    with use_backend("reference"), torch.no_grad():
        expected = model(video)
        with use_backend("triton", op="cross_attention"):
            out = model(video)
    assert (out - expected).abs().max().item() <= 1e-5, describe_difference(out, expected)


def test_default_init_is_identity_of_global_branch():
    """Zero-init out_proj / c_proj / LMHRA convs: at init the query stays temporal_cls_token, and LMHRA
    leaves the tokens unchanged."""
    torch.manual_seed(0)
    on = uniformerv2_tiny(lmhra=True).eval()
    off = uniformerv2_tiny(lmhra=False).eval()
    off.load_state_dict(on.state_dict(), strict=False)
    video = torch.randn(1, 3, 2, 32, 32)
    with use_backend("reference"), torch.no_grad():
        assert torch.allclose(on.forward_features(video), off.forward_features(video), atol=1e-6)
        tokens = on.forward_tokens(video)
    C = on.embed_dim
    frame_cls = tokens[:, 1:].reshape(1, 2, -1, C)[:, :, 0].mean(1)
    expected = 0.5 * on.transformer.temporal_cls_token[0, 0] + 0.5 * frame_cls
    assert torch.allclose(tokens[:, 0], expected, atol=1e-6)


def test_state_dict_keys_match_reference():
    """REFERENCE §2 names and shapes (B/16; L/14 sizes), official checkpoint prefix accepted."""
    model = uniformerv2_b16()
    sd = model.state_dict()
    shapes = {
        "conv1.weight": (768, 3, 1, 16, 16),
        "class_embedding": (768,),
        "positional_embedding": (197, 768),
        "ln_pre.weight": (768,),
        "transformer.resblocks.0.attn.in_proj_weight": (2304, 768),
        "transformer.resblocks.11.attn.in_proj_bias": (2304,),
        "transformer.resblocks.5.attn.out_proj.weight": (768, 768),
        "transformer.resblocks.5.ln_1.bias": (768,),
        "transformer.resblocks.5.mlp.c_fc.weight": (3072, 768),
        "transformer.resblocks.5.mlp.c_proj.weight": (768, 3072),
        "transformer.resblocks.5.ln_2.weight": (768,),
        "transformer.temporal_cls_token": (1, 1, 768),
        "transformer.dpe.3.weight": (768, 1, 3, 3, 3),
        "transformer.dpe.3.bias": (768,),
        "transformer.dec.3.attn.in_proj_weight": (2304, 768),
        "transformer.dec.3.attn.out_proj.bias": (768,),
        "transformer.dec.0.ln_3.weight": (768,),
        "transformer.dec.0.mlp.c_fc.weight": (3072, 768),
        "transformer.dec.0.mlp.c_proj.bias": (768,),
        "transformer.balance": (768,),
        "transformer.proj.0.weight": (768,),
        "transformer.proj.2.weight": (400, 768),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "transformer.dpe.4.weight" not in sd and "transformer.dec.4.ln_1.weight" not in sd
    assert not any("lmhra" in k for k in sd)  # Kinetics default: local MHRA off
    assert not any(k.startswith(("visual.", "backbone.")) or ".fc1." in k or "q_proj" in k for k in sd)
    # official checkpoints are saved under `backbone.` (and sometimes wrapped in {'model': ...})
    report = load_checkpoint(model, {"model": {f"backbone.{k}": v for k, v in sd.items()}})
    assert report.ok and report.loaded == len(sd) and not report.dropped and not report.initialized
    with torch.device("meta"):  # shapes only: no 300M-parameter allocation
        large = uniformerv2_l14(lmhra=True)
    lsd = large.state_dict()
    assert tuple(lsd["positional_embedding"].shape) == (257, 1024)
    assert tuple(lsd["conv1.weight"].shape) == (1024, 3, 1, 14, 14)
    assert "transformer.dec.3.ln_1.weight" in lsd
    assert "transformer.resblocks.23.lmhra2.pos_embed.3.weight" in lsd
    assert len(large.transformer.resblocks) == 24 and large.transformer.dec_layers == (20, 21, 22, 23)


def _clip_visual_state_dict(width, patch, grid, layers):
    """A random OpenAI-CLIP-format image tower (plus a text key) as `visual.*`."""
    sd = {
        "visual.conv1.weight": torch.randn(width, 3, patch, patch),
        "visual.class_embedding": torch.randn(width),
        "visual.positional_embedding": torch.randn(grid * grid + 1, width),
        "visual.ln_pre.weight": torch.randn(width), "visual.ln_pre.bias": torch.randn(width),
        "visual.ln_post.weight": torch.randn(width), "visual.ln_post.bias": torch.randn(width),
        "visual.proj": torch.randn(width, 32),
        "token_embedding.weight": torch.randn(10, 32),
    }
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        sd |= {
            p + "attn.in_proj_weight": torch.randn(3 * width, width),
            p + "attn.in_proj_bias": torch.randn(3 * width),
            p + "attn.out_proj.weight": torch.randn(width, width),
            p + "attn.out_proj.bias": torch.randn(width),
            p + "ln_1.weight": torch.randn(width), p + "ln_1.bias": torch.randn(width),
            p + "mlp.c_fc.weight": torch.randn(4 * width, width), p + "mlp.c_fc.bias": torch.randn(4 * width),
            p + "mlp.c_proj.weight": torch.randn(width, 4 * width), p + "mlp.c_proj.bias": torch.randn(width),
            p + "ln_2.weight": torch.randn(width), p + "ln_2.bias": torch.randn(width),
        }
    return sd


@pytest.mark.parametrize("temporal_downsample", [False, True])
def test_clip_image_weight_inflation(temporal_downsample):
    model = uniformerv2_tiny(temporal_downsample=temporal_downsample, lmhra=True)
    clip = _clip_visual_state_dict(64, 16, 2, 4)
    report = load_clip_image_weights(model, clip)  # strict: the differences below are the expected ones
    assert report.ok and report.inflated == ["conv1.weight"]
    assert {k for k, why in report.dropped.items() if why == "CLIP's image head"} == {
        "ln_post.bias", "ln_post.weight", "proj"}
    assert report.dropped["token_embedding.weight"].startswith("not the video tower")
    sd = model.state_dict()
    assert all(not k.startswith("transformer.resblocks.") or "lmhra" in k or torch.equal(sd[k], clip["visual." + k])
               for k in sd)
    assert not any(k.startswith("transformer.resblocks.") and "lmhra" not in k for k in report.initialized)
    assert "transformer.dec.0.attn.in_proj_weight" in report.initialized
    assert "transformer.temporal_cls_token" in report.initialized
    w = sd["conv1.weight"]
    kt = 3 if temporal_downsample else 1
    assert w.shape == (64, 3, kt, 16, 16)
    assert torch.equal(w[:, :, kt // 2], clip["visual.conv1.weight"])
    assert torch.equal(w.sum(2), clip["visual.conv1.weight"])  # zeros off-centre
    assert torch.equal(sd["positional_embedding"], clip["visual.positional_embedding"])
    # inflated conv on a static video = the 2-D conv on each frame
    frame = torch.randn(1, 3, 32, 32)
    video = frame[:, :, None].expand(1, 3, 4, 32, 32)
    out = model.conv1(video)
    expected = F.conv2d(frame, clip["visual.conv1.weight"], stride=16)
    assert torch.allclose(out[:, :, 1], expected, atol=1e-5)
    spread = inflate_weight(torch.ones(2, 3, 4, 4), 4, center=False)
    assert torch.allclose(spread.sum(2), torch.ones(2, 3, 4, 4))


def test_backward_reaches_every_parameter():
    model = uniformerv2_tiny(lmhra=True, num_classes=3, dec_mlp_dropout=0.0, cls_dropout=0.0).train()
    _randomize(model)
    video = torch.randn(2, 3, 2, 32, 32)
    with use_backend("reference"):
        loss = model(video).square().mean()
        loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "temporal_cls_token" in n)


def test_grad_checkpointing_same_gradients():
    model = uniformerv2_tiny(num_classes=3, dec_mlp_dropout=0.0, cls_dropout=0.0).train()
    _randomize(model)
    video = torch.randn(1, 3, 2, 32, 32)
    grads = []
    for flag in (False, True):
        model.grad_checkpointing = flag
        model.zero_grad()
        with use_backend("reference"):
            model(video).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_forward_tokens_layers_and_shapes():
    model = uniformerv2_tiny(num_classes=3).eval()
    video = torch.randn(2, 3, 3, 32, 32)
    with use_backend("reference"), torch.no_grad():
        feats = model.forward_features(video)
        last = model.forward_tokens(video)
        two = model.forward_tokens(video, layers=[1, -1], include_global=False)
        assert torch.equal(model.forward_head(feats), model(video))
        pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape == (2, 64) and pre.shape == (2, 64)
    assert last.shape == (2, 1 + 3 * 5, 64)
    assert two.shape == (2, 2 * 3 * 5, 64)
    assert torch.equal(last[:, 0], feats)
    assert torch.equal(two[:, 15:], last[:, 1:])
    with pytest.raises(ValueError, match="patches"):
        model(torch.randn(1, 3, 2, 48, 48))
    with pytest.raises(ValueError, match="dec_layers"):
        uniformerv2_tiny(dec_layers=(3, 2))
    with pytest.raises(ValueError, match="head dim"):
        uniformerv2_tiny(heads=4)  # 64 / 4 = 16: not a cross_attention head dim
    with pytest.raises(ValueError, match="unknown"):
        uniformerv2_tiny(depth=3)
    official = uniformerv2_tiny(no_lmhra=False, return_list=[1, 3])  # the official option names
    assert official.cfg.lmhra and official.transformer.dec_layers == (1, 3)


def test_bf16_autocast_and_bf16_weights():
    """Mixed precision runs (LayerNorm in float32 inside) and stays near the float32 result."""
    model = uniformerv2_tiny(num_classes=3, lmhra=True).eval()
    _randomize(model, scale=0.1)
    video = torch.randn(2, 3, 2, 32, 32)
    with use_backend("reference"), torch.no_grad():
        expected = model(video)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_out = model(video)
        half = uniformerv2_tiny(num_classes=3, lmhra=True).eval().to(torch.bfloat16)
        half.load_state_dict(model.state_dict())
        half_out = half(video.bfloat16())
    assert autocast_out.dtype == half_out.dtype == torch.bfloat16
    scale = expected.abs().max().item()
    for out in (autocast_out, half_out):
        assert (out.float() - expected).abs().max().item() <= 0.05 * scale, describe_difference(out, expected)
