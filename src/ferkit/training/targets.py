"""What the loss compares the training faces' logits with: labels, FER+ vote distributions, a teacher's
probabilities (knowledge distillation), or a mix."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ferkit.classes import CLASS_NAMES
from ferkit.config import TrainConfig
from ferkit.data import FerDataset
from ferkit.data.cache import cache_dir
from ferkit.runtime.checkpoint import atomic_save
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.predictor import members_and_weights


def training_targets(
    cfg: TrainConfig, train: FerDataset, labels: torch.Tensor, rank: int = 0, world: int = 1
) -> torch.Tensor:
    """The targets of `train`'s faces, on the device of `labels` (their class indices there): the labels
    themselves, FER+ vote distributions, a share of the votes, and/or a share of the teacher's
    probabilities. Rank 0 runs the teacher; the other processes receive its targets."""
    device = labels.device
    targets = torch.from_numpy(train.soft_labels).to(device) if cfg.soft_labels else labels
    if cfg.ferplus_votes:
        targets = vote_targets(cfg.ferplus_votes, train.labels, train.soft_labels).to(device)
    if cfg.teacher:
        if rank == 0:
            targets = distillation_targets(cfg, train.images, targets)
        else:
            targets = torch.empty(len(train.images), len(CLASS_NAMES))
        targets = targets.to(device)
        if world > 1:
            dist.broadcast(targets, src=0)
    return targets


def teacher_key(teacher: Any, faces: np.ndarray) -> str:
    """A digest of what the teacher's flip-TTA probabilities depend on: each member's architecture,
    preprocessing, weights and vote, and the faces' pixels (not the paths they came from)."""
    h = hashlib.blake2b(b"teacher|flip|", digest_size=16)
    for member, weight in zip(*members_and_weights(teacher), strict=True):
        ck = member.ckpt
        h.update(f"{member.arch}|{ck['input_size']}|{ck['mean']}|{ck['std']}|{weight:.17g}|".encode())
        for name, t in member.model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    h.update(np.ascontiguousarray(faces))
    return h.hexdigest()


def teacher_probabilities(cfg: TrainConfig, faces: np.ndarray) -> torch.Tensor:
    """The teacher's flip-TTA probabilities on `faces`, kept in the cache folder under `teacher_key`: a
    resumed run, or the next student of the same teacher, reads them back instead of running the
    teacher again (see docs/benchmarks.md for how long that takes)."""
    teacher, _ = load_predictor(cfg.teacher, cfg.device)
    file = cache_dir() / f"teacher-{teacher_key(teacher, faces)}.pt"
    with contextlib.suppress(Exception):  # missing or damaged: run the teacher and rewrite the file
        probs = torch.load(file, map_location="cpu", weights_only=True)
        if probs.shape == (len(faces), len(CLASS_NAMES)):
            return probs
    print(f"teacher: {cfg.teacher} on {len(faces)} training faces (flip TTA), once", flush=True)
    probs = torch.from_numpy(teacher.predict(faces, "flip")).float()
    with contextlib.suppress(OSError):  # an unwritable cache only costs time
        atomic_save(probs, file)
    return probs


def distillation_targets(cfg: TrainConfig, faces: np.ndarray, targets: torch.Tensor) -> torch.Tensor:
    """Knowledge distillation with fixed soft targets: `cfg.distill` x the teacher's flip-TTA probabilities
    on the (unaugmented) training faces + the rest x the labels (class indices or FER+ distributions)."""
    probs = teacher_probabilities(cfg, faces)
    targets = targets.cpu()
    labels = F.one_hot(targets, len(CLASS_NAMES)).float() if targets.dim() == 1 else targets.float()
    return cfg.distill * probs + (1 - cfg.distill) * labels


def vote_targets(share: float, labels: np.ndarray, votes: np.ndarray) -> torch.Tensor:
    """`share` x each face's FER+ vote distribution + the rest x its FER2013 label; a face without
    FER+ votes keeps its label."""
    onehot = F.one_hot(torch.from_numpy(labels), len(CLASS_NAMES)).float()
    shares = torch.from_numpy(votes).float()
    return torch.where(shares.sum(1, keepdim=True) > 0, share * shares + (1 - share) * onehot, onehot)
