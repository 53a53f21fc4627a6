"""A timm-like model registry: ``create_model(name, pretrained=path, **overrides)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if name in _MODELS and _MODELS[name] is not factory:
        raise ValueError(f"a different model is already registered as {name!r}")
    _MODELS[name] = factory
    return factory


def list_models(pattern: str = "") -> list[str]:
    import internvideo_fast.models  # noqa: F401  (registers the model files)

    return sorted(name for name in _MODELS if pattern in name)


def create_model(name: str, pretrained: str | None = None, **overrides) -> nn.Module:
    """Build a registered model with `overrides` of its constructor arguments; `pretrained` loads a
    checkpoint (official VideoMAE / InternVideo formats included) and prints what did not match."""
    import internvideo_fast.models  # noqa: F401

    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](**overrides)
    if pretrained:
        from internvideo_fast.models.checkpoint import load_pretrained

        report = load_pretrained(model, pretrained)
        print(report)
    return model
