"""Default locations of run folders, and file tests that a hostile name cannot turn into a traceback."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


def timestamped_run_dir(name: str) -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<name>: the default folder of a train or evaluate run."""
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


def is_file(path: str | Path) -> bool:
    """`Path.is_file()`, False instead of OSError for a name the file system cannot hold (a component over
    255 bytes): such names come from files' content (ensemble members, model cards) as well as from users."""
    try:
        return Path(path).is_file()
    except OSError:
        return False


def exists(path: str | Path) -> bool:
    """`Path.exists()`, False instead of OSError for a name the file system cannot hold."""
    try:
        return Path(path).exists()
    except OSError:
        return False
