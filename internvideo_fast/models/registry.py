"""A timm-like model registry: ``create_model(name, pretrained=path, **overrides)``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from torch import nn

from internvideo_fast.errors import UserError

class UnknownModelError(UserError, ValueError):
    """A model name that is not registered."""


_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if name in _MODELS and _MODELS[name] is not factory:
        raise ValueError(f"a different model is already registered as {name!r}")
    _MODELS[name] = factory
    return factory


def list_models(pattern: str = "") -> list[str]:
    import internvideo_fast.models  # noqa: F401  (registers the model files)

    return sorted(name for name in _MODELS if pattern in name)


def create_model(name: str, pretrained: str | os.PathLike | None = None, strict: bool = True,
                 **overrides) -> nn.Module:
    """Build a registered model with `overrides` of its constructor arguments.

    `pretrained` is the path of a checkpoint (official VideoMAE / UniFormerV2 / InternVideo layouts included;
    hub downloads, ``pretrained=True``, are not supported): it loads strictly (a key that does not fit is a
    :class:`~internvideo_fast.errors.CheckpointError` listing the keys) unless ``strict=False``, and the
    one-line report of what loaded and of the expected differences is printed. A factory that takes
    ``strict`` itself (``internvideo_mm_*_release``) receives it."""
    import internvideo_fast.models  # noqa: F401

    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}", hint=f"registered: {', '.join(sorted(_MODELS))}")
    wants_checkpoint = pretrained is True or bool(pretrained)  # None, False and "" load nothing
    if wants_checkpoint:
        from internvideo_fast.models.checkpoint import check_checkpoint_path

        check_checkpoint_path(pretrained)  # before building: `True` or a wrong type fails at once
    factory = _MODELS[name]
    if "strict" in inspect.signature(factory).parameters:
        overrides["strict"] = strict
    model = factory(**overrides)
    if wants_checkpoint:
        from internvideo_fast.models.checkpoint import load_pretrained

        print(load_pretrained(model, pretrained, strict=strict))
    return model
