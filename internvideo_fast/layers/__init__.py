"""Reusable ``nn.Module`` blocks built on the fused ops (timm's ``timm/layers``): the models compose them.

The modules only hold parameters and call the functions in :mod:`internvideo_fast.ops`. Names load on
first use, so that the data pipeline can import :mod:`.constants` without loading the ops."""

from __future__ import annotations

import importlib

_MODULE_OF = {
    "MultiHeadCrossAttention": "attention",
    "CLIP_MEAN": "constants",
    "CLIP_STD": "constants",
    "IMAGENET_MEAN": "constants",
    "IMAGENET_STD": "constants",
    "drop_path": "drop",
    "drop_path_scale": "drop",
    "MaskedTubeEmbedding": "embedding",
    "sinusoid_position_table": "embedding",
    "FusedMLP": "mlp",
    "clip_mlp_key_map": "mlp",
    "remap_clip_mlp_keys": "mlp",
    "LayerNorm": "norm",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
