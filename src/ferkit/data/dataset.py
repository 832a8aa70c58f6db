"""The one in-memory dataset type every FER2013 reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ferkit.classes import CLASS_NAMES, NUM_CLASSES
from ferkit.errors import FerkitError


@dataclass
class FerDataset:
    """FER2013 images with labels, official splits and source row numbers.

    images: uint8 (N, 48, 48); labels: int64 (N,), -1 where unlabelled;
    splits: str (N,) of Training / PublicTest / PrivateTest / test;
    indices: int64 (N,), the row (0-based, header excluded) or file number in the source;
    soft_labels: optional float32 (N, 7) label distributions (FER+ votes), rows sum to 1.
    """

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    indices: np.ndarray
    source: str = ""
    soft_labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.shape[1:] != (48, 48) or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, 48, 48), got {self.images.dtype} {self.images.shape}")
        for name in ("labels", "splits", "indices"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, images has {n}")
        if self.soft_labels is not None and self.soft_labels.shape != (n, NUM_CLASSES):
            raise ValueError(f"soft_labels must be ({n}, {NUM_CLASSES}), got {self.soft_labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def split_names(self) -> list[str]:
        """The splits present, in their official order."""
        present = set(np.unique(self.splits).tolist())
        return [s for s in ("Training", "PublicTest", "PrivateTest", "test") if s in present]

    def select(self, mask: np.ndarray) -> FerDataset:
        """The rows where `mask` (bool array or index array) is set."""
        return FerDataset(
            images=self.images[mask],
            labels=self.labels[mask],
            splits=self.splits[mask],
            indices=self.indices[mask],
            source=self.source,
            soft_labels=None if self.soft_labels is None else self.soft_labels[mask],
            notes=list(self.notes),
        )

    def split(self, name: str, labelled_only: bool = False) -> FerDataset:
        """Rows of one split (`all` for every row); `labelled_only` drops rows with label -1."""
        mask = np.ones(len(self), bool) if name == "all" else self.splits == name
        if labelled_only:
            mask &= self.labels >= 0
        if not mask.any():
            have = ", ".join(self.split_names()) or "none"
            kind = "labelled rows" if labelled_only else "rows"
            raise FerkitError(f"{self.source}: no {kind} in split {name!r} (splits present: {have})")
        return self.select(mask)
