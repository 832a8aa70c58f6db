"""The evaluation report: figures exist and are not blank, summary.md, mistake selection, bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit.classes import CLASS_NAMES, NUM_CLASSES
from ferkit.errors import FerkitError
from ferkit.evaluation.report import most_confident_mistakes, write_report
from ferkit.metrics import calibration_bins, classification_report

FIGURES = ("confusion_matrix.png", "per_class.png", "reliability.png", "mistakes.png")
# 30 faces, labels cycling 0..6; (row, predicted class, confidence) of every mistake; other rows right at 0.9
MISTAKES = [(7, 3, 0.55), (14, 3, 0.8), (21, 2, 0.7), (1, 0, 0.6), (8, 0, 0.6), (2, 5, 0.95)]


def confident(pred: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Probabilities with `conf` on `pred` and the rest spread evenly."""
    probs = np.repeat(((1 - conf) / (NUM_CLASSES - 1))[:, None], NUM_CLASSES, 1)
    probs[np.arange(len(pred)), pred] = conf
    return probs


@pytest.fixture
def case() -> dict:
    labels = np.arange(30) % NUM_CLASSES
    pred, conf = labels.copy(), np.full(30, 0.9)
    for row, p, c in MISTAKES:
        pred[row], conf[row] = p, c
    rng = np.random.default_rng(0)
    return {
        "probs": confident(pred, conf),
        "labels": labels,
        "images": rng.integers(0, 256, (30, 48, 48), dtype=np.uint8),
        "indices": np.arange(30) * 10 + 5,
    }


def write(out: Path, case: dict, **kw) -> Path:
    report = classification_report(case["labels"], case["probs"], CLASS_NAMES)
    return write_report(
        out, report, case["probs"], case["labels"], case["images"], case["indices"], CLASS_NAMES, "test", **kw
    )


def test_most_confident_mistakes_per_class_in_confidence_order(case: dict) -> None:
    probs, labels = case["probs"], case["labels"]
    # Angry: rows 14 (0.8), 21 (0.7), 7 (0.55); Disgust: 1 and 8 tie at 0.6 (row order); Fear: 2; rest none
    assert most_confident_mistakes(probs, labels, 2).tolist() == [14, 21, 1, 8, 2]
    assert most_confident_mistakes(probs, labels, 6).tolist() == [14, 21, 7, 1, 8, 2]
    assert most_confident_mistakes(probs, labels, 0).tolist() == []


def test_no_mistakes_at_all(case: dict, tmp_path: Path) -> None:
    case["probs"] = confident(case["labels"], np.full(30, 0.9))
    assert most_confident_mistakes(case["probs"], case["labels"], 6).size == 0
    assert (write(tmp_path, case, k=2).parent / "mistakes.png").is_file()


def test_report_writes_figures_and_summary(case: dict, tmp_path: Path) -> None:
    out = tmp_path / "new" / "report"
    summary = write(out, case)
    assert summary == out / "summary.md"
    for name in FIGURES:
        img = np.asarray(Image.open(out / name).convert("L"), np.float64)
        assert min(img.shape) > 300, name
        assert img.std() > 10 and (img < 100).mean() > 0.002, f"{name} looks blank"
    text = summary.read_text()
    report = classification_report(case["labels"], case["probs"], CLASS_NAMES)
    assert report["accuracy"] == pytest.approx(24 / 30)
    assert "# test" in text and f"accuracy: {report['accuracy']:.2%}" in text and "80.00%" in text
    assert f"macro-F1: {report['macro_f1']:.4f}" in text and f"ECE: {report['ece']:.4f}" in text
    for name in FIGURES:
        assert f"]({name})" in text, name
    assert "| Angry | 2 | 0 | 1 | 2 | 0 | 0 | 0 |" in text  # confusion matrix row: 5 Angry faces
    assert "| Neutral | 1.000 | 1.000 | 1.000 | 4 |" in text  # per-class row of a class without mistakes


def test_calibration_bins_give_the_metrics_ece(case: dict) -> None:
    """The reliability diagram's bins are the ones ferkit.metrics computes ECE from."""
    b = calibration_bins(case["probs"], case["labels"])
    seen = b["count"] > 0
    gap = np.abs(b["confidence"][seen] - b["accuracy"][seen]) * b["count"][seen]
    ece = classification_report(case["labels"], case["probs"], CLASS_NAMES)["ece"]
    assert gap.sum() / b["count"].sum() == pytest.approx(ece)
    assert b["count"].sum() == 30 and len(b["edges"]) == 16


def test_unwritable_folder_is_a_ferkit_error(case: dict, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FerkitError, match=str(blocker / "report")):
        write(blocker / "report", case)
