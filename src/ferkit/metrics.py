"""Classification metrics from labels and probabilities: one implementation for every command."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes x num_classes), rows = true class, columns = predicted class."""
    idx = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_metrics(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class (0 where undefined, e.g. a never-predicted class)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    }


def calibration_bins(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Count, mean confidence and accuracy per equal-width confidence bin (NaN in empty bins)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": np.linspace(0.0, 1.0, bins + 1),
            "count": count,
            "confidence": np.bincount(which, conf, bins) / count,
            "accuracy": np.bincount(which, correct, bins) / count,
        }


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE: confidence-vs-accuracy gap averaged over equal-width confidence bins, weighted by count."""
    b = calibration_bins(probs, y_true, bins)
    used = b["count"] > 0
    gap = np.abs(b["confidence"][used] - b["accuracy"][used]) * b["count"][used]
    return float(gap.sum() / max(b["count"].sum(), 1))


def classification_report(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class metrics, confusion matrix and ECE of predicted probabilities."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(1)
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    per_class = per_class_metrics(cm, class_names)
    seen = (cm.sum(0) + cm.sum(1)) > 0  # classes in y_true or y_pred, as sklearn's macro average
    present = [m["f1"] for m, s in zip(per_class.values(), seen, strict=True) if s]
    return {
        "num_images": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.mean(present)) if present else 0.0,
        "ece": expected_calibration_error(probs, y_true),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
