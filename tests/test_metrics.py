"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from ferkit.metrics import classification_report, confusion_matrix, expected_calibration_error

NAMES = ("a", "b", "c")


def onehot_probs(pred: list[int], conf: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), 3), (1 - conf) / 2)
    p[np.arange(len(pred)), pred] = conf
    return p


def test_hand_computed_case_with_a_class_never_predicted() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = [0, 0, 1, 1, 0, 0]  # class 2 is never predicted
    r = classification_report(y_true, onehot_probs(y_pred), NAMES)
    assert r["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert r["accuracy"] == pytest.approx(3 / 6)
    a, b, c = r["per_class"]["a"], r["per_class"]["b"], r["per_class"]["c"]
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 4), pytest.approx(2 / 3), 3)
    assert a["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert (b["precision"], b["recall"], b["f1"]) == (
        pytest.approx(1 / 2),
        pytest.approx(1 / 2),
        pytest.approx(1 / 2),
    )
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)
    assert r["macro_f1"] == pytest.approx((a["f1"] + 0.5 + 0.0) / 3)
    assert r["num_images"] == 6


def test_macro_f1_skips_classes_absent_from_truth_and_predictions() -> None:
    r = classification_report(np.array([0, 1]), onehot_probs([0, 1]), NAMES)
    assert r["macro_f1"] == 1.0 and r["per_class"]["c"]["support"] == 0


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(np.array([2, 2, 0]), np.array([1, 2, 2]), 3)
    assert cm.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 1]]


def test_expected_calibration_error_by_hand() -> None:
    # two bins used: conf 0.9 (2 images, 1 right) and conf 0.6 (2 images, 2 right)
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.2, 0.2], [0.2, 0.6, 0.2]])
    y = np.array([0, 1, 0, 1])
    expected = (2 / 4) * abs(0.9 - 0.5) + (2 / 4) * abs(0.6 - 1.0)
    assert expected_calibration_error(probs, y) == pytest.approx(expected)
    perfect = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2])) == 0.0
