"""Which listed videos an evaluation scored and which it dropped, by name: the honest denominator.

A loader in test mode skips a bad video (missing, unreadable, truncated; see ``data/dataset.py``) instead of
crashing. :func:`account` compares the videos a pass scored with the videos the loader's shard lists and
names each dropped one with the reason the loader recorded; :func:`check_dropped` turns too many drops into an
error (``eval.max_bad_fraction``, default 0: any dropped video fails ``ivf-eval``).
"""

from __future__ import annotations

from collections.abc import Collection

from internvideo_fast.errors import UserError

__all__ = ["account", "check_dropped", "check_labels"]


def _record_path(loader, index: int) -> str:
    dataset = getattr(loader, "dataset", None)
    records = getattr(dataset, "records", None)
    if records is None:
        return f"record {index}"
    return records[index].full_path(getattr(dataset, "root", None))


def account(loader, scored: Collection[int]) -> dict:
    """``{"listed", "dropped", "dropped_videos": {path: reason}}`` for a pass of `loader` that scored the
    record indices `scored`. A loader without ``indices()`` lists exactly what was scored."""
    listed = loader.indices() if hasattr(loader, "indices") else sorted(scored)
    listed = list(dict.fromkeys(listed))  # testing shards neither pad nor repeat; be safe
    seen = set(scored)
    bad = loader.bad_videos() if hasattr(loader, "bad_videos") else {}
    dropped = {}
    for index in listed:
        if index not in seen:
            path = _record_path(loader, index)
            dropped[path] = bad.get(path, "not produced by the loader")
    return {"listed": len(listed), "dropped": len(dropped), "dropped_videos": dropped}


def check_dropped(result: dict, max_bad_fraction: float = 0.0, what: str = "the list") -> None:
    """Raise :class:`UserError` when no video was scored, or when more than `max_bad_fraction` of the listed
    videos were dropped (the message names the first dropped files and their reasons)."""
    listed, dropped = result.get("listed", 0), result.get("dropped", 0)
    dropped_videos = list(result.get("dropped_videos", {}).items())
    names = "; ".join(f"{path}: {reason}" for path, reason in dropped_videos[:5])
    more = f" (+{dropped - 5} more)" if dropped > 5 else ""
    if listed == 0:
        raise UserError(f"{what} lists no video to evaluate")
    if dropped >= listed:
        raise UserError(f"none of the {listed} videos of {what} could be scored: {names}{more}",
                        hint="check the paths (data.root) and that the files decode")
    if dropped > max_bad_fraction * listed:
        raise UserError(
            f"{dropped} of {listed} videos of {what} could not be scored ({dropped / listed:.1%} > "
            f"eval.max_bad_fraction={max_bad_fraction:g}): {names}{more}",
            hint="fix or remove those files, or allow them with eval.max_bad_fraction=<fraction>",
        )


def check_labels(loader, labels, num_classes: int) -> None:
    """Labels must lie in ``[0, num_classes)``: an error naming the list file and line of the first that does
    not (the record's ``where``), instead of an index error deep in the metrics."""
    for index, label in labels:
        if not 0 <= label < num_classes:
            dataset = getattr(loader, "dataset", None)
            record = dataset.records[index] if dataset is not None else None
            where = getattr(record, "where", "") or _record_path(loader, index)
            raise UserError(f"{where}: label {label} is outside the model's {num_classes} classes "
                            f"[0, {num_classes})", hint="check the list file, or model_args.num_classes")
