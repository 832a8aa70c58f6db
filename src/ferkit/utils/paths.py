"""Default locations of run folders."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


def timestamped_run_dir(name: str) -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<name>: the default folder of a train or evaluate run."""
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"
