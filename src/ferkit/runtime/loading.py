"""Load whatever names a model: a checkpoint, an ensemble spec, a model card, a shipped model's name, or an
exported ONNX file; and write ensemble specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferkit.classes import BACKENDS
from ferkit.errors import FerkitError
from ferkit.runtime.model_card import SHIPPED_CARD, is_model_card, model_from_card, shipped_models
from ferkit.runtime.onnx import load_onnx_predictor
from ferkit.runtime.predictor import CheckpointModel, Predictor, flatten, members_and_weights, voting_weights
from ferkit.utils.device import autocast_dtype, select_device
from ferkit.utils.paths import exists, is_file

ENSEMBLE_FORMAT = "ferkit-ensemble"


def save_ensemble_spec(
    path: Path, member_paths: list[str], weights: np.ndarray, tta: str, fitted_on: str
) -> None:
    """A JSON spec that `evaluate`, `predict` and `export` accept wherever a checkpoint is. Members are
    files (stored relative to the spec's folder when inside it) or shipped models' names (kept as names,
    so the spec outlives a reinstall)."""
    base = path.resolve().parent
    members = []
    for m, w in zip(member_paths, weights, strict=True):
        if is_shipped_name(m):
            members.append({"path": m, "weight": float(w)})
            continue
        p = Path(m).resolve()
        rel = p.relative_to(base) if p.is_relative_to(base) else p
        members.append({"path": str(rel), "weight": float(w)})
    spec = {"format": ENSEMBLE_FORMAT, "members": members, "tta": tta, "weights_fitted_on": fitted_on}
    path.write_text(json.dumps(spec, indent=2) + "\n")


def read_model_json(path: Path) -> dict[str, Any]:
    """The JSON object of an ensemble spec or model card; FerkitError naming the file otherwise."""
    if not is_file(path):
        raise FerkitError(f"{path}: model file not found")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON, a 5000-digit int
        raise FerkitError(f"{path}: not a readable JSON model file ({e.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise FerkitError(f"{path}: neither a ferkit ensemble spec nor a model card")
    return obj


def ensemble_spec_members(spec: dict[str, Any], path: Path) -> tuple[list[str], np.ndarray, str]:
    """Member paths (resolved against the spec's folder), weights and default TTA of a saved spec."""
    if spec.get("format") != ENSEMBLE_FORMAT:
        raise FerkitError(
            f"{path}: neither a ferkit ensemble spec nor a model card (no 'format: {ENSEMBLE_FORMAT}')"
        )
    members = spec.get("members") or []
    if not members:
        raise FerkitError(f"{path}: the ensemble has no members")
    if not isinstance(members, list) or not all(
        isinstance(m, dict)
        and isinstance(m.get("path"), str)
        and m["path"].strip()
        and "\x00" not in m["path"]
        for m in members
    ):
        raise FerkitError(
            f'{path}: members must be a list of {{"path": file or shipped model, "weight": number}}'
        )
    weights = voting_weights([m.get("weight", 1.0) for m in members], str(path))
    paths = [
        m["path"] if is_shipped_name(m["path"]) else str((path.parent / m["path"]).resolve()) for m in members
    ]
    return paths, weights, spec.get("tta", "none")


def is_ensemble_spec(path: str | Path) -> bool:
    return str(path).endswith(".json")


def split_member(path: str | Path) -> tuple[str, int | None]:
    """`MODEL#N` names the network N (from 0) of an ensemble, spec or model card, e.g. `ferkit-fer2013#0`:
    (MODEL, N); any other path, or a file whose name holds a '#': (path, None)."""
    base, sep, index = str(path).rpartition("#")
    if not sep or not index.isdigit() or not base or exists(path):
        return str(path), None
    return base, int(index)


def _names_a_file(path: str | Path) -> bool:
    """A path that exists or has a suffix is a file; otherwise it may be a shipped model's name."""
    return exists(path) or bool(Path(path).suffix)


def is_shipped_name(path: str | Path) -> bool:
    """Whether `path` names a model shipped with ferkit (or one of its networks, `NAME#N`), not a file."""
    base = split_member(path)[0]
    return not _names_a_file(base) and base in shipped_models()


def resolve_model_path(path: str | None) -> str:
    """The model a command uses: `path`; the card of a model shipped with ferkit when `path` is its name
    (`ferkit-fer2013`, `ferkit-fer2013-fast`) rather than a file; None: the default shipped model. A
    network of an ensemble (`MODEL#N`) keeps its number."""
    base, index = split_member(path) if path else (path, None)
    if index is not None:
        return f"{resolve_model_path(base)}#{index}"
    if path:
        if _names_a_file(path):
            return str(path)
        shipped = shipped_models()
        if path not in shipped:
            raise FerkitError(f"{path}: neither a model file nor a shipped model ({', '.join(shipped)})")
        return str(shipped[path])
    if not SHIPPED_CARD.is_file():
        raise FerkitError(
            f"the shipped model is missing from this install ({SHIPPED_CARD}): pass --model_path"
        )
    return str(SHIPPED_CARD)


def load_predictor(path: str | Path, device: str = "auto", precision: str = "fp32") -> tuple[Predictor, str]:
    """A checkpoint (.pth), an ensemble spec or a model card (.json), or a shipped model's name, and its
    default TTA. An ensemble whose members are themselves ensembles or cards comes back flattened.
    `precision` fp32 (exact, what model cards report), bf16 or fp16 (autocast: faster, slightly different)."""
    dev = select_device(device)
    dtype = autocast_dtype(precision, dev)
    predictor, tta = _load(path, dev, ())
    for m in members_and_weights(predictor)[0]:
        m.dtype = dtype
    return predictor, tta


def _load(path: str | Path, device: torch.device, parents: tuple[Path, ...]) -> tuple[Predictor, str]:
    base, index = split_member(path)
    if index is not None:
        networks = members_and_weights(_load(base, device, parents)[0])[0]
        if index >= len(networks):
            raise FerkitError(
                f"{base} holds {len(networks)} network(s), numbered 0 to {len(networks) - 1}: not #{index}"
            )
        return networks[index], "none"
    path = resolve_model_path(str(path))
    if not is_ensemble_spec(path):
        return CheckpointModel.load(path, device), "none"
    p = Path(path)
    spec = read_model_json(p)
    if is_model_card(spec):
        return model_from_card(spec, p, device)
    paths, weights, tta = ensemble_spec_members(spec, p)
    if p.resolve() in parents:
        raise FerkitError(f"{p}: the ensemble contains itself")
    parts = [_load(m, device, (*parents, p.resolve()))[0] for m in paths]
    return flatten(parts, weights), tta


def load_model(
    model_path: str | None, backend: str = "torch", device: str = "auto", precision: str = "fp32"
) -> tuple[Any, str, str]:
    """The predictor for `model_path`, its default TTA and the path it came from: a checkpoint (.pth),
    ensemble spec or model card with `backend` "torch" (None: the shipped model, whose card's path is
    returned), or an exported `.onnx` with "onnx" (ONNX Runtime, CPU).
    """
    if backend not in BACKENDS:
        raise FerkitError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "onnx":
        if precision != "fp32":
            raise FerkitError(f"--precision {precision} is for --backend torch (ONNX Runtime runs float32)")
        if not model_path:
            raise FerkitError("--backend onnx needs --model_path MODEL.onnx (written by `ferkit export`)")
        if Path(model_path).suffix.lower() != ".onnx":
            raise FerkitError(f"{model_path}: --backend onnx takes an .onnx file written by `ferkit export`")
        return *load_onnx_predictor(model_path), model_path
    path = resolve_model_path(model_path)
    if Path(path).suffix.lower() == ".onnx":
        raise FerkitError(f"{path}: an ONNX model: pass --backend onnx")
    return *load_predictor(path, device, precision), path
