"""Checkpoints as plain dicts: written atomically, read with `weights_only=True`, never pickled modules."""

from __future__ import annotations

import math
import pickle
import reprlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferkit.data.transforms import FACE_SIZE
from ferkit.errors import FerkitError
from ferkit.models import create_model
from ferkit.utils.io import atomic_write
from ferkit.utils.paths import is_file
from ferkit.version import __version__

FORMAT = "ferkit-checkpoint"
PAYLOAD_KEYS = ("arch", "model_args", "input_size", "mean", "std", "class_names", "model")


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


def crop_size_of(ckpt: dict[str, Any]) -> Any:
    """The side of the crops a model was trained on (the crop recipe; 0: whole faces): a model card
    member's own `crop_size`, else the `crop_size` of the training config a checkpoint holds. Files
    from before the recipe have neither: whole faces."""
    if "crop_size" in ckpt:
        return ckpt["crop_size"]
    config = ckpt.get("config")
    return config.get("crop_size", 0) if isinstance(config, dict) else 0


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ferkit checkpoint safely; FerkitError for missing, truncated, foreign or code-carrying files."""
    p = Path(path)
    if not is_file(p):
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


def _numbers(value: Any, n: int, positive: bool = False) -> bool:
    """Whether `value` is a list of `n` finite (and, with `positive`, > 0) numbers."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and not (positive and any(v <= 0 for v in value))
    )


def _payload_problem(ckpt: dict[str, Any]) -> str:
    """What keeps a checkpoint dict from describing a usable model ('' when nothing does)."""
    missing = [k for k in PAYLOAD_KEYS if k not in ckpt]
    if missing:
        return f"incomplete checkpoint (missing: {', '.join(missing)})"
    args, size, state = ckpt["model_args"], ckpt["input_size"], ckpt["model"]
    if not isinstance(ckpt["arch"], str):
        return f"arch {reprlib.repr(ckpt['arch'])} is not a model name"
    if not isinstance(args, dict) or not all(isinstance(k, str) and k != "pretrained" for k in args):
        return f"model_args {reprlib.repr(args)} are not a model's keyword arguments"
    if not (
        isinstance(size, (list, tuple)) and len(size) == 3 and all(type(v) is int and v > 0 for v in size)
    ):
        return f"input_size {reprlib.repr(size)} is not [channels, height, width]"
    if not (_numbers(ckpt["mean"], size[0]) and _numbers(ckpt["std"], size[0], positive=True)):
        return f"mean and std are not {size[0]} finite numbers each (std above 0)"
    crop = crop_size_of(ckpt)
    if not (type(crop) is int and 0 <= crop < FACE_SIZE):
        return f"crop_size {reprlib.repr(crop)} is not a crop side below {FACE_SIZE} (0: whole faces)"
    if not isinstance(ckpt["class_names"], (list, tuple)):
        return f"class_names {reprlib.repr(ckpt['class_names'])} is not a list"
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()
    ):
        return "its weights are not a mapping of names to tensors"
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), "")
    return f"weight {bad!r} holds NaN or infinite values" if bad else ""


def check_payload(ckpt: dict[str, Any], source: str) -> None:
    """FerkitError naming `source` unless the checkpoint dict (a file's, or a model card member's) has every
    entry a model is rebuilt from, of the right type, with finite weights: a damaged or hostile file is a
    one-line error, never a traceback or NaN probabilities."""
    problem = _payload_problem(ckpt)
    if problem:
        raise FerkitError(f"{source}: {problem}")


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    The model is first built on the meta device (no memory) and its tensor shapes and input size compared
    with the checkpoint's, so arguments that do not build the architecture, or build a model other than the
    weights' (a huge one, say), fail before anything is allocated.
    """
    arch, args = ckpt["arch"], ckpt["model_args"]
    try:
        with torch.device("meta"):
            probe = create_model(arch, **args)
    except (TypeError, ValueError, OverflowError, RuntimeError) as e:
        first = (str(e).splitlines() or [e.__class__.__name__])[0][:160]
        raise FerkitError(
            f"{source}: model_args {reprlib.repr(args)} do not build a {arch} ({first})"
        ) from None
    shapes = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    if shapes != given:
        key = next(k for k in sorted(shapes.keys() | given.keys()) if shapes.get(k) != given.get(k))
        raise FerkitError(
            f"{source}: weights do not fit a {arch} ({key}: {given.get(key)}, expected {shapes.get(key)})"
        )
    if list(probe.default_cfg["input_size"]) != list(ckpt["input_size"]):
        raise FerkitError(
            f"{source}: input_size {list(ckpt['input_size'])} is not a {arch}'s "
            f"({list(probe.default_cfg['input_size'])})"
        )
    model = create_model(arch, **args)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise FerkitError(
            f"{source}: weights do not fit a {ckpt['arch']} ({str(e).splitlines()[0][:160]})"
        ) from None
    return model.eval()
