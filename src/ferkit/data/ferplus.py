"""FER+ relabelling (Microsoft FERPlus `fer2013new.csv`): 10 annotator votes per FER2013 row."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ferkit.classes import NUM_CLASSES
from ferkit.data.csv_reader import read_bytes
from ferkit.data.dataset import FerDataset
from ferkit.errors import FerkitError

FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "nf")  # fmt: skip
MAX_VOTES = 1000  # per emotion and row: FER+ asked 10 annotators
# FER+ vote column -> FER2013 label (contempt, unknown and not-a-face have none).
FERPLUS_TO_FER2013 = {0: 6, 1: 3, 2: 5, 3: 4, 4: 0, 5: 1, 6: 2}


def read_votes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Votes (N, 10) in FER+ column order and the Usage of each row."""
    lines = [ln.rstrip(b"\r") for ln in read_bytes(path).split(b"\n") if ln.strip()]
    if not lines:
        raise FerkitError(f"{path}: file is empty")
    header = [c.strip().lower() for c in lines[0].decode("utf-8", "replace").split(",")]
    expected = ["usage", "image name", *FERPLUS_COLUMNS]
    if header != expected:
        raise FerkitError(
            f"{path}: not a FER+ file: columns {','.join(header)}, expected {','.join(expected)}"
        )
    votes = np.zeros((len(lines) - 1, len(FERPLUS_COLUMNS)), np.int64)
    usage = []
    for i, line in enumerate(lines[1:]):
        fields = line.decode("utf-8", "replace").split(",")
        try:
            votes[i] = [int(v) for v in fields[2:]]
            if votes[i].min() < 0 or votes[i].max() > MAX_VOTES:  # sums of huge votes would overflow
                raise ValueError
        except (ValueError, OverflowError):
            raise FerkitError(
                f"{path}: line {i + 2}: votes must be integers 0-{MAX_VOTES}: "
                f"{line[:80].decode('utf-8', 'replace')!r}"
            ) from None
        usage.append(fields[0].strip())
    return votes, np.asarray(usage)


def majority_and_distribution(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FER+ majority labels in FER2013 numbering and 7-class vote distributions.

    As in Barsoum et al. 2016: single votes are outliers and dropped; a label needs more than half
    of the remaining votes. Rows whose majority is contempt, unknown or not-a-face, or that have no
    majority, get label -1 (dropped from training and evaluation).
    """
    v = np.where(votes <= 1, 0, votes)
    total = v.sum(1)
    top = v.argmax(1)
    has_majority = v.max(1) * 2 > total
    to_fer = np.full(len(FERPLUS_COLUMNS), -1)
    for src, dst in FERPLUS_TO_FER2013.items():
        to_fer[src] = dst
    labels = np.where(has_majority & (total > 0), to_fer[top], -1)
    dist = np.zeros((len(votes), NUM_CLASSES), np.float32)
    for src, dst in FERPLUS_TO_FER2013.items():
        dist[:, dst] = v[:, src]
    sums = dist.sum(1, keepdims=True)
    dist = np.divide(dist, sums, out=np.zeros_like(dist), where=sums > 0)
    return labels.astype(np.int64), dist


def votes_of(ds: FerDataset, path: Path) -> np.ndarray:
    """The FER+ votes of each row of `ds` (the full FER2013 rows, checked by Usage)."""
    votes, usage = read_votes(path)
    if ds.indices.max(initial=-1) >= len(votes) or ds.splits[0] == "test":
        raise FerkitError(
            f"{path}: FER+ labels need the full fer2013.csv (or icml_face_data.csv) rows; "
            f"{ds.source} does not match its {len(votes)} rows"
        )
    mismatch = np.flatnonzero(usage[ds.indices] != ds.splits)
    if mismatch.size:
        i = mismatch[0]
        raise FerkitError(
            f"{path}: line {ds.indices[i] + 2}: Usage {str(usage[ds.indices[i]])!r} does not match "
            f"{ds.source} ({str(ds.splits[i])!r}): not the FER+ file of this data"
        )
    return votes[ds.indices]


def apply_ferplus(ds: FerDataset, path: Path) -> FerDataset:
    """The same images with FER+ majority labels and vote distributions as soft labels."""
    labels, dist = majority_and_distribution(votes_of(ds, path))
    dropped = int((labels < 0).sum())
    return replace(
        ds,
        labels=labels,
        soft_labels=dist,
        notes=[
            *ds.notes,
            f"FER+ labels from {path}: {dropped} rows without a FER2013-class majority dropped",
        ],
    )


def attach_votes(ds: FerDataset, path: Path) -> FerDataset:
    """The FER2013 labels kept, FER+ vote distributions attached as soft labels (all-zero rows: no votes)."""
    _, dist = majority_and_distribution(votes_of(ds, path))
    missing = int((dist.sum(1) == 0).sum())
    return replace(
        ds,
        soft_labels=dist,
        notes=[*ds.notes, f"FER+ vote distributions from {path}: {missing} rows have none"],
    )
