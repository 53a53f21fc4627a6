"""VideoMAE models against an independent, test-only transcription of the official math (VideoMAE's
modeling_pretrain.py / modeling_finetune.py / engine_for_pretraining.py) with the same random weights, and
official checkpoint loading."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from internvideo_fast.models import create_model
from internvideo_fast.models.checkpoint import load_pretrained, save_atomically, save_official
from internvideo_fast.ops import tube_mask, use_backend

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONFIG = dict(img_size=32, num_frames=4)  # micro: D 96, depth 4, heads 3; decoder 64 / 2 / 2


def official_sinusoid_table(n_position, d_hid):
    table = np.array([[p / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)] for p in range(n_position)])
    table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
    return torch.FloatTensor(table).unsqueeze(0)


def official_block(sd, prefix, x, heads):
    B, N, C = x.shape
    h = F.layer_norm(x, (C,), sd[f"{prefix}norm1.weight"], sd[f"{prefix}norm1.bias"], eps=1e-6)
    bias = torch.cat([sd[f"{prefix}attn.q_bias"], torch.zeros_like(sd[f"{prefix}attn.v_bias"]), sd[f"{prefix}attn.v_bias"]])
    qkv = F.linear(h, sd[f"{prefix}attn.qkv.weight"], bias).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // heads) ** -0.5
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, N, C)
    x = x + F.linear(out, sd[f"{prefix}attn.proj.weight"], sd[f"{prefix}attn.proj.bias"])
    h = F.layer_norm(x, (C,), sd[f"{prefix}norm2.weight"], sd[f"{prefix}norm2.bias"], eps=1e-6)
    h = F.linear(F.gelu(F.linear(h, sd[f"{prefix}mlp.fc1.weight"], sd[f"{prefix}mlp.fc1.bias"])),
                 sd[f"{prefix}mlp.fc2.weight"], sd[f"{prefix}mlp.fc2.bias"])
    return x + h


def official_encoder(sd, video, mask, depth, heads, prefix=""):
    w = sd[f"{prefix}patch_embed.proj.weight"]
    x = F.conv3d(video, w, sd[f"{prefix}patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    x = x + official_sinusoid_table(x.shape[1], x.shape[2])
    B, _, C = x.shape
    if mask is not None:
        x = x[~mask].reshape(B, -1, C)
    for i in range(depth):
        x = official_block(sd, f"{prefix}blocks.{i}.", x, heads)
    return x


def official_target(video, mask, tubelet, patch):
    unnorm = video * torch.tensor(STD)[None, :, None, None, None] + torch.tensor(MEAN)[None, :, None, None, None]
    B, C, T, H, W = unnorm.shape
    x = unnorm.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    squeeze = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, -1, tubelet * patch * patch, C)
    norm = (squeeze - squeeze.mean(dim=-2, keepdim=True)) / (squeeze.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    patches = norm.reshape(B, -1, tubelet * patch * patch * C)
    return patches[mask].reshape(B, -1, patches.shape[-1])


@pytest.fixture(params=["reference", "auto"])
def backend(request):
    with use_backend(request.param):
        yield request.param


def _randomize(model):
    """Random values everywhere (biases, norms, q/v biases too), so no term of the math hides behind a 0 or 1;
    scaled like trained weights so activations stay O(1)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim > 1:
                parameter.copy_(torch.randn_like(parameter) * 0.05)
            elif "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.copy_(0.1 * torch.randn_like(parameter))
    return model.eval()


def test_classifier_equals_official_math(backend):
    model = _randomize(create_model("videomae_vit_micro_patch16", num_classes=7, **CONFIG))
    sd = model.state_dict()
    video = torch.randn(2, 3, 4, 32, 32)
    tokens = official_encoder(sd, video, None, depth=4, heads=3)
    logits = F.linear(F.layer_norm(tokens.mean(1), (96,), sd["fc_norm.weight"], sd["fc_norm.bias"], eps=1e-6),
                      sd["head.weight"], sd["head.bias"])
    with torch.no_grad():
        ours_tokens = model.forward_features(video)
        ours = model(video)
    assert (ours_tokens - tokens).abs().max() <= 1e-5
    assert (ours - logits).abs().max() <= 1e-5


def test_pretraining_equals_official_math(backend):
    model = _randomize(create_model("videomae_pretrain_vit_micro_patch16", **CONFIG))
    sd = model.state_dict()
    video = torch.randn(3, 3, 4, 32, 32)
    masks = tube_mask(3, 2, 2, 2, 0.75, seed=5)
    # Official encoder (with its final norm) -> decoder -> loss.
    x_vis = official_encoder(sd, video, masks.mask, depth=4, heads=3, prefix="encoder.")
    x_vis = F.layer_norm(x_vis, (96,), sd["encoder.norm.weight"], sd["encoder.norm.bias"], eps=1e-6)
    x_vis = F.linear(x_vis, sd["encoder_to_decoder.weight"])
    pos = official_sinusoid_table(8, 64).expand(3, -1, -1)
    pos_vis = pos[~masks.mask].reshape(3, -1, 64)
    pos_mask = pos[masks.mask].reshape(3, -1, 64)
    x = torch.cat([x_vis + pos_vis, sd["mask_token"] + pos_mask], dim=1)
    for i in range(2):
        x = official_block(sd, f"decoder.blocks.{i}.", x, heads=2)
    n_mask = pos_mask.shape[1]
    pred = F.linear(F.layer_norm(x[:, -n_mask:], (64,), sd["decoder.norm.weight"], sd["decoder.norm.bias"], eps=1e-6),
                    sd["decoder.head.weight"], sd["decoder.head.bias"])
    loss = F.mse_loss(pred, official_target(video, masks.mask, 2, 16))
    with torch.no_grad():
        ours = model(video, masks=masks)
    assert (ours["pred"] - pred).abs().max() <= 1e-5
    assert abs(ours["loss"].item() - loss.item()) <= 1e-5


def test_pretraining_accepts_uint8_video():
    model = create_model("videomae_pretrain_vit_micro_patch16", **CONFIG).eval()
    raw = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    normalized = (raw.float() / 255 - torch.tensor(MEAN)[:, None, None, None]) / torch.tensor(STD)[:, None, None, None]
    masks = tube_mask(2, 2, 2, 2, 0.5, seed=1)
    with torch.no_grad():
        a, b = model(raw, masks=masks), model(normalized, masks=masks)
    assert (a["pred"] - b["pred"]).abs().max() < 1e-4 and abs(a["loss"] - b["loss"]) < 1e-4


def test_backward_and_drop_path_train_mode():
    model = create_model("videomae_vit_micro_patch16", num_classes=3, drop_path_rate=0.5, **CONFIG).train()
    model(torch.randn(4, 3, 4, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registry_covers_the_official_sizes():
    from internvideo_fast.models import list_models

    names = list_models()
    for size in ("small", "base", "large", "huge"):
        assert f"videomae_vit_{size}_patch16" in names and f"videomae_pretrain_vit_{size}_patch16" in names
    assert "videomae_vit_giant_patch14" in names
    base = create_model("videomae_vit_base_patch16", num_classes=400)
    assert base.state_dict()["blocks.0.attn.qkv.weight"].shape == (2304, 768)
    assert base.state_dict()["patch_embed.proj.weight"].shape == (768, 3, 2, 16, 16)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("videomae_vit_enormous")


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("wrapper, prefix", [("model", ""), ("module", "module."), ("state_dict", "backbone.")])
def test_official_finetune_checkpoint_round_trip(tmp_path, wrapper, prefix):
    model = _randomize(create_model("videomae_vit_micro_patch16", num_classes=5, **CONFIG))
    path = tmp_path / "ft.pth"
    torch.save({wrapper: {prefix + k: v for k, v in model.state_dict().items()}}, path)
    fresh = create_model("videomae_vit_micro_patch16", num_classes=5, **CONFIG).eval()
    report = load_pretrained(fresh, path, strict=True)
    assert not report.missing and not report.unexpected
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(video), model(video))
    save_official(fresh, tmp_path / "again.pth")
    assert set(torch.load(tmp_path / "again.pth", weights_only=True)["model"]) == set(model.state_dict())


def test_pretraining_checkpoint_into_a_classifier_with_another_head_and_size(tmp_path):
    pretrain = _randomize(create_model("videomae_pretrain_vit_micro_patch16", **CONFIG))
    save_official(pretrain, tmp_path / "pre.pth")
    classifier = create_model("videomae_vit_micro_patch16", num_classes=9, img_size=48, num_frames=8)
    report = load_pretrained(classifier, tmp_path / "pre.pth")  # strict: only expected differences
    assert report.ok and report.missing == [] and report.unexpected == []
    assert set(report.initialized) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert "encoder_to_decoder.weight" in report.dropped and "norm.weight" in report.dropped
    assert torch.equal(classifier.state_dict()["blocks.3.mlp.fc2.weight"], pretrain.state_dict()["encoder.blocks.3.mlp.fc2.weight"])
    # A different class count drops the head with a clear reason.
    finetuned = create_model("videomae_vit_micro_patch16", num_classes=5, **CONFIG)
    save_official(finetuned, tmp_path / "ft.pth")
    other = create_model("videomae_vit_micro_patch16", num_classes=3, **CONFIG)
    report = load_pretrained(other, tmp_path / "ft.pth")
    assert report.dropped["head.weight"] == "a head of 5 classes; the model has 3"
    assert set(report.initialized) == {"head.weight", "head.bias"} and report.ok
    assert "head.weight" in str(report) and len(str(report).splitlines()) == 1


def test_learnable_position_table_is_interpolated(tmp_path):
    small = create_model("videomae_vit_micro_patch16", num_classes=2, use_learnable_pos_emb=True, img_size=32, num_frames=4)
    save_official(small, tmp_path / "small.pth")
    large = create_model("videomae_vit_micro_patch16", num_classes=2, use_learnable_pos_emb=True, img_size=64, num_frames=4)
    report = load_pretrained(large, tmp_path / "small.pth")
    assert report.interpolated == ["patch_embed.pos_embed"]
    assert large.patch_embed.pos_embed.shape == (1, 2 * 4 * 4, 96)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomically({"step": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_atomically({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_forward_tokens_of_chosen_blocks_feed_the_cma_model():
    model = create_model("videomae_vit_micro_patch16", num_classes=0, **CONFIG).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert model.forward_tokens(video).shape == (2, 8, 96)
        both = model.forward_tokens(video, layers=[1, -1])
    assert both.shape == (2, 16, 96)
    internvideo = create_model("internvideo_cma_tiny", num_classes=3, mae_layers=[-1])
    with use_backend("reference"):
        logits = internvideo(video)
    logits.sum().backward()
    trainable = {name for name, p in internvideo.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("cma.", "head.")) for name in trainable)
    assert all(p.grad is None for name, p in internvideo.named_parameters() if name not in trainable)


def test_full_size_internvideo_builds_on_the_meta_device():
    with torch.device("meta"):
        model = create_model("internvideo_cma_b16", num_classes=400)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 10e6 < trainable < 20e6 and sum(p.numel() for p in model.parameters()) > 200e6


@pytest.mark.parametrize("name", ["videomae_vit_micro_patch16", "videomae_pretrain_vit_micro_patch16"])
def test_training_step_under_bf16_autocast(name):
    """Mixed precision: the residual stream stays fp32 while the branches run in bf16 (found on an H100,
    where the fused residual + LayerNorm once refused the mixed dtypes)."""
    model = create_model(name, img_size=32, num_frames=4)
    video = torch.randn(2, 3, 4, 32, 32)
    with use_backend("reference"), torch.autocast("cpu", dtype=torch.bfloat16):
        if name.startswith("videomae_pretrain"):
            loss = model(video, masks=tube_mask(2, 2, 2, 2, 0.5, seed=0))["loss"].float()
        else:
            loss = model(video).float().logsumexp(-1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_mask_ratio_without_masked_or_visible_tubes_is_rejected_up_front():
    """Ratio 0 masks no tube (the decoder then failed on a shape); rejected at construction and per call,
    naming the config key. The micro model's grid is 2 x 2 positions: ratio 0.2 masks int(0.8) = 0."""
    from internvideo_fast.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.mask_ratio=0 masks 0 of the 2x2 tube positions"):
        create_model("videomae_pretrain_vit_micro_patch16", mask_ratio=0, **CONFIG)
    model = create_model("videomae_pretrain_vit_micro_patch16", **CONFIG)
    video = torch.randn(1, 3, 4, 32, 32)
    for ratio in (0.0, 0.2, 1.0):
        with pytest.raises(ConfigError, match=f"train.mask_ratio={ratio}"):
            model(video, mask_ratio=ratio, seed=0)
    assert model(video, mask_ratio=0.25, seed=0)["pred"].shape[1] == 2  # one of 4 positions x 2 token-frames
