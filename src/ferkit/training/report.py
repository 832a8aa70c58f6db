"""What a run prints and reports: its first line, one line per epoch, the best checkpoint on PublicTest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ferkit.classes import CLASS_NAMES
from ferkit.metrics import classification_report
from ferkit.runtime.checkpoint import load_checkpoint, model_from_checkpoint
from ferkit.runtime.predictor import predict_probs
from ferkit.tracking import Tracker
from ferkit.training.setup import Run
from ferkit.utils.io import atomic_copy


def start_line(run: Run) -> str:
    return (
        f"training {run.cfg.model} on {len(run.data.train)} images ({run.device}, {run.dtype or 'fp32'}, "
        f"{run.world} process{'es' if run.world > 1 else ''}), validating on {len(run.data.val)} PublicTest; "
        f"run folder {run.out}"
    )


def epoch_line(run: Run, row: dict[str, Any], size: tuple[int, int], improved: bool) -> str:
    """An epoch's metrics (a row of metrics.csv), trained at image `size`."""
    return (
        f"epoch {row['epoch']}/{run.cfg.epochs}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}{' *' if improved else ''}  "
        f"lr {row['lr']:.2e}  {row['time']:.1f}s ({row['images_per_s']:.0f} img/s"
        f"{f' at {size[0]}x{size[1]}' if run.cfg.progressive_resize else ''})"
    )


def copy_best(best: Path, target: str) -> None:
    """Atomically copy the best checkpoint to the seed's models/best_model.pth (or another path)."""
    if not target:
        return
    atomic_copy(best, target)


def final_report(run: Run, tracker: Tracker) -> dict[str, Any]:
    """The best checkpoint on PublicTest: confusion matrix, sample predictions, model artifact."""
    val, val_images = run.data.val, run.data.val_images
    best = model_from_checkpoint(load_checkpoint(run.best), str(run.best)).to(val_images.device)
    probs = predict_probs(
        best, val_images, run.eval_tf, run.cfg.eval_batch_size, None, run.cfg.limit_batches
    ).numpy()  # fp32, as evaluate
    labels = val.labels[: len(probs)]
    report = classification_report(labels, probs, CLASS_NAMES)
    tracker.log_confusion_matrix(labels, probs.argmax(1), CLASS_NAMES, title="val_confusion_matrix")
    sample = np.linspace(0, len(probs) - 1, min(64, len(probs))).astype(int)
    tracker.log_predictions(val.images[sample], labels[sample], probs[sample], CLASS_NAMES)
    tracker.log_model(run.best, aliases=("best", "latest"), metadata={"val_acc": report["accuracy"]})
    return {
        "val_acc_fp32": report["accuracy"],
        "val_macro_f1": report["macro_f1"],
        "val_ece": report["ece"],
        "val_confusion_matrix": report["confusion_matrix"],
    }
