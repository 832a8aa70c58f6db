"""Model registry: builders register under their function name; `create_model` builds by name."""

import inspect
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ferkit.classes import NUM_CLASSES
from ferkit.errors import FerkitError
from ferkit.models.pretrained import load_pretrained

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {}


def register_model(fn: Builder) -> Builder:
    """Register a builder under ``fn.__name__``.

    A builder takes keyword-only ``num_classes, in_chans, drop_rate, pretrained`` (a bool: whether weights
    will be loaded) plus its own arch kwargs, and returns a module with ``default_cfg`` set. A builder with
    arch kwargs stores their resolved values in ``model.model_args``.
    """
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    num_classes: int = NUM_CLASSES,
    in_chans: int = 1,
    pretrained: bool | str | Path = False,
    drop_rate: float = 0.0,
    **kwargs,
) -> nn.Module:
    """Build model ``name``; ``pretrained`` is True (ImageNet weights: `load_pretrained`) or a local file.

    The model gets ``arch`` (its name), ``default_cfg`` (input_size, mean, std, ...) and ``model_args``,
    the kwargs that rebuild it with ``create_model(arch, **model_args)``.
    """
    if name not in _REGISTRY:
        raise FerkitError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if num_classes < 1 or in_chans < 1 or not 0.0 <= drop_rate < 1.0:
        raise FerkitError(
            f"model {name!r} needs num_classes >= 1, in_chans >= 1 and 0 <= drop_rate < 1, "
            f"got {num_classes}, {in_chans} and {drop_rate}"
        )
    builder = _REGISTRY[name]
    args = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    try:
        inspect.signature(builder).bind(**args, pretrained=bool(pretrained), **kwargs)
    except TypeError as err:
        raise FerkitError(f"model {name!r}: {err}") from err
    model = builder(**args, pretrained=bool(pretrained), **kwargs)
    model.arch = name
    model.model_args = {**args, **getattr(model, "model_args", {})}
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def describe_models() -> list[dict]:
    """One dict per model (name, params for 7 classes and 1 channel, input_size, mean, std), for the CLI."""
    rows = []
    for name in list_models():
        with torch.device("meta"):  # counts parameters without allocating them
            model = create_model(name)
        cfg = model.default_cfg
        rows.append(
            {
                "name": name,
                "params": sum(p.numel() for p in model.parameters()),
                "input_size": list(cfg["input_size"]),
                "mean": list(cfg["mean"]),
                "std": list(cfg["std"]),
            }
        )
    return rows
