"""Checkpoints as plain dicts: written atomically, read with `weights_only=True`, never pickled modules."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferkit.errors import FerkitError
from ferkit.models import create_model
from ferkit.utils.io import atomic_write
from ferkit.version import __version__

FORMAT = "ferkit-checkpoint"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save, atomically (`ferkit.utils.io.atomic_write`): a crash never leaves half a file."""
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)


def model_payload(model: nn.Module, class_names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """What rebuilds a model from the file alone: architecture, arguments, input cfg, classes, weights."""
    cfg = model.default_cfg
    return {
        "format": FORMAT,
        "ferkit_version": __version__,
        "arch": model.arch,
        "model_args": dict(model.model_args),
        "input_size": list(cfg["input_size"]),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "class_names": list(class_names),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ferkit checkpoint safely; FerkitError for missing, truncated, foreign or code-carrying files."""
    p = Path(path)
    if not p.is_file():
        raise FerkitError(f"{p}: checkpoint not found")
    with p.open("rb") as fh:
        head = fh.read(4)
    if not head.startswith((b"PK", b"\x80")):  # torch's zip format, or a legacy pickle
        raise FerkitError(f"{p}: not a PyTorch checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FerkitError(
            f"{p}: refused: it holds Python objects, not only weights (loading could run code)"
        ) from None
    except Exception as e:  # torch raises many types for damaged files
        raise FerkitError(
            f"{p}: not a readable PyTorch checkpoint (truncated or corrupt: {e.__class__.__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FerkitError(f"{p}: not a ferkit checkpoint (no 'format: {FORMAT}' entry)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    model = create_model(ckpt["arch"], **ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise FerkitError(
            f"{source}: weights do not fit a {ckpt['arch']} ({str(e).splitlines()[0][:160]})"
        ) from None
    return model.eval()
