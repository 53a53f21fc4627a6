"""Video-language objectives: contrastive InfoNCE across ranks, and the caption decoder with its LM loss.

Contrastive (InternVideo ``CoTrain/modules/objectives.py``, CLIP). Rank r holds ``n`` video features ``v`` and
``n`` text features ``t``; ``V, T [W * n, D]`` are all ranks' features, gathered in rank order:

    v, t = v / |v|, t / |t|,            s = exp(clamp(logit_scale, 0, ln 100))      (so s <= 100)
    logits_v = s * v @ T^T  [n, W n],   logits_t = s * t @ V^T  [n, W n],   label_i = r * n + i
    loss_r = (CE(logits_v, label) + CE(logits_t, label)) / 2          (CE averaged over the n rows)

The mean of ``loss_r`` over ranks is the single-process loss of the whole global batch.
:func:`all_gather_with_grad` sends each rank the gradient of *every* rank's loss with respect to its own
features (an all-reduce of the gathered gradient, then its slice), so with DDP's gradient averaging the
parameters get exactly the gradient of the single-process loss. Every rank must hold the same number of
samples.

Caption decoder (CoCa-style, InternVideo ``CoTrain/modules/coca.py``):

    Q = visual_pool_norm(cross_attn(visual_queries, visual_norm(video_tokens)))      [B, num_queries, dim]
    x = text_norm(token_embedding(tokens) + positional_embedding)  (or given text features)   [B, L, dim]
    per layer:  x += causal_self_attn(ln_1(x));  x += cross_attn(ln_2(x), Q);  x += mlp(ln_3(x))
    logits = ln_final(x) @ W_out^T  (W_out = token_embedding.weight when tied)          [B, L, vocab]

:func:`caption_loss` is teacher-forced next-token cross-entropy: inputs ``tokens[:, :-1]``, targets
``tokens[:, 1:]``, padding targets ignored. The cross-attentions are :class:`MultiHeadCrossAttention` (our
``cross_attention`` op); the causal self-attention is ``F.scaled_dot_product_attention(is_causal=True)``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from internvideo_fast.layers.attention import MultiHeadCrossAttention
from internvideo_fast.layers.mlp import FusedMLP
from internvideo_fast.models.clip_text import LOGIT_SCALE_MAX, CausalSelfAttention, LayerNorm


# ----------------------------------------------------------------------------------------------------
# Gradient-preserving all_gather
# ----------------------------------------------------------------------------------------------------
def _distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's ``x`` along dim 0. Backward: sum the gathered gradient over ranks and
    return this rank's slice (the gradient of the sum of all ranks' losses with respect to this rank's x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        world = dist.get_world_size(group)
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's ``x [n, ...]`` concatenated in rank order, ``[world * n, ...]``, differentiable: the
    backward gives this rank's ``x`` the summed gradient of all ranks' uses of the result. Every rank must
    pass the same shape. Returns `x` itself when torch.distributed is not initialized or has one rank."""
    if not _distributed(group):
        return x
    return _AllGatherWithGrad.apply(x, group)


def _rank(group) -> int:
    return dist.get_rank(group) if _distributed(group) else 0


# ----------------------------------------------------------------------------------------------------
# Contrastive loss
# ----------------------------------------------------------------------------------------------------
def clamped_logit_scale(logit_scale: torch.Tensor | float) -> torch.Tensor | float:
    """``exp(clamp(logit_scale, 0, ln 100))``: CLIP's inverse temperature, between 1 and 100."""
    if isinstance(logit_scale, torch.Tensor):
        return logit_scale.clamp(0.0, LOGIT_SCALE_MAX).exp()
    return math.exp(min(max(float(logit_scale), 0.0), LOGIT_SCALE_MAX))


def _check_pair(video_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if video_features.dim() != 2 or text_features.dim() != 2 or video_features.shape != text_features.shape:
        raise ValueError(
            "video_features and text_features must both be [n, D] with the same shape, got "
            f"{tuple(video_features.shape)} and {tuple(text_features.shape)}"
        )


def contrastive_loss(
    video_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    group=None,
) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch (module docstring).

    Args:
        video_features: ``[n, D]`` this rank's video embeddings (not normalized; any float dtype).
        text_features: ``[n, D]`` the paired text embeddings, row i matching video row i.
        logit_scale: the log inverse temperature (a parameter, e.g. ``CLIPTextEncoder.logit_scale``); it is
            clamped to ``[0, ln 100]`` and exponentiated here.
        group: the process group (default: the world), when torch.distributed is initialized.

    Returns:
        the scalar loss of this rank's rows, float32. Under DDP the ranks' mean equals the loss of the whole
        global batch, and the averaged gradients equal its gradients.
    """
    _check_pair(video_features, text_features)
    v = F.normalize(video_features.float(), dim=-1)
    t = F.normalize(text_features.float(), dim=-1)
    all_v = all_gather_with_grad(v, group)
    all_t = all_gather_with_grad(t, group)
    scale = clamped_logit_scale(logit_scale)
    logits_v = scale * v @ all_t.T
    logits_t = scale * t @ all_v.T
    n = v.shape[0]
    labels = torch.arange(n, device=v.device) + _rank(group) * n
    return (F.cross_entropy(logits_v, labels) + F.cross_entropy(logits_t, labels)) / 2


def contrastive_loss_ref(
    video_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Plain single-process reference on a whole batch: ``(CE(s v t^T, i) + CE(s t v^T, i)) / 2``."""
    v = video_features / video_features.norm(dim=-1, keepdim=True)
    t = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = clamped_logit_scale(logit_scale) * v @ t.T
    labels = torch.arange(v.shape[0], device=v.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# ----------------------------------------------------------------------------------------------------
# Caption decoder
# ----------------------------------------------------------------------------------------------------
class CaptionDecoderBlock(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the visual queries' outputs, MLP; each residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu") -> None:
        super().__init__()
        self.ln_1 = LayerNorm(dim)
        self.self_attn = CausalSelfAttention(dim, heads, causal=True)
        self.ln_2 = LayerNorm(dim)
        self.cross_attn = MultiHeadCrossAttention(dim, dim, heads)
        self.ln_3 = LayerNorm(dim)
        self.mlp = FusedMLP(dim, int(dim * mlp_ratio), activation=activation)

    def forward(self, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.ln_1(x))
        x = x + self.cross_attn(self.ln_2(x), visual)
        return x + self.mlp(self.ln_3(x))


class CaptionDecoder(nn.Module):
    """A CoCa-style caption decoder over video tokens (module docstring).

    Args:
        dim: decoder width (``dim / heads`` must be a head dim our cross_attention supports: 32, 40, 64, 80,
            96 or 128).
        vocab_size: output vocabulary (49408 for CLIP's BPE).
        num_queries: learnable visual queries that pool the video tokens (256 in InternVideo).
        layers: decoder layers (4).
        heads: attention heads.
        context_length: longest token input (positions of the decoder's own embedding).
        vision_dim: width of the video tokens (default `dim`).
        mlp_ratio: MLP hidden width / dim.
        tie_embeddings: output projection = ``token_embedding.weight`` (else a separate ``head`` Linear).
        activation: MLP activation (``"gelu"``).
    """

    def __init__(
        self,
        dim: int,
        vocab_size: int = 49408,
        num_queries: int = 256,
        layers: int = 4,
        heads: int = 8,
        context_length: int = 77,
        vision_dim: int | None = None,
        mlp_ratio: float = 4.0,
        tie_embeddings: bool = True,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if num_queries < 1 or layers < 0:
            raise ValueError(f"num_queries must be >= 1 and layers >= 0, got {num_queries}, {layers}")
        vision_dim = vision_dim or dim
        self.dim = dim
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.vision_dim = vision_dim
        self.tie_embeddings = tie_embeddings
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, dim))
        self.visual_queries = nn.Parameter(torch.empty(num_queries, dim))
        self.visual_norm = LayerNorm(vision_dim)
        self.visual_pool = MultiHeadCrossAttention(dim, vision_dim, heads)
        self.visual_pool_norm = LayerNorm(dim)
        self.text_norm = LayerNorm(dim)
        self.blocks = nn.ModuleList(
            CaptionDecoderBlock(dim, heads, mlp_ratio=mlp_ratio, activation=activation) for _ in range(layers)
        )
        self.ln_final = LayerNorm(dim)
        self.head = None if tie_embeddings else nn.Linear(dim, vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.visual_queries, std=self.dim ** -0.5)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=self.dim ** -0.5)

    @property
    def num_queries(self) -> int:
        return self.visual_queries.shape[0]

    def encode_video(
        self, video_tokens: torch.Tensor, video_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``video_tokens [B, S, vision_dim]`` (optional ``video_lengths [B]`` int32: tokens at or past are
        padding) -> pooled visual queries ``[B, num_queries, dim]``; reuse it across decoding steps."""
        if video_tokens.dim() != 3 or video_tokens.shape[-1] != self.vision_dim:
            raise ValueError(
                f"video_tokens must be [B, S, {self.vision_dim}], got {tuple(video_tokens.shape)}"
            )
        B = video_tokens.shape[0]
        queries = self.visual_queries.to(video_tokens.dtype).unsqueeze(0).expand(B, -1, -1)
        pooled = self.visual_pool(queries, self.visual_norm(video_tokens), kv_lengths=video_lengths)
        return self.visual_pool_norm(pooled)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, L]`` -> ``[B, L, dim]``: token plus positional embedding."""
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.context_length:
            raise ValueError(
                f"tokens must be [B, L] with 1 <= L <= {self.context_length}, got {tuple(tokens.shape)}"
            )
        return self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]

    def decode(self, visual: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Pooled visual queries ``[B, Q, dim]`` and input text features ``[B, L, dim]`` -> logits
        ``[B, L, vocab_size]`` (position i sees inputs 0..i only)."""
        x = self.text_norm(text_embeds)
        for block in self.blocks:
            x = block(x, visual)
        x = self.ln_final(x)
        weight = self.token_embedding.weight if self.head is None else self.head.weight
        return x @ weight.to(x.dtype).T

    def forward(
        self,
        video_tokens: torch.Tensor,
        tokens: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        video_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, L, vocab_size]`` for input ``tokens [B, L]`` (embedded by the decoder), or for given
        ``text_embeds [B, L, dim]`` (e.g. ``CLIPTextEncoder.forward_tokens``, as InternVideo does)."""
        if (tokens is None) == (text_embeds is None):
            raise ValueError("pass exactly one of tokens and text_embeds")
        if text_embeds is None:
            text_embeds = self.embed(tokens)
        elif text_embeds.dim() != 3 or text_embeds.shape[-1] != self.dim:
            raise ValueError(f"text_embeds must be [B, L, {self.dim}], got {tuple(text_embeds.shape)}")
        return self.decode(self.encode_video(video_tokens, video_lengths), text_embeds)


def caption_loss(
    decoder: CaptionDecoder,
    video_tokens: torch.Tensor,
    tokens: torch.Tensor,
    pad_id: int | None = 0,
    text_embeds: torch.Tensor | None = None,
    video_lengths: torch.Tensor | None = None,
    eot_id: int | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy, averaged over the non-padding targets of the batch.

    Args:
        decoder: the :class:`CaptionDecoder`.
        video_tokens: ``[B, S, vision_dim]`` the video encoder's tokens.
        tokens: ``[B, L]`` int64 caption ids (CLIP layout: SOT, ids, EOT, padding). Inputs are
            ``tokens[:, :-1]``, targets ``tokens[:, 1:]``.
        pad_id: targets equal to it are ignored (CLIP pads with 0; note 0 is also the id of ``!``, so a
            caption's own ``!`` is ignored too, unless `eot_id` is given).
        text_embeds: optional ``[B, L, dim]`` text features for all L positions (the last is dropped) to feed
            the decoder instead of its own embedding of `tokens`.
        video_lengths: optional ``[B]`` int32 valid video tokens per sample.
        eot_id: when given, the targets after each row's first `eot_id` are ignored instead of those equal to
            `pad_id` (49407 for CLIP).
        label_smoothing: as in ``F.cross_entropy``.

    Returns:
        the scalar loss, float32 (0 with a zero gradient when no target is valid).
    """
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [B, L] with L >= 2, got {tuple(tokens.shape)}")
    targets = tokens[:, 1:]
    if text_embeds is not None:
        logits = decoder(video_tokens, text_embeds=text_embeds[:, :-1], video_lengths=video_lengths)
    else:
        logits = decoder(video_tokens, tokens=tokens[:, :-1], video_lengths=video_lengths)
    if eot_id is not None:
        is_eot = targets == eot_id
        # positions strictly after the first EOT target of the row
        after_eot = (is_eot.long().cumsum(dim=1) - is_eot.long()) > 0
        valid = ~after_eot
    elif pad_id is not None:
        valid = targets != pad_id
    else:
        valid = torch.ones_like(targets, dtype=torch.bool)
    # Mean over valid targets without a host sync (no data-dependent branch): invalid rows get label 0 and
    # weight 0; an all-padding batch gives 0 with zero gradients.
    labels = targets.masked_fill(~valid, 0)
    per_token = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none",
        label_smoothing=label_smoothing,
    )
    weight = valid.reshape(-1).to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0)
