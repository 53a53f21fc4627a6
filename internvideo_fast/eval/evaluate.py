"""Action-recognition evaluation: top-1 / top-5 with multi-view testing (clips x crops averaged per video),
a confusion summary, and the count and names of the listed videos that could not be scored."""

from __future__ import annotations

import torch

from internvideo_fast.eval.accounting import account, check_labels


@torch.no_grad()
def evaluate(model, loader, device, num_classes: int | None = None, progress=None) -> dict:
    """Averages softmax scores over every view of a video (batches carry `index`, the video's position in
    its list, so views of one video may arrive in any batches); returns top1/top5 over the scored videos,
    ``videos`` (scored), ``listed``, ``dropped`` and ``dropped_videos`` (path -> reason: videos the loader
    skipped as bad), and the most confused class pairs. A label outside the model's classes is a UserError
    naming the list file and line. With no video scored, top1/top5 are NaN (``ivf-eval`` fails on it).
    `progress` (an :class:`internvideo_fast.progress.Progress` over the loader's batches) is advanced per
    batch."""
    was_training = model.training
    model.eval()
    scores: dict[int, torch.Tensor] = {}
    labels: dict[int, int] = {}
    for batch in loader:
        logits = model(batch["video"].to(device)).float().softmax(-1).cpu()
        pairs = list(zip(batch["index"].tolist(), batch["label"].tolist()))
        check_labels(loader, pairs, logits.shape[1])
        for row, (index, label) in zip(logits, pairs):
            scores[index] = scores.get(index, 0) + row
            labels[index] = label
        if progress is not None:
            progress.update()
    model.train(was_training)
    accounting = account(loader, scores)
    if not scores:
        return {"top1": float("nan"), "top5": float("nan"), "videos": 0, "confusion": [], **accounting}
    order = sorted(scores)
    stacked = torch.stack([scores[i] for i in order])
    truth = torch.tensor([labels[i] for i in order])
    k = min(5, stacked.shape[1])
    top = stacked.topk(k, dim=1).indices
    top1 = (top[:, 0] == truth).float().mean().item()
    top5 = (top == truth[:, None]).any(1).float().mean().item()
    classes = num_classes or stacked.shape[1]
    confusion = torch.zeros(classes, classes, dtype=torch.int64)
    confusion.index_put_((truth, top[:, 0]), torch.ones_like(truth), accumulate=True)
    off_diagonal = confusion.clone().fill_diagonal_(0)
    worst = off_diagonal.flatten().topk(min(5, off_diagonal.numel())).indices
    pairs = [(int(i // classes), int(i % classes), int(off_diagonal.flatten()[i])) for i in worst if off_diagonal.flatten()[i] > 0]
    return {"top1": top1, "top5": top5, "videos": len(order), "confusion": pairs, "matrix": confusion.tolist(),
            **accounting}
