"""ferkit: facial expression recognition on FER2013.

The public API lives in `ferkit.api` and is imported on first use of one of its names (PEP 562), so
`import ferkit` stays light: torch loads only when `ferkit.load`, `ferkit.train`, ... are reached.

    import ferkit
    faces = ferkit.load().predict("photo.jpg")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ferkit.version import __version__ as __version__

if TYPE_CHECKING:
    from ferkit.api import (
        FER,
        Face,
        Recognizer,
        create_model,
        evaluate,
        list_models,
        load,
        load_data,
        train,
    )

__all__ = [
    "load",
    "Recognizer",
    "Face",
    "FER",
    "train",
    "evaluate",
    "load_data",
    "create_model",
    "list_models",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("ferkit.api"), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'ferkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
