"""The Training and PublicTest splits on the training device: all faces as uint8, batches are index
tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferkit.config import TrainConfig
from ferkit.data import FerDataset, class_weights, load_dataset
from ferkit.errors import FerkitError
from ferkit.training.targets import training_targets


@dataclass(frozen=True)
class Splits:
    """Training faces with their labels and targets, and PublicTest faces (labels on the CPU, where
    evaluation compares them), on the device; `loss_weight`: the class weights of the loss, if any."""

    train: FerDataset
    val: FerDataset
    train_images: torch.Tensor
    train_labels: torch.Tensor
    train_targets: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    loss_weight: torch.Tensor | None


def load_splits(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> Splits:
    """Read the data `cfg` names; a FerkitError when it has no labelled PublicTest rows to validate on."""
    ds = load_dataset(
        cfg.data or None,
        skip_bad_rows=cfg.skip_bad_rows,
        labels=cfg.labels,
        ferplus=cfg.ferplus or None,
        votes=cfg.ferplus_votes > 0,
    )
    train = ds.split("Training", labelled_only=True)
    try:
        val = ds.split("PublicTest", labelled_only=True)
    except FerkitError:
        raise FerkitError(
            f"{ds.source}: no labelled PublicTest rows; validation (checkpoint choice) needs them"
        ) from None
    train_labels = torch.from_numpy(train.labels).to(device)
    weights = class_weights(train.labels, cfg.class_weights)
    return Splits(
        train=train,
        val=val,
        train_images=torch.from_numpy(train.images).to(device),
        train_labels=train_labels,
        train_targets=training_targets(cfg, train, train_labels, rank, world),
        val_images=torch.from_numpy(val.images).to(device),
        val_labels=torch.from_numpy(val.labels),
        loss_weight=None if cfg.class_weights == "none" else torch.from_numpy(weights).to(device),
    )
