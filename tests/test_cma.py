"""Cross-model attention (CMA) and the InternVideo fusion model: Q/KV directions, frozen backbones, shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import describe_difference
from internvideo_fast.models.cma import (
    CMABlock,
    CrossModelAttention,
    InternVideo,
    UniFormerV2Tokens,
    build_internvideo,
)
from internvideo_fast.models.uniformerv2 import uniformerv2_tiny
from internvideo_fast.ops import use_backend


class StubEncoder(nn.Module):
    """A tiny stand-in backbone: a tubelet Conv3d + one Linear, BatchNorm (to see eval mode) and dropout;
    ``forward_tokens(video, layers=None) -> [B, T/t * (H/p)^2, dim]``."""

    def __init__(self, dim: int, tubelet: int = 2, patch: int = 16) -> None:
        super().__init__()
        self.embed_dim = dim
        self.proj = nn.Conv3d(3, dim, (tubelet, patch, patch), (tubelet, patch, patch))
        self.bn = nn.BatchNorm1d(dim)
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.5)
        self.calls = []

    def forward_tokens(self, video: torch.Tensor, layers=None) -> torch.Tensor:
        self.calls.append(dict(grad_enabled=torch.is_grad_enabled(), training=self.training, layers=layers))
        x = self.proj(video).flatten(2).transpose(1, 2)
        x = self.bn(x.transpose(1, 2)).transpose(1, 2)
        return self.drop(self.fc(x))


class NoLayersEncoder(StubEncoder):
    def forward_tokens(self, video):  # noqa: D102 - the VideoMAE signature
        return super().forward_tokens(video)


def _record_projections(cma: CrossModelAttention):
    """Forward hooks on every block's q_proj / kv_proj: which tensors fed them."""
    seen = []
    handles = []
    for index, block in enumerate(cma.blocks):
        for name in ("q_proj", "kv_proj"):
            def hook(module, inputs, output, index=index, name=name):
                seen.append((index, name, inputs[0]))
            handles.append(getattr(block.attn, name).register_forward_hook(hook))
    return seen, handles


def _streams_before_each_block(cma, mm, mae):
    """The (mm, mae) stream values entering each block, recomputed block by block."""
    streams = {"mm": cma.adapter_mm(mm), "mae": cma.adapter_mae(mae)}
    before = []
    for block in cma.blocks:
        before.append(dict(streams))
        streams[block.query_stream] = block(streams[block.query_stream], streams[block.kv_stream])
    return before


@pytest.mark.parametrize("depth, order, expected", [
    (3, None, ["mm", "mm", "mae"]),
    (1, None, ["mae"]),
    (4, ("mae", "mm", "mae", "mm"), ["mae", "mm", "mae", "mm"]),
])
def test_query_and_kv_direction_per_block(depth, order, expected):
    """Blocks 0..K-2: q from the multimodal stream, k/v from the masked encoder; the last block reversed
    (or `direction_order`). Checked from what actually reaches q_proj / kv_proj, not only the attributes."""
    cma = CrossModelAttention(dim_mm=64, dim_mae=64, depth=depth, num_heads=2, direction_order=order).eval()
    assert [b.query_stream for b in cma.blocks] == expected
    assert [b.kv_stream for b in cma.blocks] == ["mae" if s == "mm" else "mm" for s in expected]
    mm, mae = torch.randn(2, 5, 64), torch.randn(2, 7, 64)  # different token counts tell the streams apart
    with use_backend("reference"), torch.no_grad():
        before = _streams_before_each_block(cma, mm, mae)
        seen, handles = _record_projections(cma)
        cma(mm, mae)
    for handle in handles:
        handle.remove()
    assert [(i, n) for i, n, _ in seen] == [(i, n) for i in range(depth) for n in ("q_proj", "kv_proj")]
    for i, name, tensor in seen:
        block = cma.blocks[i]
        stream = block.query_stream if name == "q_proj" else block.kv_stream
        norm = block.norm_q if name == "q_proj" else block.norm_kv
        assert tensor.shape[1] == {"mm": 5, "mae": 7}[stream], (i, name)
        assert torch.allclose(tensor, norm(before[i][stream]), atol=1e-6), (i, name)


def test_default_order_is_paper_order_with_updated_streams():
    """The reversed last block reads the multimodal stream as updated by the blocks before it."""
    cma = CrossModelAttention(dim_mm=64, dim_mae=64, depth=3, num_heads=2).eval()
    mm, mae = torch.randn(1, 4, 64), torch.randn(1, 6, 64)
    with use_backend("reference"), torch.no_grad():
        before = _streams_before_each_block(cma, mm, mae)
    assert torch.equal(before[0]["mae"], before[2]["mae"])  # mae untouched by the mm-query blocks
    assert not torch.allclose(before[0]["mm"], before[2]["mm"])  # mm updated twice before the last block
    with pytest.raises(ValueError, match="direction_order"):
        CrossModelAttention(64, 64, depth=2, num_heads=2, direction_order=("mm",))
    with pytest.raises(ValueError, match="direction_order"):
        CrossModelAttention(64, 64, depth=1, num_heads=2, direction_order=("text",))


def test_block_shapes_and_residual():
    block = CMABlock(64, num_heads=2, query_stream="mae")
    assert block.kv_stream == "mm" and "query_stream='mae'" in repr(block)
    x, y = torch.randn(3, 5, 64), torch.randn(3, 11, 64)
    with use_backend("reference"):
        out = block(x, y)
    assert out.shape == x.shape
    nn.init.zeros_(block.attn.out_proj.weight), nn.init.zeros_(block.attn.out_proj.bias)
    nn.init.zeros_(block.mlp.fc2.weight), nn.init.zeros_(block.mlp.fc2.bias)
    with use_backend("reference"):
        assert torch.equal(block(x, y), x)


@pytest.mark.parametrize("fusion, out_dim", [("concat", 128), ("sum", 64)])
def test_adapters_when_widths_differ(fusion, out_dim):
    cma = CrossModelAttention(dim_mm=48, dim_mae=96, dim=64, depth=2, num_heads=2, fusion=fusion)
    assert isinstance(cma.adapter_mm, nn.Linear) and cma.adapter_mm.weight.shape == (64, 48)
    assert isinstance(cma.adapter_mae, nn.Linear) and cma.adapter_mae.weight.shape == (64, 96)
    assert cma.out_dim == out_dim
    with use_backend("reference"):
        out = cma(torch.randn(2, 3, 48), torch.randn(2, 9, 96))
    assert out.shape == (2, out_dim)
    same = CrossModelAttention(dim_mm=64, dim_mae=128, depth=2, num_heads=2)
    assert isinstance(same.adapter_mm, nn.Identity) and isinstance(same.adapter_mae, nn.Linear)


def _model(mae_dim=64, mm_dim=64, **kwargs):
    mae, mm = StubEncoder(mae_dim), StubEncoder(mm_dim, tubelet=1)
    cma = CrossModelAttention(mm_dim, mae_dim, dim=64, depth=2, num_heads=2)
    return InternVideo(mae, mm, cma, num_classes=5, **kwargs)


def test_frozen_backbones_no_grad_no_optimizer_state():
    model = _model(mae_dim=32, mm_dim=96).train()
    frozen = {n: p for n, p in model.named_parameters() if n.startswith(("masked_", "multimodal_"))}
    trainable = model.trainable_parameters()
    assert frozen and all(not p.requires_grad for p in frozen.values())
    assert {id(p) for p in trainable} == {id(p) for n, p in model.named_parameters()
                                          if n.startswith(("cma.", "head."))}
    assert not {id(p) for p in frozen.values()} & {id(p) for p in trainable}
    # backbones stay in eval mode (BN statistics, dropout) while the CMA trains
    assert not model.masked_encoder.training and not model.multimodal_encoder.training
    assert model.cma.training and model.head.training
    bn_stats = model.masked_encoder.bn.running_mean.clone()
    before = {n: p.detach().clone() for n, p in frozen.items()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.1)
    video = torch.randn(2, 3, 4, 32, 32)
    with use_backend("reference"):
        loss = nn.functional.cross_entropy(model(video), torch.tensor([1, 3]))
    loss.backward()
    optimizer.step()
    for encoder in (model.masked_encoder, model.multimodal_encoder):
        assert encoder.calls and all(not c["grad_enabled"] and not c["training"] for c in encoder.calls)
    assert all(p.grad is None for p in frozen.values())
    assert all(torch.equal(p, before[n]) for n, p in frozen.items())
    assert torch.equal(model.masked_encoder.bn.running_mean, bn_stats)
    assert all(p.grad is not None for p in trainable)
    state_ids = {id(p) for p in optimizer.state}
    assert state_ids == {id(p) for p in trainable}
    assert not state_ids & {id(p) for p in frozen.values()}


def test_unfrozen_backbones_train():
    model = _model(freeze_backbones=False).train()
    assert model.masked_encoder.training
    assert len(model.trainable_parameters()) == len(list(model.parameters()))
    with use_backend("reference"):
        model(torch.randn(2, 3, 2, 32, 32)).sum().backward()
    assert model.masked_encoder.proj.weight.grad is not None


def test_internvideo_shapes_layers_and_separate_inputs():
    model = _model(mm_layers=[-1], mae_layers=3).eval()
    video, video_mm = torch.randn(2, 3, 4, 32, 32), torch.randn(2, 3, 2, 32, 32)
    with use_backend("reference"):
        mm, mae = model.forward_backbones(video, video_mm)
        assert mm.shape == (2, 2 * 4, 64) and mae.shape == (2, 2 * 4, 64)
        assert model.forward_features(video, video_mm).shape == (2, 128)
        assert model(video, video_mm).shape == (2, 5)
    assert model.multimodal_encoder.calls[-1]["layers"] == [-1]
    assert model.masked_encoder.calls[-1]["layers"] == 3
    with pytest.raises(ValueError, match="layers"):
        InternVideo(NoLayersEncoder(64), StubEncoder(64), CrossModelAttention(64, 64, num_heads=2), 3,
                    mae_layers=[1])
    with pytest.raises(ValueError, match="forward_tokens"):
        InternVideo(nn.Linear(2, 2), StubEncoder(64), CrossModelAttention(64, 64, num_heads=2), 3)


def test_with_uniformerv2_backbone():
    """UniFormerV2 (tiny) as the multimodal encoder through its adapter, a stand-in masked encoder."""
    mm = UniFormerV2Tokens(uniformerv2_tiny(num_classes=3), layers=[-1], include_global=True)
    model = build_internvideo(NoLayersEncoder(96), mm, num_classes=4, depth=2, num_heads=2, dim=64,
                              mm_layers=[2, 3]).train()
    assert isinstance(model.cma.adapter_mae, nn.Linear) and isinstance(model.cma.adapter_mm, nn.Identity)
    video = torch.randn(1, 3, 2, 32, 32)
    with use_backend("reference"):
        mm_tokens, mae_tokens = model.forward_backbones(video)
        logits = model(video)
    assert mm_tokens.shape == (1, 1 + 2 * 2 * 5, 64) and mae_tokens.shape == (1, 4, 96)
    logits.sum().backward()
    assert all(p.grad is None for p in model.multimodal_encoder.parameters())
    assert not model.multimodal_encoder.model.training


def test_trainable_backbone_keys():
    """The UniBlock query (and nothing else of the backbone) can stay trainable."""
    mm = UniFormerV2Tokens(uniformerv2_tiny(num_classes=3))
    model = build_internvideo(StubEncoder(64), mm, num_classes=4, depth=2, num_heads=2,
                              trainable_backbone_keys=("transformer.temporal_cls_token",)).train()
    names = [n for n, _ in model.named_trainable_parameters() if n.startswith(("masked_", "multimodal_"))]
    assert names == ["multimodal_encoder.model.transformer.temporal_cls_token"]
    with use_backend("reference"):
        model(torch.randn(1, 3, 2, 32, 32)).sum().backward()
    assert model.multimodal_encoder.model.transformer.temporal_cls_token.grad is not None
    assert model.masked_encoder.calls[-1]["grad_enabled"] is False
    assert not model.multimodal_encoder.training


def test_bf16_frozen_backbones():
    model = _model(backbone_dtype=torch.bfloat16).eval()
    with use_backend("reference"):
        mm, mae = model.forward_backbones(torch.randn(1, 3, 2, 32, 32))
    assert mm.dtype == mae.dtype == torch.float32


def test_cma_triton_cross_attention_matches_reference():
    """One tiny CMA forward + backward with the cross_attention op on Triton (interpreter on CPU)."""
    cma = CrossModelAttention(dim_mm=64, dim_mae=32, dim=64, depth=2, num_heads=2)
    mm = torch.randn(2, 5, 64, requires_grad=True)
    mae = torch.randn(2, 9, 32)
    outputs, grads = [], []
    for backend in ("reference", "triton"):
        cma.zero_grad()
        mm.grad = None
        with use_backend("reference"), use_backend(backend, op="cross_attention"):
            out = cma(mm, mae)
            out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(mm.grad.clone())
    assert (outputs[0] - outputs[1]).abs().max() <= 1e-5, describe_difference(outputs[1], outputs[0])
    assert (grads[0] - grads[1]).abs().max() <= 1e-4, describe_difference(grads[1], grads[0])
