"""Parsed datasets cached on disk, keyed by the source's content, so the next load is instant."""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ferkit.data.dataset import FerDataset
from ferkit.utils.io import atomic_write

CACHE_VERSION = "1"
FIELDS = ("images", "labels", "splits", "indices")
SOURCE = "{source}"  # stands for the source path in cached notes (the key is the content, not the path)


def cache_dir() -> Path:
    """`$FERKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/ferkit`, else `~/.cache/ferkit`."""
    if env := os.environ.get("FERKIT_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ferkit"


def source_key(path: Path, options: str) -> str:
    """A digest of a file's bytes, or of a folder's file names, sizes and times, plus reader options."""
    h = hashlib.blake2b(f"{CACHE_VERSION}|{options}|".encode(), digest_size=16)
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            st = f.stat()
            h.update(f"{f.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    else:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def cached(path: Path, options: str, build: Callable[[], FerDataset]) -> FerDataset:
    """Load the dataset for `path` from the cache, or build it and store it (atomically)."""
    file = cache_dir() / f"{source_key(path, options)}.npz"
    if file.exists():
        try:
            with np.load(file, allow_pickle=False) as z:
                soft = z.get("soft_labels")
                notes = [n.replace(SOURCE, str(path)) for n in z["notes"].tolist()]
                return FerDataset(**{k: z[k] for k in FIELDS}, source=str(path), soft_labels=soft,
                                  notes=notes)  # fmt: skip
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache entry is rebuilt below
    ds = build()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        notes = [n.replace(str(path), SOURCE) for n in ds.notes]  # same bytes elsewhere: name that file
        arrays = {k: getattr(ds, k) for k in FIELDS} | {"notes": np.asarray(notes, dtype=str)}
        if ds.soft_labels is not None:
            arrays["soft_labels"] = ds.soft_labels
        with atomic_write(file, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError:
        pass  # an unwritable cache only costs speed
    return ds
