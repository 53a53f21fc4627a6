"""The transformer MLP (fc1 -> activation -> dropout -> fc2 -> dropout) on the fused linear_act op.

``FusedMLP`` keeps its parameters in two ``nn.Linear`` children, so its state dict has VideoMAE's (and
timm's ``Mlp``) names ``fc1.weight, fc1.bias, fc2.weight, fc2.bias``; OpenAI CLIP / UniFormerV2 name the
same tensors ``c_fc.*`` / ``c_proj.*`` (see :func:`clip_mlp_key_map`). The forward is one
:func:`~internvideo_fast.ops.linear_act.fused_mlp` op: fc1 with bias + activation + dropout fused into its
matmul epilogue, fc2 with bias + dropout fused into its epilogue (Philox masks keyed on the output element,
regenerated in the backward, never stored). For backward it saves only x and fc1's pre-activation (plus
the parameters and the seed); fc2's weight gradient recomputes ``dropout(act(pre))``. Eager
nn.Linear-GELU-nn.Linear also keeps the ``[..., hidden]`` activation (and, with dropout, both masks), so
FusedMLP saves ``rows * hidden * itemsize`` bytes less per block (+ the masks with dropout).
"""

from __future__ import annotations

import torch
from torch import nn

from internvideo_fast.ops.linear_act import ACTIVATIONS, fused_mlp

# CLIP's MLP child names -> ours (`mlp.c_fc.weight` -> `mlp.fc1.weight`, and so on).
_CLIP_TO_OURS = {"c_fc": "fc1", "c_proj": "fc2"}


def clip_mlp_key_map(prefix: str = "") -> dict[str, str]:
    """``{CLIP key: FusedMLP key}`` for one MLP whose keys start with `prefix` (e.g. ``"blocks.3.mlp."``):
    ``c_fc.weight -> fc1.weight``, ``c_fc.bias -> fc1.bias``, ``c_proj.weight -> fc2.weight``,
    ``c_proj.bias -> fc2.bias``. The tensors need no change (both are nn.Linear ``[out, in]``); CLIP's
    MLP uses ``activation="quick_gelu"`` (OpenAI weights) or ``"gelu"`` (OpenCLIP / UniFormerV2)."""
    return {
        f"{prefix}{clip}.{param}": f"{prefix}{ours}.{param}"
        for clip, ours in _CLIP_TO_OURS.items()
        for param in ("weight", "bias")
    }


def remap_clip_mlp_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of `state_dict` with every ``...c_fc.{weight,bias}`` / ``...c_proj.{weight,bias}`` key renamed
    to ``...fc1.*`` / ``...fc2.*`` (any prefix); other keys unchanged."""
    out = {}
    for key, value in state_dict.items():
        head, _, param = key.rpartition(".")
        parent, _, child = head.rpartition(".")
        if child in _CLIP_TO_OURS and param in ("weight", "bias"):
            key = f"{parent}.{_CLIP_TO_OURS[child]}.{param}" if parent else f"{_CLIP_TO_OURS[child]}.{param}"
        out[key] = value
    return out


class FusedMLP(nn.Module):
    """``dropout(fc2(dropout(act(fc1(x)))))`` with bias + activation fused into fc1's matmul.

    Args:
        in_features: input width D.
        hidden_features: fc1's output width (default D; ViTs use 4D).
        out_features: fc2's output width (default D).
        activation: ``"gelu"`` (erf; VideoMAE, CLIP ViT), ``"gelu_tanh"``, ``"quick_gelu"`` (OpenAI CLIP)
            or ``"none"``.
        drop: dropout probability after the activation and after fc2 (training only; both fused into the
            matmul epilogues, the masks from ``seed`` and ``seed + 1``, see ``forward``).
        bias: whether fc1 and fc2 have biases.

    Under autocast, x and the parameters are cast to the autocast dtype (as nn.Linear would be); otherwise
    the parameters are cast to x's dtype when they differ (gradients still reach them in their own dtype).
    """

    clip_mlp_key_map = staticmethod(clip_mlp_key_map)
    remap_clip_mlp_keys = staticmethod(remap_clip_mlp_keys)

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        activation: str = "gelu",
        drop: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0.0 <= drop < 1.0:
            raise ValueError(f"drop must be a float in [0, 1), got {drop!r}")
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.activation = activation
        self.drop = float(drop)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, drop={self.drop}"

    def forward(self, x: torch.Tensor, seed: int | torch.Tensor | None = None) -> torch.Tensor:
        """`seed`: the dropout seed (int or one-element int64 tensor on x's device); None draws one on x's
        device (no host sync). Unused in eval or with drop 0."""
        device_type = x.device.type
        dtype = x.dtype
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)

        def cast(tensor):
            return tensor if tensor is None or tensor.dtype == dtype else tensor.to(dtype)

        dropout_p = self.drop if self.training else 0.0
        return fused_mlp(
            cast(x), cast(self.fc1.weight), cast(self.fc1.bias), cast(self.fc2.weight), cast(self.fc2.bias),
            self.activation, dropout_p, seed,
        )
