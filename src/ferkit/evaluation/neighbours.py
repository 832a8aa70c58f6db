"""Nearest neighbours on a model's penultimate features (Georgescu et al. 2019's local learning on top of
networks): each face's `k` most similar Training faces vote, and their vote is blended with the network's.

The features of a face are, for each network of a predictor, the input of its last linear layer (the
classifier's), averaged over the test-time views, L2-normalised, scaled by the square root of the network's
voting weight and concatenated, so that a cosine similarity on them is the weighted mean of the networks'
own cosine similarities. Neighbours come from Training only; `k`, the temperature and the blend are
chosen on PublicTest by `choose_neighbours`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ferkit.data.transforms import to_float
from ferkit.errors import FerkitError
from ferkit.runtime.predictor import CheckpointModel, Predictor, batches, members_and_weights
from ferkit.utils.device import autocast


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last `nn.Linear` in module order: its classifier's output layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FerkitError(f"{type(model).__name__}: no linear classifier layer to take features from")
    return linears[-1]


@torch.no_grad()
def member_features(
    member: CheckpointModel, images: np.ndarray, tta: str = "none", batch_size: int = 512
) -> np.ndarray:
    """(N, D) float32: the input of `member`'s last linear layer for uint8 (N, 48, 48) faces, averaged over
    the `tta` views."""
    model = member.inference_model
    layer = last_linear(model)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].float()))
    device = next(model.parameters()).device
    data = torch.from_numpy(images).to(device)
    out = []
    try:
        for idx in batches(len(data), batch_size, None):
            views = member.transform.views(to_float(data[idx.to(device)]), tta)
            captured.clear()
            with autocast(device, member.dtype):
                for v in views:
                    model(member.transform.prepare(v))
            out.append((sum(captured) / len(captured)).flatten(1).cpu())
    finally:
        hook.remove()
    return torch.cat(out).numpy()


def predictor_features(
    predictor: Predictor, images: np.ndarray, tta: str = "none", batch_size: int = 512
) -> np.ndarray:
    """(N, D) float32 features of every network of `predictor`, each L2-normalised and scaled by the square
    root of its voting weight, side by side: unit rows whose dot products are weighted mean cosines."""
    members, weights = members_and_weights(predictor)
    parts = []
    for member, w in zip(members, weights, strict=True):
        f = member_features(member, images, tta, batch_size)
        parts.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) * np.sqrt(w))
    return np.concatenate(parts, axis=1).astype(np.float32)


def neighbour_probs(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    k: int,
    temperature: float,
    num_classes: int = 7,
    chunk: int = 2048,
) -> np.ndarray:
    """(Q, C) class probabilities from each query's `k` most similar rows of `bank` (cosine; rows are unit
    vectors), each neighbour voting with weight exp(similarity / temperature)."""
    if not 1 <= k <= len(bank):
        raise FerkitError(f"k {k}: must be between 1 and the {len(bank)} faces of the neighbour bank")
    if temperature <= 0:
        raise FerkitError(f"temperature {temperature}: must be above 0")
    bank_t = torch.from_numpy(bank)
    labels_t = torch.from_numpy(bank_labels.astype(np.int64))
    out = []
    for start in range(0, len(queries), chunk):
        sims = torch.from_numpy(queries[start : start + chunk]) @ bank_t.T
        top, idx = sims.topk(k, dim=1)
        votes = torch.softmax(top / temperature, dim=1)
        probs = torch.zeros(len(sims), num_classes).scatter_add_(1, labels_t[idx], votes)
        out.append(probs)
    return torch.cat(out).double().numpy()


def blend(net_probs: np.ndarray, knn_probs: np.ndarray, share: float) -> np.ndarray:
    """The network's probabilities with a `share` (0 to 1) of them replaced by the neighbours' vote."""
    return (1.0 - share) * net_probs + share * knn_probs


@dataclass(frozen=True)
class NeighbourSetting:
    """One setting of the neighbour vote and its accuracy on the split it was scored on."""

    k: int
    temperature: float
    share: float
    accuracy: float


def score_settings(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    net_probs: np.ndarray,
    ks: Sequence[int] = (5, 10, 20, 50, 100, 200),
    temperatures: Sequence[float] = (0.01, 0.02, 0.05, 0.1),
    shares: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0),
) -> list[NeighbourSetting]:
    """The accuracy on `queries` of every (k, temperature, share); share 0 is the network alone."""
    found = []
    for k in ks:
        for t in temperatures:
            knn = neighbour_probs(bank, bank_labels, queries, k, t)
            for s in shares:
                acc = float((blend(net_probs, knn, s).argmax(1) == query_labels).mean())
                found.append(NeighbourSetting(k, t, s, acc))
    return found


def choose_neighbours(settings: Sequence[NeighbourSetting]) -> NeighbourSetting:
    """The most accurate setting; on a tie the smaller share, then the smaller k (the simpler model)."""
    return max(settings, key=lambda s: (s.accuracy, -s.share, -s.k))
