"""The multimodal video encoder as a video-text model (InternVideo-MM): a UniFormerV2 video tower and a CLIP
text tower in one embedding space, trained with the video-text contrastive loss and the caption loss, and
used for zero-shot action recognition and video-text retrieval.

    model = create_model("internvideo_mm_b16")
    out = model(video, tokenize(captions))            # {"loss", "contrastive", "caption"}
    logits = zero_shot_classify(model, video, ["archery", "juggling", ...])

Video features: UniFormerV2's balance-fused feature -> ``visual_ln_post`` -> ``@ visual_proj`` (the released
InternVideo-MM layout); text features: the CLIP text encoder's end-of-text feature -> ``text_projection``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from internvideo_fast.layers.norm import LayerNorm
from internvideo_fast.models.clip_text import CLIPTextEncoder
from internvideo_fast.models.objectives import CaptionDecoder, caption_loss, clamped_logit_scale, contrastive_loss
from internvideo_fast.models.registry import create_model, register_model

DEFAULT_TEMPLATES = ("a video of {}.", "a video of a person {}.", "a person is {}.")


class VideoTextModel(nn.Module):
    def __init__(self, visual: nn.Module, text: CLIPTextEncoder, caption_decoder: CaptionDecoder | None = None,
                 caption_weight: float = 1.0):
        super().__init__()
        self.visual, self.text, self.caption_decoder = visual, text, caption_decoder
        width, embed_dim = visual.embed_dim, text.text_projection.shape[1]
        self.visual_ln_post = LayerNorm(width)
        self.visual_proj = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)
        self.caption_weight = caption_weight

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """L2-normalized video embeddings ``[B, E]``."""
        return self._embed_video_feature(self.visual.forward_features(video))

    def _embed_video_feature(self, feature: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual_ln_post(feature) @ self.visual_proj, dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalized text embeddings ``[N, E]`` of token ids ``[N, 77]``."""
        return F.normalize(self.text(tokens), dim=-1)

    def forward(self, video: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The `vl_pretrain` objective: symmetric InfoNCE (all ranks' pairs) + the caption LM loss.

        The video tower runs once: with a caption decoder, its tokens (the fused video feature first, then the
        last block's tokens) feed the decoder and their first token the contrastive loss."""
        if self.caption_decoder is None:
            video_feature, video_tokens = self.visual.forward_features(video), None
        else:
            video_tokens = self.visual.forward_tokens(video, include_global=True)
            video_feature = video_tokens[:, 0]
        text_features = self.encode_text(tokens)
        contrastive = contrastive_loss(self._embed_video_feature(video_feature), text_features,
                                       self.text.logit_scale)
        out = {"contrastive": contrastive, "loss": contrastive}
        if video_tokens is not None:
            caption = caption_loss(self.caption_decoder, video_tokens, tokens)
            out["caption"] = caption
            out["loss"] = contrastive + self.caption_weight * caption
        return out


@torch.no_grad()
def class_embeddings(model: VideoTextModel, class_names: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES, context_length: int | None = None) -> torch.Tensor:
    """One normalized text embedding per class: the mean over prompt templates (CLIP's prompt ensembling).
    A prompt longer than `context_length` ids (the length the text tower trained with; None: CLIP's 77) is a
    ValueError."""
    from internvideo_fast.models.tokenizer import CONTEXT_LENGTH, tokenize

    device = model.visual_proj.device
    embeddings = []
    for name in class_names:
        prompts = [t.format(name) for t in templates]
        features = model.encode_text(tokenize(prompts, context_length or CONTEXT_LENGTH, truncate=False).to(device))
        embeddings.append(F.normalize(features.mean(0), dim=-1))
    return torch.stack(embeddings)


@torch.no_grad()
def zero_shot_classify(model: VideoTextModel, video: torch.Tensor, class_names: Sequence[str],
                       templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """Logits ``[B, num_classes]`` of zero-shot action recognition: scaled cosine similarity between the video
    embeddings and the class-name prompt embeddings."""
    classes = class_embeddings(model, class_names, templates)
    return clamped_logit_scale(model.text.logit_scale) * model.encode_video(video) @ classes.t()


@torch.no_grad()
def multiple_choice(model: VideoTextModel, video: torch.Tensor, choices: Sequence[Sequence[str]]) -> torch.Tensor:
    """Zero-shot multiple choice (MSR-VTT MC style): for each video, the index of the candidate caption whose
    embedding is closest to the video's. `choices` holds the same number of candidates per video."""
    from internvideo_fast.models.tokenizer import tokenize

    counts = {len(c) for c in choices}
    if len(counts) != 1:
        raise ValueError(f"choices must hold the same number of candidates per video, got {sorted(counts)}")
    k = counts.pop()
    device = model.visual_proj.device
    text = model.encode_text(tokenize([c for cs in choices for c in cs]).to(device)).view(len(choices), k, -1)
    video_features = model.encode_video(video)
    return torch.einsum("bd,bkd->bk", video_features, text).argmax(dim=1)


def retrieval_metrics(video_features: torch.Tensor, text_features: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k of text-to-video and video-to-text retrieval for paired, normalized features (pair i is the
    match of pair i), plus the median rank. `video_features` ``[N, E]`` and `text_features` ``[N, E]`` must
    hold the same number N >= 1 of pairs (a ValueError otherwise: unequal counts have no pairing)."""
    if video_features.dim() != 2 or text_features.dim() != 2:
        raise ValueError(f"retrieval_metrics takes [N, E] features, got video {tuple(video_features.shape)} "
                         f"and text {tuple(text_features.shape)}")
    if video_features.shape[0] != text_features.shape[0]:
        raise ValueError(f"retrieval_metrics needs one text per video: got {video_features.shape[0]} videos and "
                         f"{text_features.shape[0]} texts")
    if video_features.shape[0] == 0:
        raise ValueError("retrieval_metrics got no pairs")
    if video_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"video and text features differ in width: {video_features.shape[1]} vs "
                         f"{text_features.shape[1]}")
    similarity = text_features @ video_features.t()
    metrics = {}
    for name, scores in (("t2v", similarity), ("v2t", similarity.t())):
        target = scores.diagonal()[:, None]
        ranks = (scores > target).sum(1)  # 0 = best
        for k in ks:
            metrics[f"{name}_R@{k}"] = (ranks < k).float().mean().item()
        metrics[f"{name}_median_rank"] = ranks.float().median().item() + 1
    return metrics


def _factory(uniformerv2: str, text: dict, caption: dict | None):
    def factory(with_caption: bool = True, visual_args: dict | None = None, text_args: dict | None = None, **kwargs):
        visual = create_model(uniformerv2, **(visual_args or {}))
        text_model = CLIPTextEncoder(**(text | (text_args or {})))
        decoder = CaptionDecoder(**caption) if caption is not None and with_caption else None
        return VideoTextModel(visual, text_model, decoder, **kwargs)

    factory.__doc__ = f"InternVideo-MM: {uniformerv2} + the CLIP text encoder."
    return factory


register_model("internvideo_mm_b16", _factory(
    "uniformerv2_b16", dict(width=512, layers=12, heads=8, embed_dim=512),
    dict(dim=512, vision_dim=768, num_queries=256, layers=4, heads=8)))
register_model("internvideo_mm_l14", _factory(
    "uniformerv2_l14", dict(width=768, layers=12, heads=12, embed_dim=768),
    dict(dim=768, vision_dim=1024, num_queries=256, layers=4, heads=12)))
register_model("internvideo_mm_tiny", _factory(
    "uniformerv2_tiny", dict(width=64, layers=2, heads=2, embed_dim=32, vocab_size=49408),
    dict(dim=64, vision_dim=64, num_queries=8, layers=1, heads=2)))
