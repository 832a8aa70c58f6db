"""What is in a dataset: per-split class counts, image statistics, duplicates, class weights."""

from __future__ import annotations

import numpy as np

from ferkit.classes import CLASS_NAMES, NUM_CLASSES
from ferkit.data.dataset import FerDataset
from ferkit.errors import FerkitError


def class_counts(labels: np.ndarray) -> np.ndarray:
    """Count of each of the 7 classes (unlabelled -1 rows ignored)."""
    return np.bincount(labels[labels >= 0], minlength=NUM_CLASSES)


def duplicate_stats(images: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Exact-duplicate images: rows repeating an earlier image, and groups whose labels disagree."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1)).view(np.dtype((np.void, images[0].size)))
    _, first, inverse, counts = np.unique(
        flat.ravel(), return_index=True, return_inverse=True, return_counts=True
    )
    groups = np.flatnonzero(counts > 1)
    in_group = np.isin(inverse, groups)
    conflicting = 0
    if in_group.any():
        g, lab = inverse[in_group], labels[in_group]
        pairs = np.unique(np.stack([g, lab], 1), axis=0)
        conflicting = int((np.bincount(pairs[:, 0]) > 1).sum())
    return {
        "duplicate_rows": int(len(images) - len(first)),
        "duplicate_groups": int(len(groups)),
        "groups_with_conflicting_labels": conflicting,
    }


def dataset_info(ds: FerDataset) -> dict:
    """Counts per split and class, image/label summary and duplicates, as a JSON-ready dict."""
    splits = {}
    for name in ds.split_names():
        labels = ds.labels[ds.splits == name]
        counts = class_counts(labels)
        splits[name] = {
            "total": int(len(labels)),
            "unlabelled": int((labels < 0).sum()),
            "classes": {c: int(n) for c, n in zip(CLASS_NAMES, counts, strict=True)},
        }
    pixels = ds.images.astype(np.float32) / 255.0
    return {
        "source": ds.source,
        "total": len(ds),
        "splits": splits,
        "classes": {c: int(n) for c, n in zip(CLASS_NAMES, class_counts(ds.labels), strict=True)},
        "images": {
            "shape": [48, 48],
            "dtype": "uint8",
            "mean": round(float(pixels.mean()), 4),
            "std": round(float(pixels.std()), 4),
            "blank": int((ds.images.reshape(len(ds), -1).std(1) == 0).sum()),
        },
        "labels": {"labelled": int((ds.labels >= 0).sum()), "unlabelled": int((ds.labels < 0).sum())},
        "duplicates": duplicate_stats(ds.images, ds.labels),
        "notes": list(ds.notes),
    }


def class_weights(labels: np.ndarray, method: str = "inverse", beta: float = 0.999) -> np.ndarray:
    """Per-class loss weights, normalised to mean 1 over the classes.

    inverse: n_total / (K * n_c); effective: (1 - beta) / (1 - beta^n_c) (Cui et al. 2019);
    none: all ones. A class absent from `labels` gets weight 0 (it cannot be learnt).
    """
    counts = class_counts(labels).astype(np.float64)
    if method == "none":
        return np.ones(NUM_CLASSES, np.float32)
    if method == "inverse":
        w = np.divide(counts.sum(), NUM_CLASSES * counts, out=np.zeros_like(counts), where=counts > 0)
    elif method == "effective":
        if not 0.0 < beta < 1.0:
            raise FerkitError(f"class-weight beta {beta}: must be between 0 and 1")
        w = np.divide(1.0 - beta, 1.0 - beta**counts, out=np.zeros_like(counts), where=counts > 0)
    else:
        raise FerkitError(f"class weights {method!r}: expected none, inverse or effective")
    present = w > 0
    w[present] *= present.sum() / w[present].sum()
    return w.astype(np.float32)
