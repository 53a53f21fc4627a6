"""Loading official VideoMAE / InternVideo checkpoints (and our own) into our models, unchanged.

What official files look like (REFERENCE §1): ``{'model': sd}``, ``{'module': sd}`` or ``{'state_dict': sd}``;
pretraining keys under ``encoder.`` / ``decoder.``; fine-tuning keys flat (``blocks.i...``, ``fc_norm``,
``head``); some wrap everything in ``backbone.`` or DDP's ``module.``. :func:`load_pretrained`:

- unwraps and strips prefixes so the keys match the model (a pretraining checkpoint into a classifier
  keeps its encoder and drops the decoder);
- rebuilds the fixed sinusoid table for any frame count / resolution (it is not stored), and interpolates a
  learnable ``pos_embed`` over (t, h, w) when the grid differs;
- drops a ``head`` whose class count differs (and the pretraining ``norm`` when the classifier pools with
  ``fc_norm``);
- loads with ``torch.load(weights_only=True)`` and returns a report of missing, unexpected, dropped and
  interpolated keys.

Our state dicts use the official names, so saving is ``model.state_dict()`` (``{'model': sd}``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WRAPPER_KEYS = ("model", "module", "state_dict")
STRIP_PREFIXES = ("module.", "backbone.")


@dataclasses.dataclass
class LoadReport:
    source: str
    missing: list[str]
    unexpected: list[str]
    dropped: dict[str, str]
    interpolated: list[str]

    def __str__(self) -> str:
        lines = [f"loaded {self.source}"]
        for title, keys in (("missing (left at init)", self.missing), ("unexpected (ignored)", self.unexpected)):
            if keys:
                lines.append(f"  {title}: {len(keys)}: {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}")
        by_reason: dict[str, list[str]] = {}
        for key, why in self.dropped.items():
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            lines.append(f"  dropped {len(keys)} ({why}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
        if self.interpolated:
            lines.append(f"  interpolated: {', '.join(self.interpolated)}")
        if len(lines) == 1:
            lines.append("  all keys matched")
        return "\n".join(lines)


def unwrap_state_dict(checkpoint, source) -> dict:
    """The state dict inside a loaded checkpoint: ``checkpoint[k]`` for the first wrapper key k of
    'model' / 'module' / 'state_dict' it has, else the checkpoint itself. `source` names it in errors."""
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source!s:.200}: no state dict found (keys tried: {WRAPPER_KEYS})")
    return dict(checkpoint)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from 'model' / 'module' / 'state_dict'."""
    checkpoint = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def adapt_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename, drop and interpolate `state` so that it fits `model` (see the module docstring)."""
    report = LoadReport("", [], [], {}, [])
    for prefix in STRIP_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = _strip(state, prefix)
    target = model.state_dict()
    wants_encoder_prefix = any(k.startswith("encoder.") for k in target)
    has_encoder_prefix = any(k.startswith("encoder.") for k in state)
    if has_encoder_prefix and not wants_encoder_prefix:  # pretraining checkpoint -> classifier
        for key in [k for k in state if not k.startswith("encoder.")]:
            report.dropped[key] = "pretraining-only (decoder)"
            del state[key]
        state = _strip(state, "encoder.")
    elif wants_encoder_prefix and not has_encoder_prefix:  # a bare encoder -> pretraining model
        state = {f"encoder.{k}": v for k, v in state.items()}
    for key in list(state):
        if key not in target:
            continue
        if key.endswith("pos_embed") and state[key].shape != target[key].shape:
            state[key] = interpolate_pos_embed(state[key], target[key].shape, _grid_of(model))
            report.interpolated.append(key)
        elif state[key].shape != target[key].shape:
            report.dropped[key] = f"shape {tuple(state[key].shape)} != model's {tuple(target[key].shape)}"
            del state[key]
    if getattr(model, "fc_norm", None) is not None:  # mean pooling: the pretraining `norm` has no place
        for key in [k for k in state if k.startswith("norm.") and k not in target]:
            report.dropped[key] = "the classifier pools with fc_norm"
            del state[key]
    return state, report


def _grid_of(model: nn.Module) -> tuple[int, int, int]:
    encoder = getattr(model, "encoder", model)
    return encoder.patch_embed.grid


def interpolate_pos_embed(pos: torch.Tensor, shape: torch.Size, new_grid: tuple[int, int, int]) -> torch.Tensor:
    """A learnable position table ``[1, t*h*w, D]`` resized to `new_grid` (trilinear over t, h, w; the old
    grid is inferred assuming square frames, the official configuration)."""
    _, old_tokens, dim = pos.shape
    new_t, new_h, new_w = new_grid
    # Old grid: keep the frame count if it divides, else assume the new one; square spatial grid.
    for old_t in (new_t, 8, 16, 4, 2, 1):
        side = round((old_tokens / old_t) ** 0.5)
        if old_t * side * side == old_tokens:
            break
    else:
        raise ValueError(f"cannot infer the grid of a position table with {old_tokens} tokens")
    grid = pos.reshape(1, old_t, side, side, dim).permute(0, 4, 1, 2, 3).float()
    resized = F.interpolate(grid, size=(new_t, new_h, new_w), mode="trilinear", align_corners=False)
    return resized.permute(0, 2, 3, 4, 1).reshape(shape).to(pos.dtype)


def load_pretrained(model: nn.Module, path: str | os.PathLike, strict: bool = False) -> LoadReport:
    state, report = adapt_state_dict(read_state_dict(path), model)
    result = model.load_state_dict(state, strict=False)
    report.source = str(path)
    report.missing = [k for k in result.missing_keys if not k.endswith("decoder_pos_embed")]
    report.unexpected = list(result.unexpected_keys)
    if strict and (report.missing or report.unexpected):
        raise ValueError(str(report))
    return report


def save_atomically(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a crash never leaves a
    half-written checkpoint under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_official(model: nn.Module, path: str | os.PathLike) -> None:
    """The official file layout: ``{'model': state_dict}`` with the official key names."""
    save_atomically({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)
