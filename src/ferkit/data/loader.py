"""Find FER2013 wherever the user keeps it and load it, in any of its forms, through the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ferkit.data.archive import is_archive, read_archive
from ferkit.data.cache import cached
from ferkit.data.csv_reader import FOLDER_CSVS, read_csv
from ferkit.data.dataset import FerDataset
from ferkit.data.ferplus import apply_ferplus, attach_votes
from ferkit.data.folder_reader import read_image_folders
from ferkit.errors import FerkitError

DEFAULT_CANDIDATES = ("data/fer2013.csv", "data/fer2013.csv.gz")
# Inside a folder, the forms that hold every split come first.
HOW_TO_GET = (
    "pass --data PATH, set FERKIT_DATA, or put fer2013.csv in ./data "
    "(`ferkit data download --out data` fetches it from Kaggle)"
)


def resolve_data_path(path: str | Path | None = None) -> Path:
    """`path`, else `$FERKIT_DATA`, else ./data/fer2013.csv[.gz]; a clear error when none exists."""
    given = path or os.environ.get("FERKIT_DATA")
    if given:
        p = Path(given).expanduser()
        if not p.exists():
            origin = "" if path else " (from FERKIT_DATA)"
            raise FerkitError(f"{p}{origin}: no such file or folder")
        return p
    for candidate in DEFAULT_CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate)
    raise FerkitError(f"no FER2013 data found: {HOW_TO_GET}")


def _read(path: Path, skip_bad_rows: bool, archives: bool = True) -> FerDataset:
    """Dispatch on what `path` is: an archive (.tar.gz, .zip, ...: unpacked once into the cache, then read
    as one of the other forms), a CSV (plain or gzip), a Kaggle folder of CSVs, or image folders."""
    if path.is_file():
        if archives and is_archive(path):  # archives=False inside: an archive in an archive is not unpacked
            return read_archive(path, lambda inner: _read(inner, skip_bad_rows, archives=False))
        return read_csv(path, skip_bad_rows)
    for name in FOLDER_CSVS:
        if (path / name).is_file():
            ds = read_csv(path / name, skip_bad_rows)
            if name == "train.csv" and (path / "test.csv").is_file():
                ds = concat(ds, read_csv(path / "test.csv", skip_bad_rows))
            return ds
    return read_image_folders(path, skip_bad_rows)


def concat(a: FerDataset, b: FerDataset) -> FerDataset:
    """Rows of `a` then `b` (train.csv + test.csv); indices stay those of each source file."""
    return FerDataset(
        images=np.concatenate([a.images, b.images]),
        labels=np.concatenate([a.labels, b.labels]),
        splits=np.concatenate([a.splits, b.splits]),
        indices=np.concatenate([a.indices, b.indices]),
        source=f"{a.source} + {b.source}",
        notes=a.notes + b.notes,
    )


def load_dataset(
    path: str | Path | None = None,
    *,
    skip_bad_rows: bool = False,
    labels: str = "fer2013",
    ferplus: str | Path | None = None,
    votes: bool = False,
    cache: bool = True,
) -> FerDataset:
    """Load FER2013 from any of its forms (see `resolve_data_path`), cached by content.

    labels="ferplus" replaces the labels by FER+ majority votes (and sets `soft_labels`); votes=True keeps
    the FER2013 labels and sets `soft_labels` to the FER+ vote distributions. Both read `ferplus`, else
    `$FERKIT_FERPLUS`, else `fer2013new.csv` beside the data.
    """
    src = resolve_data_path(path)
    if not src.is_dir() and not src.is_file():
        raise FerkitError(f"{src}: not a file or folder")
    if cache:
        ds = cached(src, f"skip={skip_bad_rows}", lambda: _read(src, skip_bad_rows))
    else:
        ds = _read(src, skip_bad_rows)
    if labels not in ("fer2013", "ferplus"):
        raise FerkitError(f"--labels {labels!r}: expected fer2013 or ferplus")
    if labels == "fer2013" and not votes:
        return ds
    fp = Path(
        ferplus
        or os.environ.get("FERKIT_FERPLUS")
        or (src if src.is_dir() else src.parent) / "fer2013new.csv"
    )
    if not fp.is_file():
        raise FerkitError(f"{fp}: FER+ labels file not found (pass --ferplus PATH or set FERKIT_FERPLUS)")
    return apply_ferplus(ds, fp) if labels == "ferplus" else attach_votes(ds, fp)
