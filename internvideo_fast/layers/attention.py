"""Attention modules built on the fused ops (thin: projections around :func:`cross_attention`)."""

from __future__ import annotations

import torch
from torch import nn

from internvideo_fast.ops.cross_attention import SUPPORTED_HEAD_DIMS, cross_attention


class MultiHeadCrossAttention(nn.Module):
    """Multi-head attention from one token stream (queries) to another (keys and values).

    ``q_proj: Linear(dim_q, dim_q)`` on ``x_q``, a fused ``kv_proj: Linear(dim_kv, 2 * dim_q)`` on ``x_kv``
    (rows ``[:dim_q]`` give k, rows ``[dim_q:]`` give v), :func:`cross_attention` over ``num_heads`` heads
    of ``dim_q // num_heads``, then ``out_proj: Linear(dim_q, dim_q)`` and dropout ``proj_drop``.

    Checkpoints with ``nn.MultiheadAttention`` names (CLIP / UniFormerV2 ``attn.in_proj_weight
    [3 * dim, dim]``, ``attn.in_proj_bias``, ``attn.out_proj.*``) map with :meth:`in_proj_state_dict`
    (or :meth:`load_in_proj`): q rows first, then k, then v, so ``q_proj = in_proj[:dim]`` and
    ``kv_proj = in_proj[dim:]``; ``out_proj`` keeps its name. That needs ``dim_kv == dim_q``; with
    ``kdim``/``vdim`` set, ``nn.MultiheadAttention`` stores ``q_proj_weight``, ``k_proj_weight`` and
    ``v_proj_weight`` instead, and ``kv_proj.weight = cat(k_proj_weight, v_proj_weight)``.

    ``deterministic=True`` runs cross_attention's fixed launch plan (no atomics, no run-time tuning), so
    gradients are bitwise identical run to run and process to process; the default lets the GPU tuner pick.
    """

    def __init__(
        self,
        dim_q: int,
        dim_kv: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim_q % num_heads != 0:
            raise ValueError(f"num_heads must divide dim_q {dim_q}, got {num_heads}")
        if dim_q // num_heads not in SUPPORTED_HEAD_DIMS:
            raise ValueError(
                f"dim_q / num_heads must be one of {SUPPORTED_HEAD_DIMS}, got {dim_q} / {num_heads}"
            )
        self.dim_q = dim_q
        self.dim_kv = dim_kv
        self.num_heads = num_heads
        self.head_dim = dim_q // num_heads
        self.attn_drop = attn_drop
        # cross_attention's `deterministic`: the fixed untuned plan, bitwise reproducible across processes.
        self.deterministic = deterministic
        self.q_proj = nn.Linear(dim_q, dim_q, bias=qkv_bias)
        self.kv_proj = nn.Linear(dim_kv, 2 * dim_q, bias=qkv_bias)
        self.out_proj = nn.Linear(dim_q, dim_q)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x_q: torch.Tensor, x_kv: torch.Tensor, kv_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x_q [B, Sq, dim_q]``, ``x_kv [B, Sk, dim_kv]``, optional ``kv_lengths [B]`` int32 (keys at or
        past a sample's length are padding) -> ``[B, Sq, dim_q]``."""
        B, Sq, _ = x_q.shape
        Sk = x_kv.shape[1]
        q = self.q_proj(x_q).view(B, Sq, self.num_heads, self.head_dim)
        kv = self.kv_proj(x_kv).view(B, Sk, 2, self.num_heads, self.head_dim)
        # k and v are strided views of the fused projection (contiguous last dim): no copies.
        out = cross_attention(
            q, kv[:, :, 0], kv[:, :, 1], kv_lengths=kv_lengths,
            dropout_p=self.attn_drop if self.training else 0.0, deterministic=self.deterministic,
        )
        return self.proj_drop(self.out_proj(out.reshape(B, Sq, self.dim_q)))

    @staticmethod
    def in_proj_state_dict(
        in_proj_weight: torch.Tensor,
        in_proj_bias: torch.Tensor | None,
        out_proj_weight: torch.Tensor,
        out_proj_bias: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """This module's state_dict from ``nn.MultiheadAttention`` tensors (``in_proj_weight [3 * dim, dim]``,
        q rows first, then k, then v)."""
        dim = in_proj_weight.shape[1]
        if in_proj_weight.shape[0] != 3 * dim:
            raise ValueError(
                f"in_proj_weight must have shape [3 * dim, dim], got {tuple(in_proj_weight.shape)}"
            )
        state = {
            "q_proj.weight": in_proj_weight[:dim],
            "kv_proj.weight": in_proj_weight[dim:],
            "out_proj.weight": out_proj_weight,
        }
        if in_proj_bias is not None:
            state["q_proj.bias"] = in_proj_bias[:dim]
            state["kv_proj.bias"] = in_proj_bias[dim:]
        if out_proj_bias is not None:
            state["out_proj.bias"] = out_proj_bias
        return state

    def load_in_proj(self, attention: nn.MultiheadAttention) -> None:
        """Copy the weights of an ``nn.MultiheadAttention`` with ``embed_dim == dim_q == dim_kv``."""
        if attention.in_proj_weight is None:
            raise ValueError("attention has separate q/k/v projections (kdim/vdim set); map them by hand")
        state = self.in_proj_state_dict(
            attention.in_proj_weight.detach(), None if attention.in_proj_bias is None
            else attention.in_proj_bias.detach(), attention.out_proj.weight.detach(),
            None if attention.out_proj.bias is None else attention.out_proj.bias.detach(),
        )
        self.load_state_dict(state)
