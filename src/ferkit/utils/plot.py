"""Matplotlib figures without pyplot's global state, written with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferkit.errors import FerkitError


def subplots(
    nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kwargs: Any
) -> Any:
    """`plt.subplots` without pyplot: a standalone Figure (no global backend switch, thread-safe)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write `fig` to `path` and close it; FerkitError naming the file when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        raise FerkitError(f"{path}: cannot write the figure ({e.strerror or e})") from None
    return path
