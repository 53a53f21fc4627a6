"""Video question answering on the multimodal encoder (InternVideo-MM: UniFormerV2 + the CLIP text encoder).

The question's (or question + candidate answer's) text tokens read the video's tokens through a small
fusion transformer, and the end-of-text position carries the answer:

    v = W_v * video tokens [B, Nv, Cv]          (UniFormerV2.forward_tokens: the fused video token + frame tokens)
    q = W_t * text tokens  [B, L, Ct]           (CLIPTextEncoder.forward_tokens, causal)
    per fusion block:  q <- q + CrossAttn(LN(q), LN(v));  q <- q + MLP(LN(q))
    h = LN(q)[end-of-text position]             [B, D]

- open-ended (MSRVTT-QA / MSVD-QA): ``answer_logits = Linear(h)`` over an answer vocabulary, cross-entropy;
- multiple choice: each (video, question + choice) pair gets ``score = Linear(h)``; cross-entropy over the
  choices of a question (ranking), the video encoded once and shared by its choices.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FusionBlock", "VideoQA"]


class FusionBlock(nn.Module):
    """Pre-LN cross-attention of text queries over video tokens, then a GELU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm_q, self.norm_v, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        video = self.norm_v(v)
        q = q + self.attention(self.norm_q(q), video, video, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class VideoQA(nn.Module):
    """A VideoTextModel (``visual`` with ``forward_tokens``, ``text`` with ``forward_tokens``) plus the fusion
    and both answer heads. ``freeze_encoders`` keeps the encoders fixed (no gradient, no optimizer state)."""

    def __init__(self, video_text: nn.Module, num_answers: int = 0, dim: int = 256, depth: int = 2,
                 num_heads: int = 4, dropout: float = 0.1, freeze_encoders: bool = False):
        super().__init__()
        self.video_text = video_text
        self.freeze_encoders = freeze_encoders
        if freeze_encoders:
            for parameter in video_text.parameters():
                parameter.requires_grad_(False)
        video_dim = video_text.visual.embed_dim
        text_dim = video_text.text.token_embedding.weight.shape[1]
        self.video_in = nn.Linear(video_dim, dim)
        self.text_in = nn.Linear(text_dim, dim)
        self.blocks = nn.ModuleList(FusionBlock(dim, num_heads, dropout=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.answer_head = nn.Linear(dim, num_answers) if num_answers else None
        self.choice_head = nn.Linear(dim, 1)

    def video_tokens(self, video: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoders):
            return self.video_in(self.video_text.visual.forward_tokens(video))

    def fuse(self, video_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``video_tokens [B, Nv, D]`` (from :meth:`video_tokens`), text ``tokens [B, L]`` -> ``[B, D]``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoders):
            text = self.video_text.text.forward_tokens(tokens)
        q = self.text_in(text)
        for block in self.blocks:
            q = block(q, video_tokens)
        eot = tokens.argmax(dim=-1)
        return self.norm(q[torch.arange(len(tokens), device=tokens.device), eot])

    def answer_logits(self, video: torch.Tensor, question_tokens: torch.Tensor) -> torch.Tensor:
        """Open-ended: ``video [B, 3, T, H, W]``, ``question_tokens [B, L]`` -> ``[B, num_answers]``."""
        if self.answer_head is None:
            raise ValueError("this VideoQA has no answer vocabulary (num_answers=0): use choice_logits")
        return self.answer_head(self.fuse(self.video_tokens(video), question_tokens))

    def choice_logits(self, video: torch.Tensor, choice_tokens: torch.Tensor) -> torch.Tensor:
        """Multiple choice: ``choice_tokens [B, C, L]`` (question + each candidate) -> scores ``[B, C]``."""
        batch, choices, length = choice_tokens.shape
        video_tokens = self.video_tokens(video)
        repeated = video_tokens.repeat_interleave(choices, dim=0)
        scores = self.choice_head(self.fuse(repeated, choice_tokens.reshape(batch * choices, length)))
        return scores.view(batch, choices)
