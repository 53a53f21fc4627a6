"""Cross-model attention (CMA): InternVideo's fusion of the masked and the multimodal video encoders.

The original authors never released this part (InternVideo#20); it is built from the paper's description
(InternVideo, Wang et al. 2022, §3.3): both backbones are frozen, a stack of K CMA blocks mixes their tokens,
and only the CMA blocks and the classifier learn.

``CMABlock`` (pre-norm, residual), for a query stream ``x`` and a key/value stream ``y``:

    x = x + MultiHeadCrossAttention(norm_q(x), norm_kv(y))     # queries from x, keys and values from y
    x = x + FusedMLP(norm2(x))                                  # fc1 -> GELU -> fc2, ratio `mlp_ratio`

``CrossModelAttention``: linear adapters bring both streams to width ``dim`` (identity where a width already
matches); blocks ``0 .. K-2`` take queries from the multimodal (UniFormerV2) tokens and keys/values from the
masked-encoder (VideoMAE) tokens and update the multimodal stream; block ``K-1`` is reversed (queries from
the masked-encoder tokens, keys/values from the multimodal stream) and updates the masked-encoder stream.
``direction_order`` (one ``"mm"`` or ``"mae"`` per block: the stream that gives the queries) changes the
order for ablations. Each block records ``query_stream`` / ``kv_stream``. Both streams are then mean-pooled
over their tokens, layer-normed and concatenated (``fusion="concat"``, out width ``2 * dim``; ``"sum"``
adds them instead, out width ``dim``); ``InternVideo`` puts ``Dropout -> Linear`` on top.

Backbones are any modules with ``forward_tokens(video) -> [B, L, C]`` (VideoMAE's encoder in
``models/videomae.py``, UniFormerV2 in ``models/uniformerv2.py``); to choose which layers feed the CMA
(``mm_layers`` / ``mae_layers``), a backbone's ``forward_tokens`` must also take ``layers=``.

Choices the paper leaves open (ours): LayerNorm eps 1e-6; GELU (erf) in the CMA FFN; no positional
embedding added to either stream (both backbones' tokens already carry theirs); pooling by token mean;
frozen backbones run in ``eval`` mode under ``torch.no_grad`` (optionally under autocast), so their
dropout, drop path and BatchNorm statistics are off.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from internvideo_fast.layers.attention import MultiHeadCrossAttention
from internvideo_fast.layers.drop import drop_path as _drop_path
from internvideo_fast.layers.mlp import FusedMLP
from internvideo_fast.models.checkpoint import register_checkpoint_loader

STREAMS = ("mm", "mae")  # multimodal (UniFormerV2) tokens, masked-encoder (VideoMAE) tokens


def _other(stream: str) -> str:
    return "mae" if stream == "mm" else "mm"


class CMABlock(nn.Module):
    """One CMA block: pre-norm cross-attention (queries from ``x_q``, keys/values from ``x_kv``) + residual,
    then pre-norm FFN + residual. ``x_q [B, Sq, dim]``, ``x_kv [B, Sk, dim]`` -> ``[B, Sq, dim]``.

    ``query_stream`` / ``kv_stream`` name the streams the block reads (``"mm"`` or ``"mae"``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, query_stream: str = "mm",
                 kv_stream: str | None = None) -> None:
        super().__init__()
        if query_stream not in STREAMS:
            raise ValueError(f"query_stream must be one of {STREAMS}, got {query_stream!r}")
        self.query_stream = query_stream
        self.kv_stream = kv_stream or _other(query_stream)
        self.drop_path = drop_path
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadCrossAttention(dim, dim, num_heads, proj_drop=drop, attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FusedMLP(dim, int(dim * mlp_ratio), activation="gelu", drop=drop)

    def extra_repr(self) -> str:
        return f"query_stream={self.query_stream!r}, kv_stream={self.kv_stream!r}"

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        x = x_q + _drop_path(self.attn(self.norm_q(x_q), self.norm_kv(x_kv)), self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class CrossModelAttention(nn.Module):
    """K CMA blocks over the multimodal (``mm``) and masked-encoder (``mae``) token streams, then pooling and
    fusion (module docstring). ``forward(mm_tokens [B, Lm, dim_mm], mae_tokens [B, La, dim_mae]) ->
    [B, out_dim]``.

    Args:
        dim_mm, dim_mae: the backbones' token widths.
        dim: the CMA width (default ``dim_mm``); a ``Linear`` adapter maps each stream whose width differs.
        depth: K, the number of blocks.
        num_heads: attention heads (``dim / num_heads`` must be a ``cross_attention`` head dim).
        direction_order: the query stream of each block, e.g. ``("mm", "mm", "mae")``; default K-1 ``"mm"``
            then one ``"mae"`` (the paper's order).
        fusion: ``"concat"`` (out width ``2 * dim``) or ``"sum"`` (``dim``) of the pooled, normed streams.
    """

    def __init__(self, dim_mm: int, dim_mae: int, dim: int | None = None, depth: int = 2, num_heads: int = 8,
                 mlp_ratio: float = 4.0, direction_order: Sequence[str] | None = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path_rate: float = 0.0, fusion: str = "concat") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        dim = dim or dim_mm
        order = tuple(direction_order) if direction_order is not None else ("mm",) * (depth - 1) + ("mae",)
        if len(order) != depth or any(s not in STREAMS for s in order):
            raise ValueError(f"direction_order must name {depth} query streams from {STREAMS}, got {order}")
        if fusion not in ("concat", "sum"):
            raise ValueError(f"fusion must be 'concat' or 'sum', got {fusion!r}")
        self.dim, self.depth, self.direction_order, self.fusion = dim, depth, order, fusion
        self.adapter_mm = nn.Linear(dim_mm, dim) if dim_mm != dim else nn.Identity()
        self.adapter_mae = nn.Linear(dim_mae, dim) if dim_mae != dim else nn.Identity()
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([
            CMABlock(dim, num_heads, mlp_ratio, drop, attn_drop, rates[i], query_stream=order[i])
            for i in range(depth)
        ])
        self.norm_mm = nn.LayerNorm(dim, eps=1e-6)
        self.norm_mae = nn.LayerNorm(dim, eps=1e-6)
        self.out_dim = 2 * dim if fusion == "concat" else dim
        self.apply(_init_weights)

    def forward_streams(self, mm_tokens: torch.Tensor, mae_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both streams after the blocks: ``{"mm": [B, Lm, dim], "mae": [B, La, dim]}``."""
        if mm_tokens.shape[0] != mae_tokens.shape[0]:
            raise ValueError(f"batch sizes differ: mm {mm_tokens.shape[0]} vs mae {mae_tokens.shape[0]}")
        streams = {"mm": self.adapter_mm(mm_tokens), "mae": self.adapter_mae(mae_tokens)}
        for block in self.blocks:
            streams[block.query_stream] = block(streams[block.query_stream], streams[block.kv_stream])
        return streams

    def forward(self, mm_tokens: torch.Tensor, mae_tokens: torch.Tensor) -> torch.Tensor:
        streams = self.forward_streams(mm_tokens, mae_tokens)
        mm = self.norm_mm(streams["mm"].mean(dim=1))
        mae = self.norm_mae(streams["mae"].mean(dim=1))
        return torch.cat([mm, mae], dim=-1) if self.fusion == "concat" else mm + mae


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class UniFormerV2Tokens(nn.Module):
    """Adapter: a UniFormerV2 seen through ``forward_tokens(video, layers=None) -> [B, L, C]`` with fixed
    defaults (which blocks, and whether the fused global token leads). ``embed_dim`` is the model's width."""

    def __init__(self, model: nn.Module, layers: Sequence[int] | int | None = None,
                 include_global: bool = True) -> None:
        super().__init__()
        self.model = model
        self.layers = layers
        self.include_global = include_global
        self.embed_dim = model.embed_dim

    def forward_tokens(self, video: torch.Tensor, layers: Sequence[int] | int | None = None) -> torch.Tensor:
        return self.model.forward_tokens(video, layers=self.layers if layers is None else layers,
                                         include_global=self.include_global)

    forward = forward_tokens


def _load_into_wrapped(module: UniFormerV2Tokens, checkpoint, source: str, strict: bool):
    """A checkpoint given for the adapter loads into the UniFormerV2 it wraps."""
    from internvideo_fast.models.checkpoint import load_pretrained

    return load_pretrained(module.model, checkpoint, strict, source=source)


register_checkpoint_loader(UniFormerV2Tokens, _load_into_wrapped)


def _accepts_layers(encoder: nn.Module) -> bool:
    try:
        params = inspect.signature(encoder.forward_tokens).parameters
    except (TypeError, ValueError):
        return True
    return "layers" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class InternVideo(nn.Module):
    """Masked video encoder + multimodal video encoder + CMA + classifier.

    ``forward(video, video_mm=None) -> logits [B, num_classes]``: ``video`` feeds the masked encoder and,
    unless ``video_mm`` is given (the two encoders usually want different frame counts and
    normalisations), the multimodal encoder too.

    Args:
        masked_encoder, multimodal_encoder: modules with ``forward_tokens(video) -> [B, L, C]`` (and
            ``layers=`` when ``mae_layers`` / ``mm_layers`` is set).
        cma: a :class:`CrossModelAttention` whose ``dim_mm`` / ``dim_mae`` match the backbones.
        num_classes: classifier width; the head is ``Dropout(head_dropout) -> Linear(cma.out_dim, ...)``.
        freeze_backbones: backbone parameters get ``requires_grad=False``, the backbones stay in eval mode
            (also under ``.train()``) and run under ``torch.no_grad``; only the CMA and the head train.
        mm_layers, mae_layers: which backbone layers feed the CMA (passed as ``layers=``); None: the
            backbone's default.
        backbone_dtype: e.g. ``torch.bfloat16``: frozen backbones run under autocast to it and their tokens
            are cast back to the CMA's dtype.
        trainable_backbone_keys: with frozen backbones, parameters whose name (in the backbone) contains one
            of these strings stay trainable, e.g. ``("transformer.temporal_cls_token",)`` for the UniBlock
            query (our reading of the paper: "frozen except the classification layers and the query
            tokens"); a backbone with a trainable parameter runs with gradients on (still in eval mode).
    """

    def __init__(self, masked_encoder: nn.Module, multimodal_encoder: nn.Module, cma: CrossModelAttention,
                 num_classes: int, freeze_backbones: bool = True,
                 mm_layers: Sequence[int] | int | None = None,
                 mae_layers: Sequence[int] | int | None = None, head_dropout: float = 0.0,
                 backbone_dtype: torch.dtype | None = None,
                 trainable_backbone_keys: Sequence[str] = ()) -> None:
        super().__init__()
        for name, encoder, layers in (("masked_encoder", masked_encoder, mae_layers),
                                      ("multimodal_encoder", multimodal_encoder, mm_layers)):
            if not callable(getattr(encoder, "forward_tokens", None)):
                raise ValueError(f"{name} must have forward_tokens(video) -> [B, L, C]")
            if layers is not None and not _accepts_layers(encoder):
                raise ValueError(f"{name}.forward_tokens takes no layers=, so a layer selection cannot apply")
        self.masked_encoder = masked_encoder
        self.multimodal_encoder = multimodal_encoder
        self.cma = cma
        self.mm_layers, self.mae_layers = mm_layers, mae_layers
        self.backbone_dtype = backbone_dtype
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(cma.out_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.freeze_backbones = freeze_backbones
        if freeze_backbones:
            for encoder in (masked_encoder, multimodal_encoder):
                encoder.requires_grad_(False)
                for name, param in encoder.named_parameters():
                    if any(key in name for key in trainable_backbone_keys):
                        param.requires_grad_(True)
                encoder.eval()

    def train(self, mode: bool = True) -> InternVideo:
        super().train(mode)
        if self.freeze_backbones:
            self.masked_encoder.eval()
            self.multimodal_encoder.eval()
        return self

    def _tokens(self, encoder: nn.Module, video: torch.Tensor, layers) -> torch.Tensor:
        kwargs = {} if layers is None else {"layers": layers}
        if not self.freeze_backbones:
            return encoder.forward_tokens(video, **kwargs)
        autocast = (torch.autocast(video.device.type, dtype=self.backbone_dtype) if self.backbone_dtype
                    else contextlib.nullcontext())
        partly_trainable = any(p.requires_grad for p in encoder.parameters())
        grad = contextlib.nullcontext() if partly_trainable else torch.no_grad()
        with grad, autocast:
            tokens = encoder.forward_tokens(video, **kwargs)
        dtype = self.head.weight.dtype
        return tokens.to(dtype) if tokens.dtype != dtype else tokens

    def forward_backbones(self, video: torch.Tensor, video_mm: torch.Tensor | None = None):
        """``(mm_tokens, mae_tokens)`` from the two backbones."""
        mae = self._tokens(self.masked_encoder, video, self.mae_layers)
        mm = self._tokens(self.multimodal_encoder, video if video_mm is None else video_mm, self.mm_layers)
        return mm, mae

    def forward_features(self, video: torch.Tensor, video_mm: torch.Tensor | None = None) -> torch.Tensor:
        """The fused CMA feature ``[B, cma.out_dim]``."""
        return self.cma(*self.forward_backbones(video, video_mm))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(features))

    def forward(self, video: torch.Tensor, video_mm: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(video, video_mm))

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The parameters an optimizer should see: those with ``requires_grad`` (CMA + head when frozen)."""
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]


def build_internvideo(masked_encoder: nn.Module, multimodal_encoder: nn.Module, num_classes: int,
                      depth: int = 2, num_heads: int = 8, dim: int | None = None,
                      direction_order: Sequence[str] | None = None, **kwargs) -> InternVideo:
    """An :class:`InternVideo` whose CMA widths come from the backbones' ``embed_dim``; `kwargs` go to
    ``InternVideo`` (freeze_backbones, mm_layers, mae_layers, head_dropout, backbone_dtype)."""
    cma = CrossModelAttention(multimodal_encoder.embed_dim, masked_encoder.embed_dim, dim, depth, num_heads,
                              direction_order=direction_order)
    return InternVideo(masked_encoder, multimodal_encoder, cma, num_classes, **kwargs)


__all__ = ["CMABlock", "CrossModelAttention", "InternVideo", "UniFormerV2Tokens", "build_internvideo"]
