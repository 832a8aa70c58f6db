"""A labelled PNG grid of sample faces per class: a picture to look at rather than a table to read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferkit.classes import CLASS_NAMES
from ferkit.data.dataset import FerDataset
from ferkit.errors import FerkitError


def save_grid(
    ds: FerDataset, out: Path, per_class: int = 8, seed: int = 0, scale: int = 2, split: str = "all"
) -> Path:
    """One row per class with `per_class` random faces of `split` ("all": every split), class name and
    count on the left."""
    from ferkit.utils.plot import save_figure, subplots

    if per_class < 1:
        raise FerkitError(f"--per-class {per_class}: must be at least 1")
    if split != "all":
        ds = ds.split(split)
    rng = np.random.default_rng(seed)
    fig, axes = subplots(
        len(CLASS_NAMES),
        per_class,
        figsize=(per_class * 0.6 * scale, len(CLASS_NAMES) * 0.66 * scale),
        squeeze=False,
    )
    for label, name in enumerate(CLASS_NAMES):
        rows = np.flatnonzero(ds.labels == label)
        chosen = rng.choice(rows, size=min(per_class, len(rows)), replace=False) if len(rows) else []
        for k, ax in enumerate(axes[label]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if k < len(chosen):
                ax.imshow(ds.images[chosen[k]], cmap="gray", vmin=0, vmax=255)
        axes[label][0].set_ylabel(f"{name}\n({len(rows)})", rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{Path(ds.source).name}: {len(ds)} faces", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)
