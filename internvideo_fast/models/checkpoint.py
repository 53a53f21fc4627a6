"""Loading official VideoMAE / UniFormerV2 / InternVideo checkpoints (and our own) into our models, strictly.

What official files look like (REFERENCE §1): ``{'model': sd}``, ``{'module': sd}`` or ``{'state_dict': sd}``;
pretraining keys under ``encoder.`` / ``decoder.``; fine-tuning keys flat (``blocks.i...``, ``fc_norm``,
``head``); some wrap everything in ``backbone.`` or DDP's ``module.``.

:func:`load_pretrained` (``create_model(name, pretrained=path)``) reads the file with
``torch.load(weights_only=True)`` (:func:`read_checkpoint`: an unreadable file is a :class:`CheckpointError`
naming it) and hands it to the loader of the model's family: UniFormerV2 (``uniformerv2.load_checkpoint``),
video-text models (``internvideo_mm``), anything else through the VideoMAE rules below.

Loading is **strict by default**: a key of the model the checkpoint does not set (missing), a key of the
checkpoint the model has no place for (unexpected), or a tensor of another shape (mismatched) is a
:class:`CheckpointError` that names the file and lists the keys. Only documented, expected differences load
and are reported in one line (:class:`LoadReport`): a classifier head of another class count (re-initialised),
a pretraining decoder dropped for a classifier, a learnable position table interpolated to the model's grid,
VideoMAE's fixed sinusoid tables (non-persistent buffers: never stored, rebuilt for any grid, so they are
neither missing nor expected). ``strict=False`` loads what fits and
reports the rest.

VideoMAE rules (:func:`adapt_state_dict`): unwrap and strip prefixes so the keys match the model (a
pretraining checkpoint into a classifier keeps its encoder, drops the decoder and the pretraining ``norm``
when the classifier pools with ``fc_norm``; its ``fc_norm`` and ``head`` start from their initialisation);
the official top-level learnable ``pos_embed`` is our ``patch_embed.pos_embed``.

Our state dicts use the official names, so saving is ``model.state_dict()`` (``{'model': sd}``).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from internvideo_fast.errors import CheckpointError, UserError

WRAPPERS = ("model", "module", "state_dict", "model_state")
STRIP_PREFIXES = ("module.", "backbone.")
SHOWN_KEYS = 10  # keys listed by name in an error, then a count


def listed_keys(keys, shown: int = SHOWN_KEYS) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


@dataclasses.dataclass
class LoadReport:
    """What loading a checkpoint did.

    Errors under ``strict`` (:attr:`ok` is False): ``missing`` (model keys the checkpoint does not set),
    ``unexpected`` (checkpoint keys the model has no place for), ``mismatched`` (key -> both shapes).
    Expected differences, always allowed: ``dropped`` (checkpoint key -> why it is not used), ``initialized``
    (model key -> why it keeps its initial value), ``interpolated`` and ``inflated`` (keys resized to fit)."""

    source: str
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)
    interpolated: list[str] = dataclasses.field(default_factory=list)
    mismatched: dict[str, str] = dataclasses.field(default_factory=dict)
    initialized: dict[str, str] = dataclasses.field(default_factory=dict)
    inflated: list[str] = dataclasses.field(default_factory=list)
    model: str = ""
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """The errors as one line: counts and the first keys of each kind."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {listed_keys(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {listed_keys(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} {why}" for k, why in self.mismatched.items()]
            parts.append(f"{len(shown)} shape mismatch(es): {listed_keys(shown)}")
        return "; ".join(parts)

    def expected(self) -> str:
        """The expected differences as one line, grouped by reason."""
        groups: dict[str, list[str]] = {}
        for key, why in self.dropped.items():
            groups.setdefault(f"dropped ({why})", []).append(key)
        for key, why in self.initialized.items():
            groups.setdefault(f"left at init ({why})", []).append(key)
        parts = [f"{title}: {listed_keys(keys, 3)}" for title, keys in groups.items()]
        if self.interpolated:
            parts.append(f"interpolated: {', '.join(self.interpolated)}")
        if self.inflated:
            parts.append(f"inflated: {', '.join(self.inflated)}")
        return "; ".join(parts)

    def __str__(self) -> str:
        into = f" into {self.model}" if self.model else ""
        line = f"loaded {self.source}{into}: {self.loaded} tensors"
        if not self.ok:
            line += f"; NOT LOADED: {self.problems()}"
        expected = self.expected()
        return f"{line}; {expected}" if expected else f"{line}; all keys matched"

    def check(self, strict: bool) -> LoadReport:
        """Raise :class:`CheckpointError` under `strict` if anything is missing, unexpected or mismatched."""
        if strict and not self.ok:
            into = f" does not fit {self.model}" if self.model else " does not fit the model"
            raise CheckpointError(
                f"checkpoint {self.source}{into}: {self.problems()}",
                hint="is it the checkpoint of this model and size? strict=False (config: load.strict=false) "
                     "loads what fits and reports the rest",
            )
        return self


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------
def check_checkpoint_path(pretrained) -> str | os.PathLike:
    """`pretrained` must be a path; ``True`` (timm's hub download) is not supported."""
    if pretrained is True:
        raise UserError(
            "pretrained=True asks for a hub download, which internvideo-fast does not support",
            hint="download the official checkpoint yourself and pass its path: pretrained='vit_b_k400.pth' "
                 "(config: pretrained: path/to/file.pth)",
        )
    if not isinstance(pretrained, (str, os.PathLike)):
        raise UserError(f"pretrained must be the path of a checkpoint file, got {type(pretrained).__name__} "
                        f"{pretrained!r:.80}")
    return pretrained


def read_checkpoint(path: str | os.PathLike):
    """``torch.load(path, map_location='cpu', weights_only=True)``; a missing or unreadable file is a
    :class:`CheckpointError` naming it (with what to do when the file holds pickled Python objects)."""
    path = check_checkpoint_path(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # torch names the class it refused: `Unsupported global: ...`
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects besides tensors, which "
                "torch.load(weights_only=True) refuses",
                hint="in an environment you trust, re-save only the tensors, e.g. "
                     "torch.save({'state_dict': ckpt['state_dict']}, new_path), and load new_path",
            ) from error
        raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint (torch.load cannot parse it)") \
            from error
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, AttributeError, KeyError,
            IndexError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(error).__name__}: {first:.200}") \
            from error


def unwrap_state_dict(checkpoint, source) -> dict:
    """The state dict inside a loaded checkpoint: ``checkpoint[k]`` for the first wrapper key k of
    'model' / 'module' / 'state_dict' / 'model_state' (PySlowFast) it has, else the checkpoint itself.
    `source` names it in errors."""
    for key in WRAPPERS:
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"checkpoint {source!s:.200} holds no state dict (a "
                              f"{type(checkpoint).__name__}; wrapper keys tried: {', '.join(WRAPPERS)})")
    return dict(checkpoint)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from 'model' / 'module' / 'state_dict' / 'model_state'."""
    checkpoint = unwrap_state_dict(read_checkpoint(path), path)
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def source_name(source) -> str:
    return "<state dict>" if isinstance(source, Mapping) else str(source)


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------
def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], report: LoadReport,
                  strict: bool = True) -> LoadReport:
    """Load the entries of `state` whose name and shape fit `model`; every other entry is ``unexpected`` or
    ``mismatched`` and every model key left unset is ``missing`` (unless ``report.initialized`` names it
    as expected). Nothing is loaded when `strict` and anything does not fit."""
    own = model.state_dict()
    load = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched[key] = f"checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        else:
            load[key] = value
    report.missing = [k for k in own if k not in state and k not in report.initialized]
    report.model = report.model or type(model).__name__
    report.check(strict)
    model.load_state_dict(load, strict=False)
    report.loaded = len(load)
    return report


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def _head_width(model: nn.Module) -> int:
    head = getattr(model, "head", None)
    return head.out_features if isinstance(head, nn.Linear) else 0


def adapt_state_dict(state: dict[str, torch.Tensor], model: nn.Module,
                     report: LoadReport | None = None) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename, drop and interpolate `state` so that it fits `model` (the VideoMAE rules of the module
    docstring); the expected differences go into the report."""
    report = report or LoadReport("")
    for prefix in STRIP_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = _strip(state, prefix)
    target = model.state_dict()
    wants_encoder_prefix = any(k.startswith("encoder.") for k in target)
    has_encoder_prefix = any(k.startswith("encoder.") for k in state)
    from_pretraining = has_encoder_prefix and not wants_encoder_prefix
    if from_pretraining:  # pretraining checkpoint -> classifier
        for key in [k for k in state if not k.startswith("encoder.")]:
            report.dropped[key] = "pretraining decoder"
            del state[key]
        state = _strip(state, "encoder.")
    elif wants_encoder_prefix and not has_encoder_prefix:  # a bare encoder -> pretraining model
        state = {f"encoder.{k}": v for k, v in state.items()}
    for key in [k for k in state if k == "pos_embed" or k.endswith(".pos_embed") and "patch_embed" not in k]:
        ours = key[: -len("pos_embed")] + "patch_embed.pos_embed"
        if ours in target:  # the official learnable table sits at the top level
            state[ours] = state.pop(key)
    for key in list(state):
        if key not in target:
            continue
        if key.endswith("pos_embed") and state[key].shape != target[key].shape and \
                state[key].dim() == 3 and state[key].shape[-1] == target[key].shape[-1]:
            state[key] = interpolate_pos_embed(state[key], target[key].shape, _grid_of(model))
            report.interpolated.append(key)
    width = _head_width(model)
    head = [k for k in state if k in ("head.weight", "head.bias")]
    if head and not width and not any(k.startswith("head.") for k in target):
        for key in head:
            report.dropped[key] = "the model has no classifier head (num_classes=0)"
            del state[key]
    elif head and width and "head.weight" in state and \
            state["head.weight"].shape != target["head.weight"].shape:
        classes = state["head.weight"].shape[0]
        for key in head:
            report.dropped[key] = f"a head of {classes} classes; the model has {width}"
            report.initialized[key] = f"new head of {width} classes"
            del state[key]
    if getattr(model, "fc_norm", None) is not None:  # mean pooling: the pretraining `norm` has no place
        for key in [k for k in state if k.startswith("norm.") and k not in target]:
            report.dropped[key] = "the classifier pools with fc_norm"
            del state[key]
    if from_pretraining:
        for key in target:
            if key.startswith(("fc_norm.", "head.")) and key not in state:
                report.initialized[key] = "new fine-tuning head (not in a pretraining checkpoint)"
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
        raise CheckpointError(f"cannot infer the grid of a position table with {old_tokens} tokens")
    grid = pos.reshape(1, old_t, side, side, dim).permute(0, 4, 1, 2, 3).float()
    resized = F.interpolate(grid, size=(new_t, new_h, new_w), mode="trilinear", align_corners=False)
    return resized.permute(0, 2, 3, 4, 1).reshape(shape).to(pos.dtype)


# Family loaders: (model class, loader(model, checkpoint object, source, strict) -> LoadReport), registered
# by the model files; the first whose class the model is an instance of loads it.
_LOADERS: list[tuple[type, Callable]] = []


def register_checkpoint_loader(cls: type, loader: Callable) -> None:
    _LOADERS.append((cls, loader))


def load_videomae_checkpoint(model: nn.Module, checkpoint, source: str, strict: bool = True) -> LoadReport:
    """The VideoMAE rules (module docstring) for a loaded checkpoint object."""
    state = {k: v for k, v in unwrap_state_dict(checkpoint, source).items() if isinstance(v, torch.Tensor)}
    state, report = adapt_state_dict(state, model, LoadReport(source))
    return load_matching(model, state, report, strict)


def load_pretrained(model: nn.Module, path: str | os.PathLike | Mapping, strict: bool = True,
                    source: str | None = None) -> LoadReport:
    """Load a checkpoint file (or an already loaded checkpoint mapping, named `source` in reports) into
    `model` with the loader of its family (module docstring). Raises :class:`CheckpointError` under
    `strict` when it does not fit."""
    import internvideo_fast.models  # noqa: F401  (registers the family loaders)

    checkpoint = path if isinstance(path, Mapping) else read_checkpoint(path)
    source = source or source_name(path)
    for cls, loader in _LOADERS:
        if isinstance(model, cls):
            return loader(model, checkpoint, source, strict)
    return load_videomae_checkpoint(model, checkpoint, source, strict)


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
