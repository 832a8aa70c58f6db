"""Predict class probabilities for uint8 faces: one checkpoint or a weighted ensemble, with optional
test-time augmentation (`ferkit.data.transforms.tta_views`; never mixed with single-crop numbers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse

from ferkit.checkpoint import load_checkpoint, model_from_checkpoint
from ferkit.classes import CLASS_NAMES
from ferkit.data.transforms import BatchTransform
from ferkit.engine import autocast_dtype, predict_probs, select_device
from ferkit.errors import FerkitError

ENSEMBLE_FORMAT = "ferkit-ensemble"


@dataclass
class CheckpointModel:
    """A model rebuilt from a checkpoint with the preprocessing it was trained with."""

    path: str
    arch: str
    model: nn.Module
    transform: BatchTransform
    ckpt: dict[str, Any]
    dtype: torch.dtype | None = None  # autocast dtype of `predict` (None: fp32)

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> CheckpointModel:
        return cls.from_payload(load_checkpoint(path), str(path), device)

    @classmethod
    def from_payload(cls, ckpt: dict[str, Any], source: str, device: torch.device) -> CheckpointModel:
        """The model a checkpoint dict (`ferkit.checkpoint.model_payload`) describes; `source` names it."""
        if list(ckpt["class_names"]) != list(CLASS_NAMES):
            raise FerkitError(
                f"{source}: model classes {ckpt['class_names']} do not match FER2013's {list(CLASS_NAMES)}"
            )
        model = model_from_checkpoint(ckpt, source).to(device)
        tf = BatchTransform(tuple(ckpt["input_size"]), tuple(ckpt["mean"]), tuple(ckpt["std"]))
        return cls(source, ckpt["arch"], model, tf, ckpt)

    @cached_property
    def inference_model(self) -> nn.Module:
        """`model` for inference: each BatchNorm folded into the convolution before it (the same function
        to float rounding, 1.4-2.4x faster on CPU), channels-last memory on CPU. `model` itself is kept
        as trained (its state_dict is what `ferkit ship` writes)."""
        fused = fuse(self.model.eval())
        device = next(fused.parameters()).device
        return fused.to(memory_format=torch.channels_last) if device.type == "cpu" else fused

    def predict(self, images: np.ndarray, tta: str = "none", batch_size: int = 512) -> np.ndarray:
        """Probabilities (N, 7) in the order of `images` (uint8 N x 48 x 48), under `dtype` autocast."""
        model = self.inference_model
        data = torch.from_numpy(images).to(next(model.parameters()).device)
        return predict_probs(model, data, self.transform, batch_size, self.dtype, tta=tta).double().numpy()


@dataclass
class Ensemble:
    """Soft voting: weighted mean of member probabilities (members may differ in architecture, input size)."""

    members: list[CheckpointModel]
    weights: np.ndarray

    @property
    def arch(self) -> str:
        return f"ensemble({', '.join(m.arch for m in self.members)})"

    def predict_members(
        self, images: np.ndarray, tta: str = "none", batch_size: int = 512
    ) -> list[np.ndarray]:
        """Each member's probabilities on the same faces."""
        return [m.predict(images, tta, batch_size) for m in self.members]

    def predict(self, images: np.ndarray, tta: str = "none", batch_size: int = 512) -> np.ndarray:
        return combine(self.predict_members(images, tta, batch_size), self.weights)


Predictor = CheckpointModel | Ensemble


def members_and_weights(predictor: Predictor) -> tuple[list[CheckpointModel], np.ndarray]:
    """The networks a predictor runs (an ensemble's members, or the one checkpoint) and their voting
    weights, normalised to sum to 1."""
    if isinstance(predictor, Ensemble):
        w = np.asarray(predictor.weights, np.float64)
        return predictor.members, w / w.sum()
    return [predictor], np.ones(1)


def flatten(parts: list[Predictor], weights: np.ndarray) -> Ensemble:
    """One ensemble of checkpoints that votes as `parts` weighted by `weights` do: a part that is itself an
    ensemble hands its share to its members in proportion to their weights (soft voting is linear, so the
    probabilities are the same)."""
    w = np.asarray(weights, np.float64)
    members: list[CheckpointModel] = []
    shares: list[float] = []
    for part, share in zip(parts, w / w.sum(), strict=True):
        if isinstance(part, Ensemble):
            members += part.members
            shares += list(share * part.weights / part.weights.sum())
        else:
            members.append(part)
            shares.append(float(share))
    return Ensemble(members, np.array(shares))


def combine(member_probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Weighted mean of probability arrays; weights are normalised to sum to 1."""
    w = np.asarray(weights, np.float64)
    return np.tensordot(w / w.sum(), np.stack(member_probs), axes=1)


def fit_weights(member_probs: list[np.ndarray], labels: np.ndarray, steps: int = 300) -> np.ndarray:
    """Member weights (on the simplex) that minimise the NLL of the combined PublicTest probabilities.

    Callers pass PublicTest predictions only: ensemble weights are a choice, and no choice reads PrivateTest.
    """
    p = torch.from_numpy(np.stack(member_probs))  # (M, N, C)
    y = torch.from_numpy(np.asarray(labels, np.int64))
    logits = torch.zeros(len(member_probs), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(steps):
        w = logits.softmax(0)
        mixed = torch.tensordot(w, p, dims=1)
        loss = F.nll_loss(mixed.clamp_min(1e-12).log(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logits.softmax(0).detach().numpy()


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
    if not path.is_file():
        raise FerkitError(f"{path}: model file not found")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
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
    paths = [
        m["path"] if is_shipped_name(m["path"]) else str((path.parent / m["path"]).resolve()) for m in members
    ]
    return paths, np.array([float(m.get("weight", 1.0)) for m in members]), spec.get("tta", "none")


def is_ensemble_spec(path: str | Path) -> bool:
    return str(path).endswith(".json")


def _names_a_file(path: str | Path) -> bool:
    """A path that exists or has a suffix is a file; otherwise it may be a shipped model's name."""
    return Path(path).exists() or bool(Path(path).suffix)


def is_shipped_name(path: str | Path) -> bool:
    """Whether `path` names a model shipped with ferkit rather than a file."""
    from ferkit.model_card import shipped_models

    return not _names_a_file(path) and str(path) in shipped_models()


def resolve_model_path(path: str | None) -> str:
    """The model a command uses: `path`; the card of a model shipped with ferkit when `path` is its name
    (`ferkit-fer2013`, `ferkit-fer2013-fast`) rather than a file; None: the default shipped model."""
    from ferkit.model_card import SHIPPED_CARD, shipped_models

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
    path = resolve_model_path(str(path))
    if not is_ensemble_spec(path):
        return CheckpointModel.load(path, device), "none"
    from ferkit.model_card import is_model_card, model_from_card

    p = Path(path)
    spec = read_model_json(p)
    if is_model_card(spec):
        return model_from_card(spec, p, device)
    paths, weights, tta = ensemble_spec_members(spec, p)
    if p.resolve() in parents:
        raise FerkitError(f"{p}: the ensemble contains itself")
    parts = [_load(m, device, (*parents, p.resolve()))[0] for m in paths]
    return flatten(parts, weights), tta
