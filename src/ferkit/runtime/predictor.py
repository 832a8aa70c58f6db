"""Predict class probabilities for uint8 faces: one checkpoint or a weighted ensemble, with optional
test-time augmentation (`BatchTransform.views`; never mixed with single-crop numbers)."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse

from ferkit.classes import CLASS_NAMES
from ferkit.data.transforms import BatchTransform, to_float
from ferkit.errors import FerkitError
from ferkit.runtime.checkpoint import check_payload, crop_size_of, load_checkpoint, model_from_checkpoint
from ferkit.utils.device import autocast


def batches(
    n: int, batch_size: int, generator: torch.Generator | None, rank: int = 0, world: int = 1, limit: int = 0
) -> Iterator[torch.Tensor]:
    """Index batches: shuffled (with `generator`) and sharded across processes, or in order."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if world > 1:
        per_rank = n // world  # equal counts, so every process runs the same number of steps
        order = order[rank * per_rank : (rank + 1) * per_rank]
    count = len(order) // batch_size if generator is not None else math.ceil(len(order) / batch_size)
    if limit:
        count = min(count, limit)
    for i in range(count):
        yield order[i * batch_size : (i + 1) * batch_size]


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    transform: BatchTransform,
    batch_size: int,
    dtype: torch.dtype | None = None,
    limit: int = 0,
    tta: str = "none",
) -> torch.Tensor:
    """Softmax probabilities (float32, CPU) for uint8 faces, in order; the TTA views `transform` makes
    (crops for a crop model) averaged."""
    model.eval()
    out = []
    for idx in batches(len(images), batch_size, None, limit=limit):
        views = transform.views(to_float(images[idx.to(images.device)]), tta)
        with autocast(images.device, dtype):
            probs = sum(model(transform.prepare(v)).float().softmax(1) for v in views)
        out.append((probs / len(views)).cpu())
    return torch.cat(out)


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
        check_payload(ckpt, source)
        if list(ckpt["class_names"]) != list(CLASS_NAMES):
            raise FerkitError(
                f"{source}: model classes {ckpt['class_names']} do not match FER2013's {list(CLASS_NAMES)}"
            )
        model = model_from_checkpoint(ckpt, source).to(device)
        size, mean, std = tuple(ckpt["input_size"]), tuple(ckpt["mean"]), tuple(ckpt["std"])
        tf = BatchTransform(size, mean, std, crop_size=crop_size_of(ckpt))
        return cls(source, ckpt["arch"], model, tf, ckpt)

    @cached_property
    def inference_model(self) -> nn.Module:
        """`model` for inference: each BatchNorm folded into the convolution before it (the same function
        to float rounding, and faster), channels-last memory on CPU. `model` itself is kept
        as trained (its state_dict is what `ferkit ship` writes)."""
        fused = fuse(self.model.eval())
        device = next(fused.parameters()).device
        return fused.to(memory_format=torch.channels_last) if device.type == "cpu" else fused

    def predict(self, images: np.ndarray, tta: str = "none", batch_size: int = 512) -> np.ndarray:
        """Probabilities (N, 7) in the order of `images` (uint8 N x 48 x 48), under `dtype` autocast.

        FerkitError when they are not finite (weights that overflow, a damaged file): never NaN votes.
        """
        model = self.inference_model
        data = torch.from_numpy(images).to(next(model.parameters()).device)
        probs = predict_probs(model, data, self.transform, batch_size, self.dtype, tta=tta).double().numpy()
        if not np.isfinite(probs).all():
            raise FerkitError(
                f"{self.path}: the model gives probabilities that are not finite (damaged weights?)"
            )
        return probs


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


def voting_weights(values: list[Any], source: str) -> np.ndarray:
    """Members' voting weights as a file gives them: finite numbers >= 0 with a positive, finite sum (else
    the ensemble would vote NaN or negative probabilities); FerkitError naming `source` otherwise."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    w = np.array(values if numbers else [math.nan], np.float64)
    if not (np.isfinite(w).all() and (w >= 0).all() and 0 < w.sum() < math.inf):
        raise FerkitError(
            f"{source}: member weights {reprlib.repr(values)} are not numbers >= 0 with a positive sum"
        )
    return w


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
