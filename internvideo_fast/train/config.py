"""Training configs: one schema, YAML files (configs/) and ``key.sub=value`` overrides.

The schema is :class:`TrainingConfig` below: a tree of dataclasses whose fields are every valid key, with its
type, default and allowed values. ``load_config(path, overrides)`` merges the YAML file over the defaults,
applies the overrides (values parsed as YAML: numbers, booleans, lists, null; an override of a mapping
replaces it), and checks the result against the schema before anything runs:

- an unknown key is a :class:`~internvideo_fast.errors.ConfigError` naming the dotted key and the closest
  valid one ("did you mean ...");
- a value of the wrong type or outside its range (``data.batch_size=0``, ``optim.layer_decay=1.5``) is a
  ``ConfigError`` naming the key and where the value came from (``file.yaml, line N`` or the override).

The result is a plain nested dict (what checkpoints store) with every key present. To add a key, add a field
to its section with :func:`key`; a new recipe is one entry of :data:`RECIPES`. ``data.*`` is generated from
:class:`internvideo_fast.data.DataConfig` (plus ``train_list`` / ``val_list``), so a new loader option is
valid here as soon as it exists there; its range checks are in :data:`_DATA_CHECKS`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import yaml

from internvideo_fast.builtin_configs import find_config
from internvideo_fast.errors import ConfigError

# name -> what it trains; `ivf-train --help` lists these.
RECIPES: dict[str, str] = {
    "mae_pretrain": "VideoMAE masked pretraining (tube masks, normalized-pixel targets)",
    "vl_pretrain": "video-text pretraining: contrastive + caption on path<TAB>caption lists",
    "finetune": "classification fine-tuning (mixup / cutmix, label smoothing, layer decay)",
    "supervised_postpretrain": "supervised post-pretraining of either encoder on action labels",
    "cma": "cross-model attention over frozen backbones (CMA blocks + head train)",
    "tal": "temporal action localization: an ActionFormer-style detector on ivf-extract features",
    "stal": "spatio-temporal action localization: a RoIAlign head over person boxes (AVA CSV)",
    "open_set": "open-set recognition: an evidential (Dirichlet) head on ivf-extract features",
    "vqa": "video question answering: open-ended and multiple-choice heads on InternVideo-MM",
}
# The downstream tasks' recipes (internvideo_fast/train/tasks/): their `data` section is the task's own,
# checked by the task against its keys.
TASK_RECIPES = ("tal", "stal", "open_set", "vqa")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# ------------------------------------------------------------------------------------- value checks


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (either bound optional; ``open`` bounds exclude themselves)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __call__(self, value) -> str | None:
        if value is None:
            return None
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.describe()}" if too_low or too_high else None

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def __call__(self, value) -> str | None:
        if value is None or any(value is c or (type(value) is type(c) and value == c) for c in self.choices):
            return None
        return "must be one of " + " | ".join(_show(c) for c in self.choices)


def key(default, check: Callable[[Any], str | None] | None = None):
    """A schema field: its default (a mutable default is copied per config) and an optional value check
    returning the problem (``"must be >= 1"``) or None."""
    metadata = {"check": check} if check else {}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
UNIT_OPEN = Range(0, 1, low_open=True, high_open=True)


# ------------------------------------------------------------------------------------------ schema


@dataclass
class OptimConfig:
    base_lr: float = key(1.5e-4, POSITIVE)  # scaled by global batch / 256 (the official rule)
    min_lr: float = key(1e-6, NON_NEGATIVE)
    weight_decay: float = key(0.05, NON_NEGATIVE)
    betas: list[float] = key([0.9, 0.95], lambda v: None if len(v) == 2 and all(0 <= b < 1 for b in v)
                             else "must be two numbers in [0, 1)")
    warmup_steps: int = key(0, NON_NEGATIVE)
    layer_decay: float | None = key(None, Range(0, 1, low_open=True))  # e.g. 0.75 for fine-tuning
    clip_grad: float | None = key(None, POSITIVE)


@dataclass
class TrainConfig:
    epochs: int = key(1, AT_LEAST_ONE)
    max_steps: int | None = key(None, AT_LEAST_ONE)  # stop early (demos, tests)
    mask_ratio: float = key(0.9, UNIT_OPEN)
    mixup: float = key(0.0, NON_NEGATIVE)  # Beta(a, a) parameter; 0 = off
    cutmix: float = key(0.0, NON_NEGATIVE)
    label_smoothing: float = key(0.0, Range(0, 1, high_open=True))
    seed: int = key(0, NON_NEGATIVE)
    log_every: int = key(10, AT_LEAST_ONE)
    save_every: int = key(0, NON_NEGATIVE)  # steps; 0 = only at the end
    eval_every_epochs: int = key(0, NON_NEGATIVE)  # validate (and keep checkpoint-best.pth) every N epochs
    keep_checkpoints: int | None = key(2, AT_LEAST_ONE)  # checkpoint-<step>.pth files kept; null = all
    output_dir: str = "runs/default"
    resume: str | None = None  # null | auto | a checkpoint path (or a run folder)
    overwrite: bool = False  # start afresh in an output_dir that holds a run (its checkpoints are deleted)
    precision: str = key("auto", OneOf(PRECISIONS))  # auto: bf16 on CUDA, fp32 on CPU; fp16: CUDA only
    compile: bool | str = key(False, OneOf(COMPILE_MODES))
    # auto: each step replays one CUDA graph on CUDA (off with train.compile or fp16); true | false
    cuda_graph: bool | str = key("auto", OneOf((True, False, "auto")))
    # auto: the run-time tuners' choices are kept in output_dir (IVF_AUTOTUNE_CACHE, unless set), so a
    # resumed run runs the same kernel plans; null: each process tunes afresh.
    tuning_cache: str | None = key("auto", OneOf(("auto",)))
    tensorboard: bool = True


def _data_config_class():
    """``data.*``: the fields of DataConfig (less ``list_file`` and ``train``, which the loop sets per split,
    and ``normalize_on_device``, which it sets for its GPU feed) plus ``train_list`` / ``val_list``."""
    from internvideo_fast.data.loader import DataConfig

    hints = typing.get_type_hints(DataConfig)
    fields = [("train_list", str | None, key(None)), ("val_list", str | None, key(None))]
    for spec in dataclasses.fields(DataConfig):
        if spec.name in ("list_file", "train", "normalize_on_device"):
            continue
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        if isinstance(default, tuple):
            default = list(default)
        fields.append((spec.name, hints[spec.name], key(default, _DATA_CHECKS.get(spec.name))))
    return dataclasses.make_dataclass("DataSection", fields)


_DATA_CHECKS: dict[str, Callable] = {
    "sampling": OneOf(("dense", "segment")),
    "num_frames": AT_LEAST_ONE, "stride": AT_LEAST_ONE, "num_segments": AT_LEAST_ONE,
    "short_video": OneOf(("loop", "pad", "error")),
    "img_size": AT_LEAST_ONE, "short_side": AT_LEAST_ONE,
    "crop": OneOf(("multiscale", "random_resized", "center")),
    "normalization": OneOf(("imagenet", "clip")),
    "mean": lambda v: None if v is None or len(v) in (1, 3) else "must hold 1 or 3 numbers",
    "std": lambda v: None if v is None or (len(v) in (1, 3) and all(s > 0 for s in v))
    else "must hold 1 or 3 positive numbers",
    "batch_size": AT_LEAST_ONE, "num_workers": NON_NEGATIVE, "repeated_aug": AT_LEAST_ONE,
    "test_clips": AT_LEAST_ONE, "test_crops": OneOf((1, 3)),
    "on_error": OneOf(("replace", "skip", "raise")),
    "max_retries": NON_NEGATIVE, "decode_timeout_s": POSITIVE,
    "reader": OneOf(("auto", "torchcodec", "pyav")), "loader": OneOf(("auto", "torch", "dali")),
    "prefetch_factor": AT_LEAST_ONE,
    "max_text_len": lambda v: None if v >= 2 else "must be at least 2 (the start and end tokens)",
}

DataSection = _data_config_class()


@dataclass
class LoadConfig:
    # a checkpoint key that does not fit the model is an error; false loads what fits and reports the rest
    strict: bool = True


@dataclass
class EvalConfig:
    # evaluation fails when more than this fraction of the listed videos could not be scored
    max_bad_fraction: float = key(0.0, Range(0, 1))


@dataclass
class TrainingConfig:
    recipe: str = key("mae_pretrain", OneOf(tuple(RECIPES)))
    model: str = "videomae_pretrain_vit_base_patch16"
    model_args: dict = key({})  # the model factory's keyword arguments (free-form)
    pretrained: str | bool | None = key(None, lambda v: "must be the path of a checkpoint file (hub "
                                        "downloads are not supported)" if isinstance(v, bool) else None)
    # {sub-module attribute: checkpoint}, e.g. a CMA model's backbones
    pretrained_parts: dict[str, str] = key({})
    load: LoadConfig = key(None)
    eval: EvalConfig = key(None)
    data: DataSection = key(None)  # type: ignore[valid-type]
    optim: OptimConfig = key(None)
    train: TrainConfig = key(None)


def _section_class(cls, name: str):
    hint = typing.get_type_hints(cls)[name]
    return hint if dataclasses.is_dataclass(hint) else None


def _defaults(cls) -> dict:
    out = {}
    for spec in dataclasses.fields(cls):
        section = _section_class(cls, spec.name)
        if section is not None:
            out[spec.name] = _defaults(section)
        elif spec.default_factory is not dataclasses.MISSING:
            out[spec.name] = spec.default_factory()
        else:
            out[spec.name] = spec.default
    return out


DEFAULTS: dict[str, Any] = _defaults(TrainingConfig)


def valid_keys(cls=TrainingConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (sections and leaves)."""
    out = []
    for spec in dataclasses.fields(cls):
        dotted = prefix + spec.name
        out.append(dotted)
        section = _section_class(cls, spec.name)
        if section is not None:
            out += valid_keys(section, dotted + ".")
    return out


# --------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-5` (no dot) as a string; configs mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse(text: str):
    return yaml.load(text, Loader=_Loader)


def to_yaml(config: dict) -> str:
    """The config as YAML that :func:`load_config` reads back to the same dict."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def _key_lines(node, path: str, where: str, out: dict[str, str]) -> None:
    """Records ``dotted key -> "file, line N"`` for every key of a composed YAML mapping; a key given twice
    is an error (YAML would keep the last silently)."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen = set()
    for key_node, value_node in node.value:
        dotted = f"{path}{key_node.value}"
        line = f"{where}, line {key_node.start_mark.line + 1}"
        if key_node.value in seen:
            raise ConfigError(f"{dotted} is given twice ({line})")
        seen.add(key_node.value)
        out[dotted] = line
        _key_lines(value_node, dotted + ".", where, out)


def _read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" if not path.exists()
                          else f"config file {path} is not a file")
    text = path.read_text()
    try:
        loaded = _parse(text) or {}
        lines: dict[str, str] = {}
        _key_lines(yaml.compose(text, Loader=_Loader), "", str(path), lines)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, "
                          f"got {type(loaded).__name__}")
    return loaded, lines


# ------------------------------------------------------------------------------------------ merging


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for name, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = _merge(out[name], value)
        else:
            out[name] = copy.deepcopy(value)
    return out


def _split_override(override: str) -> tuple[list[str], Any]:
    if "=" not in override:
        raise ConfigError(f"override must look like key.sub=value, got {override!r}")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {override!r}: empty key")
    try:
        value = _parse(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({error})") from None
    return keys, value


def apply_override(config: dict, override: str, check: bool = True) -> None:
    """Sets ``key.sub=value`` in ``config`` (a mapping value replaces the mapping). With ``check`` the key
    must be one of the schema's and the value of its type and range (keys inside free-form mappings such as
    ``model_args.*`` are not checked)."""
    keys, value = _split_override(override)
    if check and not (keys[0] == "data" and config.get("recipe") in TASK_RECIPES):
        _check_value(TrainingConfig, keys, value, f"override {override}")
    node = config
    for name in keys[:-1]:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {name} is not a section")
    node[keys[-1]] = value


# ------------------------------------------------------------------------------------------ checking


def _show(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict or hint is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _conform(value, hint) -> tuple[bool, Any]:
    """(fits, value converted to the field's type: an integer given for a float field becomes a float)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            fits, converted = _conform(value, arg)
            if fits:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        item = typing.get_args(hint)[0]
        converted = []
        for element in value:
            fits, element = _conform(element, item)
            if not fits:
                return False, value
            converted.append(element)
        return True, converted
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return False, value
        args = typing.get_args(hint)
        if args and not all(_conform(k, args[0])[0] and _conform(v, args[1])[0] for k, v in value.items()):
            return False, value
        return True, value
    return isinstance(value, hint), value


def _suggest(cls, keys: list[str]) -> str:
    """``did you mean X?`` for an unknown dotted key: the closest key of the same section, the same name in
    another section, or the closest dotted key anywhere."""
    dotted = ".".join(keys)
    names = [spec.name for spec in dataclasses.fields(cls)]
    everything = valid_keys()
    prefix = dotted[: len(dotted) - len(keys[-1])] if len(keys) > 1 else ""
    close = difflib.get_close_matches(keys[-1], names, n=1, cutoff=0.6)
    if close:
        guess = prefix + close[0]
    else:
        same_name = [k for k in everything if k.rsplit(".", 1)[-1] == keys[-1]]
        close = same_name or difflib.get_close_matches(dotted, everything, n=1, cutoff=0.6)
        guess = close[0] if close else None
    if guess:
        return f"did you mean {guess}?"
    return f"valid keys{' of ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}"


def _check_value(cls, keys: list[str], value, where: str | None, done: tuple[str, ...] = ()) -> Any:
    """Checks ``value`` for the dotted key ``keys`` under schema section ``cls``; returns it converted."""
    name, rest = keys[0], keys[1:]
    dotted = ".".join(done + (name,))
    suffix = f" ({where})" if where else ""
    specs = {spec.name: spec for spec in dataclasses.fields(cls)}
    if name not in specs:
        raise ConfigError(f"unknown config key {dotted}{suffix}: {_suggest(cls, list(done) + [name])}")
    hint = typing.get_type_hints(cls)[name]
    section = hint if dataclasses.is_dataclass(hint) else None
    if section is not None:
        if rest:
            return _check_value(section, rest, value, where, done + (name,))
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted} is a section (a mapping of keys), got {_show(value)!r}{suffix}")
        return {sub: _check_value(section, [sub], sub_value, where, done + (name,))
                for sub, sub_value in value.items()}
    if rest:  # a key inside a free-form mapping (model_args.num_classes): the mapping's own business
        if hint is dict or typing.get_origin(hint) is dict:
            return value
        raise ConfigError(f"{dotted} is not a section, so {dotted}.{'.'.join(rest)} is not a key{suffix}")
    fits, converted = _conform(value, hint)
    if not fits:
        raise ConfigError(f"{dotted} must be {_type_name(hint)}, got {_show(value)!r} "
                          f"({type(value).__name__}){suffix}")
    check = specs[name].metadata.get("check")
    problem = check(converted) if check else None
    if problem:
        raise ConfigError(f"{dotted} {problem}, got {_show(value)}{suffix}")
    return converted


def _source_of(sources: dict[str, str], dotted: str) -> str | None:
    """Where the value of ``dotted`` came from: its own entry, an enclosing mapping's, or (for an unknown
    section) the first key given inside it."""
    inside = [where for name, where in sources.items() if name.startswith(dotted + ".")]
    while dotted:
        if dotted in sources:
            return sources[dotted]
        dotted = dotted.rpartition(".")[0]
    return inside[0] if inside else None


def validate_config(config: dict, sources: dict[str, str] | None = None) -> dict:
    """``config`` checked against the schema, with every missing key at its default and values converted
    (an integer for a float key becomes a float). ``sources`` maps dotted keys to where their values came
    from, for the messages. Raises :class:`ConfigError`."""
    sources = sources or {}
    merged = _merge(DEFAULTS, config)
    task_data = None
    if merged["recipe"] in TASK_RECIPES:
        if not isinstance(config.get("data") or {}, dict):
            raise ConfigError(f"data is a section (a mapping of keys), got {_show(config['data'])!r}")
        task_data = copy.deepcopy(config.get("data") or {})
        merged["data"] = {}

    def walk(cls, node: dict, done: tuple[str, ...]) -> dict:
        out = {}
        for name, value in node.items():
            dotted = ".".join(done + (name,))
            section = _section_class(cls, name) if name in {s.name for s in dataclasses.fields(cls)} else None
            if section is not None and isinstance(value, dict):
                out[name] = walk(section, value, done + (name,))
            else:
                out[name] = _check_value(cls, [name], value, _source_of(sources, dotted), done)
        return out

    checked = walk(TrainingConfig, merged, ())
    if task_data is not None:
        checked["data"] = task_data
    _check_model(checked["model"], _source_of(sources, "model"))
    return checked


def _check_model(name: str, where: str | None) -> None:
    from internvideo_fast.models.registry import list_models

    models = list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}?" if close else f"registered: {', '.join(models)}"
        raise ConfigError(f"unknown model {name!r}{f' ({where})' if where else ''}: {hint}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The resolved config: :data:`DEFAULTS`, the YAML file ``path`` over them, then each override. Checked
    against the schema (see the module docstring); raises :class:`ConfigError` naming the key and the file
    line or override it came from."""
    config: dict = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = find_config(path)
        config, sources = _read_yaml(path)
    for override in overrides:
        apply_override(config, override, check=False)
        dotted = override.split("=", 1)[0].strip()
        sources = {k: v for k, v in sources.items() if not k.startswith(dotted + ".")}
        sources[dotted] = f"override {override}"
    return validate_config(config, sources)
