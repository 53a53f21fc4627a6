"""The public op interface: one import for every fused op (flash-attention's `flash_attn_interface`).

Each op lives in its own module with its kernels, its autograd formula and its PyTorch reference;
`backend` chooses between them (see internvideo_fast/ops/framework/backend.py)."""

from internvideo_fast.ops.framework.backend import BACKENDS, get_backend, set_backend, use_backend
from internvideo_fast.ops.cross_attention import cross_attention, cross_attention_ref
from internvideo_fast.ops.dropout_add_layer_norm import (
    dropout_add_layer_norm,
    dropout_add_layer_norm_ref,
    dropout_add_rms_norm,
    dropout_add_rms_norm_ref,
    dropout_keep_mask,
)
from internvideo_fast.ops.linear_act import fused_mlp, fused_mlp_ref, linear_act, linear_act_ref
from internvideo_fast.ops.mae_targets import mae_targets, mae_targets_ref
from internvideo_fast.ops.masked_patch_embed import masked_patch_embed, masked_patch_embed_ref, masked_tubelet_patches
from internvideo_fast.ops.token_gather import gather_tokens, scatter_tokens
from internvideo_fast.ops.tube_mask import TubeMask, tube_mask, tube_mask_ref

__all__ = [
    "BACKENDS",
    "TubeMask",
    "cross_attention",
    "cross_attention_ref",
    "dropout_add_layer_norm",
    "dropout_add_layer_norm_ref",
    "dropout_add_rms_norm",
    "dropout_add_rms_norm_ref",
    "dropout_keep_mask",
    "fused_mlp",
    "fused_mlp_ref",
    "gather_tokens",
    "linear_act",
    "linear_act_ref",
    "mae_targets",
    "mae_targets_ref",
    "masked_patch_embed",
    "masked_patch_embed_ref",
    "masked_tubelet_patches",
    "get_backend",
    "scatter_tokens",
    "set_backend",
    "tube_mask",
    "tube_mask_ref",
    "use_backend",
]
