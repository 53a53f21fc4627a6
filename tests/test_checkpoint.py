"""Strict checkpoint loading across the model families: a checkpoint that does not fit (another model, another
size, an unrelated file) is a CheckpointError naming the file and the keys; the documented differences load
and are reported in one line; strict=False / load.strict: false opts out; unreadable files name the file."""

from __future__ import annotations

import re

import pytest
import torch

from internvideo_fast.errors import CheckpointError, UserError
from internvideo_fast.models import create_model
from internvideo_fast.models.checkpoint import load_pretrained, read_checkpoint, save_official
from internvideo_fast.train.distributed import DistContext
from internvideo_fast.train.loop import _load_parts

MAE = dict(img_size=32, num_frames=4)  # micro: D 96, depth 4


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and buffer random, so a key left at its initial value cannot pass for loaded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g))
    return model


def _same_state(a: torch.nn.Module, b: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        if not key.startswith(skip):
            assert torch.equal(sa[key], sb[key]), key


# ------------------------------------------------------------------------------------------ unreadable files
class _NotATensor:
    pass


def test_unreadable_files_are_errors_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _NotATensor()}, pickled)
    for path in (garbage, text):
        with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))} is not a PyTorch checkpoint"):
            read_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(pickled))} holds pickled Python objects") as error:
        create_model("videomae_vit_micro_patch16", num_classes=2, pretrained=str(pickled), **MAE)
    assert "re-save only the tensors" in str(error.value)
    with pytest.raises(CheckpointError, match="missing.pth does not exist"):
        create_model("videomae_vit_micro_patch16", num_classes=2, pretrained=str(tmp_path / "missing.pth"), **MAE)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth holds no state dict"):
        load_pretrained(create_model("videomae_vit_micro_patch16", num_classes=2, **MAE), tmp_path / "list.pth")


def test_pretrained_true_says_hub_downloads_are_not_supported():
    with pytest.raises(UserError, match="hub download.*not support") as error:
        create_model("videomae_vit_micro_patch16", pretrained=True, **MAE)
    assert "pass its path" in str(error.value)
    with pytest.raises(UserError, match="path of a checkpoint file, got int"):
        create_model("videomae_vit_micro_patch16", pretrained=3, **MAE)


# ------------------------------------------------------------------------------------------ VideoMAE
def test_another_model_size_fails_and_strict_false_reports(tmp_path, capsys):
    small = create_model("videomae_vit_micro_patch16", num_classes=3, embed_dim=64, num_heads=2, depth=3, **MAE)
    save_official(small, tmp_path / "small.pth")
    model = create_model("videomae_vit_micro_patch16", num_classes=3, **MAE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_pretrained(model, tmp_path / "small.pth")
    message = str(error.value)
    assert message.startswith(f"checkpoint {tmp_path / 'small.pth'} does not fit VideoMAEClassifier")
    assert "missing key(s): blocks.3." in message and "shape mismatch(es): patch_embed.proj.weight" in message
    assert re.search(r"\(\+\d+ more\)", message)  # the first keys by name, then a count
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded
    report = load_pretrained(model, tmp_path / "small.pth", strict=False)
    assert not report.ok and "blocks.3.norm1.weight" in report.missing
    assert "NOT LOADED" in str(report) and len(str(report).splitlines()) == 1
    with pytest.raises(CheckpointError):
        create_model("videomae_vit_micro_patch16", num_classes=3, pretrained=str(tmp_path / "small.pth"), **MAE)
    create_model("videomae_vit_micro_patch16", num_classes=3, pretrained=str(tmp_path / "small.pth"), strict=False,
                 **MAE)
    assert "NOT LOADED" in capsys.readouterr().out


@pytest.mark.parametrize("wrapper", ["model", "module"])
def test_pretraining_file_into_classifier_and_encoder_only_model(tmp_path, wrapper):
    pretrain = _randomized(create_model("videomae_pretrain_vit_micro_patch16", **MAE))
    torch.save({wrapper: pretrain.state_dict()}, tmp_path / "pre.pth")
    classifier = create_model("videomae_vit_micro_patch16", num_classes=4, pretrained=str(tmp_path / "pre.pth"),
                              **MAE)
    assert torch.equal(classifier.blocks[2].attn.qkv.weight, pretrain.encoder.blocks[2].attn.qkv.weight)
    # the CMA's masked encoder has no head: a fine-tuned file's head is an expected difference
    finetuned = _randomized(create_model("videomae_vit_micro_patch16", num_classes=4, **MAE))
    torch.save({"model": {f"backbone.{k}": v for k, v in finetuned.state_dict().items()}}, tmp_path / "ft.pth")
    encoder = create_model("videomae_vit_micro_patch16", num_classes=0, **MAE)
    report = load_pretrained(encoder, tmp_path / "ft.pth")
    assert report.ok and set(report.dropped) == {"head.weight", "head.bias"}
    assert "no classifier head" in report.dropped["head.weight"]
    expected = finetuned.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in encoder.state_dict().items())


def test_official_learnable_position_table_is_renamed_and_interpolated(tmp_path):
    source = _randomized(create_model("videomae_vit_micro_patch16", num_classes=2, use_learnable_pos_emb=True, **MAE))
    state = {("pos_embed" if k == "patch_embed.pos_embed" else k): v for k, v in source.state_dict().items()}
    torch.save({"model": state}, tmp_path / "official.pth")  # the official name: top-level pos_embed
    same = create_model("videomae_vit_micro_patch16", num_classes=2, use_learnable_pos_emb=True, **MAE)
    assert load_pretrained(same, tmp_path / "official.pth").ok
    _same_state(same, source)
    larger = create_model("videomae_vit_micro_patch16", num_classes=2, use_learnable_pos_emb=True, img_size=64,
                          num_frames=4)
    report = load_pretrained(larger, tmp_path / "official.pth")
    assert report.ok and report.interpolated == ["patch_embed.pos_embed"]
    # a learnable table given to a model with the fixed sinusoid table is not silently dropped
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): pos_embed"):
        load_pretrained(create_model("videomae_vit_micro_patch16", num_classes=2, **MAE), tmp_path / "official.pth")


# ------------------------------------------------------------------------------------------ UniFormerV2
def test_uniformerv2_pyslowfast_layout_loads_through_create_model(tmp_path):
    official = _randomized(create_model("uniformerv2_tiny", num_classes=5))
    path = tmp_path / "uniformerv2_k400.pyth"
    torch.save({"epoch": 3, "model_state": {f"backbone.{k}": v for k, v in official.state_dict().items()}}, path)
    model = create_model("uniformerv2_tiny", num_classes=5, pretrained=str(path))
    _same_state(model, official)
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(video), official.eval()(video))
    # another class count: the head is the expected difference; a model without a head drops it
    other = create_model("uniformerv2_tiny", num_classes=3, pretrained=str(path))
    _same_state(other, official, skip=("transformer.proj.2.",))
    headless = create_model("uniformerv2_tiny", num_classes=0)
    report = load_pretrained(headless, path)
    assert report.ok and all("no classifier head" in why for why in report.dropped.values())
    assert set(report.dropped) == {k for k in official.state_dict() if k.startswith("transformer.proj.")}


def test_uniformerv2_position_table_of_another_resolution_is_interpolated(tmp_path):
    official = _randomized(create_model("uniformerv2_tiny", num_classes=5))
    torch.save({"model": official.state_dict()}, tmp_path / "u.pth")
    larger = create_model("uniformerv2_tiny", num_classes=5, img_size=48)
    report = load_pretrained(larger, tmp_path / "u.pth")
    assert report.ok and report.interpolated == ["positional_embedding"]
    assert larger.positional_embedding.shape == (10, 64)
    assert torch.equal(larger.positional_embedding[0], official.positional_embedding[0])  # class token kept


def test_other_files_into_uniformerv2_fail(tmp_path):
    mae = create_model("videomae_vit_micro_patch16", num_classes=5, **MAE)
    save_official(mae, tmp_path / "videomae.pth")
    with pytest.raises(CheckpointError, match=r"videomae.pth does not fit UniFormerV2: \d+ missing.*unexpected"):
        create_model("uniformerv2_tiny", num_classes=5, pretrained=str(tmp_path / "videomae.pth"))
    wider = create_model("uniformerv2_tiny", num_classes=5, width=128, heads=4)
    torch.save({"model_state": {f"backbone.{k}": v for k, v in wider.state_dict().items()}}, tmp_path / "w.pyth")
    with pytest.raises(CheckpointError, match="shape mismatch.*conv1.weight checkpoint"):
        create_model("uniformerv2_tiny", num_classes=5, pretrained=str(tmp_path / "w.pyth"))


def test_clip_image_weights_missing_a_block_fail():
    from internvideo_fast.models.uniformerv2 import load_clip_image_weights

    model = create_model("uniformerv2_tiny")
    clip = {f"visual.{k}": v for k, v in model.state_dict().items() if k.startswith(("transformer.resblocks.", "ln_pre"))
            and "lmhra" not in k and not k.startswith("transformer.resblocks.3.")}
    clip |= {"visual.conv1.weight": torch.randn(64, 3, 16, 16), "visual.class_embedding": torch.randn(64),
             "visual.positional_embedding": torch.randn(5, 64)}
    with pytest.raises(CheckpointError, match=r"missing key\(s\): transformer.resblocks.3."):
        load_clip_image_weights(model, clip)
    report = load_clip_image_weights(model, clip, strict=False)
    assert report.inflated == ["conv1.weight"] and all(k.startswith("transformer.resblocks.3.") for k in report.missing)


# ------------------------------------------------------------------------------------------ CMA and video-text
def _cma():
    return create_model("internvideo_cma_tiny", num_classes=3)


def test_cma_parts_load_strictly(tmp_path):
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    pretrain = _randomized(create_model("videomae_pretrain_vit_micro_patch16", **MAE))
    save_official(pretrain, tmp_path / "videomae_pretrain.pth")
    mm = _randomized(create_model("uniformerv2_tiny"))
    torch.save({"model_state": {f"backbone.{k}": v for k, v in mm.state_dict().items()}}, tmp_path / "uv2.pyth")
    model = _cma()
    _load_parts(model, {"masked_encoder": str(tmp_path / "videomae_pretrain.pth"),
                        "multimodal_encoder": str(tmp_path / "uv2.pyth")}, ctx)
    assert torch.equal(model.masked_encoder.blocks[1].mlp.fc1.weight, pretrain.encoder.blocks[1].mlp.fc1.weight)
    _same_state(model.multimodal_encoder.model, mm)
    # a VideoMAE file as the multimodal backbone: an error naming the part and the file, nothing trained on
    with pytest.raises(CheckpointError, match=r"pretrained_parts.multimodal_encoder: checkpoint .*"
                                              r"videomae_pretrain.pth does not fit UniFormerV2"):
        _load_parts(_cma(), {"multimodal_encoder": str(tmp_path / "videomae_pretrain.pth")}, ctx)
    with pytest.raises(CheckpointError, match="pretrained_parts.masked_encoder: .*uv2.pyth does not fit"):
        _load_parts(_cma(), {"masked_encoder": str(tmp_path / "uv2.pyth")}, ctx)
    with pytest.raises(UserError, match="pretrained_parts.multimodal_encodr: InternVideo has no part"):
        _load_parts(_cma(), {"multimodal_encodr": str(tmp_path / "uv2.pyth")}, ctx)
    # load.strict: false loads what fits and goes on
    _load_parts(_cma(), {"multimodal_encoder": str(tmp_path / "videomae_pretrain.pth")}, ctx, strict=False)


def test_video_tower_of_a_video_text_checkpoint_as_cma_part(tmp_path):
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    vt = _randomized(create_model("internvideo_mm_tiny", with_caption=False))
    torch.save({"model": vt.state_dict()}, tmp_path / "vl.pth")
    model = _cma()
    _load_parts(model, {"multimodal_encoder.model": str(tmp_path / "vl.pth")}, ctx)
    _same_state(model.multimodal_encoder.model, vt.visual)
    # our own video-text checkpoint back into its model, key for key
    again = create_model("internvideo_mm_tiny", with_caption=False, pretrained=str(tmp_path / "vl.pth"))
    _same_state(again, vt)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): caption_decoder"):
        create_model("internvideo_mm_tiny", pretrained=str(tmp_path / "vl.pth"))
