"""Registered InternVideo models: a VideoMAE masked encoder and a UniFormerV2 multimodal encoder, frozen,
fused by cross-model attention (CMA) into an action classifier (internvideo_fast/models/cma.py).

    create_model("internvideo_cma_b16", num_classes=400, cma_depth=2)

Load the backbones' checkpoints before training the CMA (`model.masked_encoder`, `model.multimodal_encoder`
hold them; see the VideoMAE and UniFormerV2 loaders)."""

from __future__ import annotations

from internvideo_fast.models.cma import UniFormerV2Tokens, build_internvideo
from internvideo_fast.models.registry import create_model, register_model


def _factory(videomae: str, uniformerv2: str, defaults: dict):
    def factory(num_classes: int = 400, cma_depth: int = 2, cma_heads: int | None = None, cma_dim: int | None = None,
                mae_args: dict | None = None, mm_args: dict | None = None, mae_layers=None, mm_layers=None, **kwargs):
        mae = create_model(videomae, num_classes=0, **(defaults.get("mae_args", {}) | (mae_args or {})))
        mm = UniFormerV2Tokens(create_model(uniformerv2, **(defaults.get("mm_args", {}) | (mm_args or {}))))
        heads = cma_heads or defaults["cma_heads"]
        return build_internvideo(mae, mm, num_classes, depth=cma_depth, num_heads=heads, dim=cma_dim,
                                 mae_layers=mae_layers, mm_layers=mm_layers, **kwargs)

    factory.__doc__ = f"InternVideo: {videomae} + {uniformerv2} fused by CMA."
    return factory


register_model("internvideo_cma_b16", _factory("videomae_vit_base_patch16", "uniformerv2_b16",
                                              {"cma_heads": 12}))
register_model("internvideo_cma_l14", _factory("videomae_vit_large_patch16", "uniformerv2_l14",
                                              {"cma_heads": 16}))
register_model("internvideo_cma_tiny", _factory("videomae_vit_micro_patch16", "uniformerv2_tiny",
                                               {"cma_heads": 2, "mae_args": {"img_size": 32, "num_frames": 4}}))
