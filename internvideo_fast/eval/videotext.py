"""Zero-shot evaluation of a video-text model (InternVideo-MM): action recognition from class-name prompts,
video<->text retrieval (R@1/5/10, median rank) and multiple choice. Every view of a video (clips x crops)
is embedded and the embeddings are averaged per video, as the fine-tuned evaluation averages scores. Every
result also states ``listed``, ``dropped`` and ``dropped_videos`` (videos the loader skipped as bad, by name);
with no video scored the metrics are NaN (``ivf-eval`` fails on it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from internvideo_fast.errors import ConfigError
from internvideo_fast.eval.accounting import account
from internvideo_fast.models.tokenizer import CONTEXT_LENGTH, get_tokenizer
from internvideo_fast.models.videotext import DEFAULT_TEMPLATES, class_embeddings, retrieval_metrics


@torch.no_grad()
def video_embeddings(model, loader, device, progress=None
                     ) -> tuple[torch.Tensor, list[int], list[int], list[str | None], list[torch.Tensor | None]]:
    """Mean-over-views normalized embeddings ``[N, E]`` in list order, with labels, captions and the loader's
    caption tokens (``data.max_text_len`` ids, as in training); `progress` (a
    :class:`internvideo_fast.progress.Progress` over the loader's batches) is advanced per batch."""
    model.eval()
    sums: dict[int, torch.Tensor] = {}
    labels: dict[int, int] = {}
    captions: dict[int, str | None] = {}
    tokens: dict[int, torch.Tensor | None] = {}
    for batch in loader:
        features = model.encode_video(batch["video"].to(device)).float().cpu()
        rows = features.shape[0]
        batch_captions = batch.get("caption", [None] * rows)
        batch_tokens = batch["tokens"].cpu() if "tokens" in batch else [None] * rows
        for row, index, label, caption, ids in zip(features, batch["index"].tolist(), batch["label"].tolist(),
                                                   batch_captions, batch_tokens):
            sums[index] = sums.get(index, 0) + row
            labels[index], captions[index], tokens[index] = label, caption, ids
        if progress is not None:
            progress.update()
    order = sorted(sums)
    embeddings = F.normalize(torch.stack([sums[i] for i in order]), dim=-1) if order else torch.empty(0)
    return (embeddings, [labels[i] for i in order], order, [captions[i] for i in order],
            [tokens[i] for i in order])


def evaluate_zero_shot(model, loader, class_names: Sequence[str], device,
                       templates: Sequence[str] = DEFAULT_TEMPLATES, progress=None) -> dict:
    model.eval()
    # Prompts must fit the length the text tower trained with (its later positions are untrained).
    length = getattr(getattr(loader, "cfg", None), "max_text_len", CONTEXT_LENGTH)
    prompts = [template.format(name) for name in class_names for template in templates]
    cut = get_tokenizer().tokens_and_cuts(prompts, length)[1]
    if cut:
        raise ConfigError(f"the zero-shot prompt {prompts[cut[0]]!r} is longer than data.max_text_len = {length} "
                          "ids", hint="shorter class names or templates, or a model trained on longer captions")
    classes = class_embeddings(model, class_names, templates, length).float().cpu()
    videos, labels, order, _, _ = video_embeddings(model, loader, device, progress)
    accounting = account(loader, order)
    if not order:
        return {"top1": float("nan"), "top5": float("nan"), "videos": 0, **accounting}
    scores = videos @ classes.t()
    truth = torch.tensor(labels)
    top = scores.topk(min(5, len(class_names)), dim=1).indices
    return {"top1": (top[:, 0] == truth).float().mean().item(), "top5": (top == truth[:, None]).any(1).float().mean().item(),
            "videos": len(labels), **accounting}


def evaluate_retrieval(model, loader, device, progress=None) -> dict:
    """The loader must carry captions (a video-text list, `data.text: true`). Captions are embedded from the
    loader's tokens, cut to ``data.max_text_len`` as in training (the text tower's later positions are
    untrained when it trained on shorter ids), or at CLIP's 77 ids from a loader without tokens."""
    from internvideo_fast.models.tokenizer import tokenize

    videos, _, order, captions, tokens = video_embeddings(model, loader, device, progress)
    accounting = account(loader, order)
    if not order:
        return {"pairs": 0, **accounting}
    if any(c is None for c in captions):
        raise ValueError("retrieval needs a video-text list (data.text: true)")
    ids = torch.stack(tokens) if all(t is not None for t in tokens) else tokenize(captions)
    texts = torch.cat([model.encode_text(ids[i:i + 256].to(device)).float().cpu()
                       for i in range(0, len(captions), 256)])
    return retrieval_metrics(videos, F.normalize(texts, dim=-1)) | {"pairs": len(captions), **accounting}


def evaluate_multiple_choice(model, loader, questions: Sequence[dict], device, progress=None) -> dict:
    """`questions[i]` = ``{"choices": [...], "answer": k}`` for the i-th video of the loader's list."""
    from internvideo_fast.models.tokenizer import tokenize

    videos, _, order, _, _ = video_embeddings(model, loader, device, progress)
    correct = 0
    for row, index in zip(videos, order):
        question = questions[index]
        texts = F.normalize(model.encode_text(tokenize(question["choices"]).to(device)).float().cpu(), dim=-1)
        correct += int((texts @ row).argmax()) == int(question["answer"])
    accuracy = correct / len(order) if order else float("nan")
    return {"accuracy": accuracy, "videos": len(order), **account(loader, order)}
