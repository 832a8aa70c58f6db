"""bench/members.py's choices on generated predictions: greedy selection takes the member that adds most,
named sets are scored with weights fitted on the same predictions, and a bad --sets is one clear error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ferkit.errors import FerkitError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ferkit_bench_members", ROOT / "bench" / "members.py")
members = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(members)


def votes(pred: np.ndarray, right: np.ndarray, sure: float, unsure: float) -> np.ndarray:
    """Probabilities that put `sure` on each face's predicted class where `right`, `unsure` elsewhere."""
    confidence = np.where(right, sure, unsure)
    probs = np.repeat(((1 - confidence) / 6)[:, None], 7, axis=1)
    probs[np.arange(len(pred)), pred] = confidence
    return probs


@pytest.fixture
def three_members() -> tuple[list[np.ndarray], np.ndarray]:
    """200 faces. Member 0 is right on the first 160 and hesitant where wrong; member 1 copies it; member 2
    is right on the last 160, sure where right and barely committed where wrong: 0 and 2 together get all."""
    labels = np.random.default_rng(0).integers(0, 7, 200)
    index = np.arange(200)
    first_right, third_right = index < 160, index >= 40
    first = np.where(first_right, labels, (labels + 1) % 7)
    third = np.where(third_right, labels, (labels + 2) % 7)
    probs = [votes(first, first_right, 0.9, 0.5)] * 2 + [votes(third, third_right, 0.9, 0.3)]
    return probs, labels


def test_greedy_takes_the_best_then_the_member_that_disagrees(three_members) -> None:
    probs, labels = three_members
    steps = members.greedy(probs, labels, sizes=[1.0, 1.0, 1.0])
    assert steps[0][0] == [0] and steps[0][2] == pytest.approx(0.8)
    assert steps[1][0] == [0, 2]  # the copy of member 0 adds nothing, member 2 fixes its mistakes
    assert steps[1][2] == pytest.approx(1.0)
    assert steps[1][1].sum() == pytest.approx(1.0)


def test_size_cap_leaves_out_what_does_not_fit(three_members) -> None:
    probs, labels = three_members
    steps = members.greedy(probs, labels, sizes=[1.0, 1.0, 5.0], max_mb=2.0)
    assert all(2 not in chosen for chosen, _, _ in steps)


def test_named_set_is_scored_with_weights_fitted_on_its_predictions(three_members) -> None:
    probs, labels = three_members
    weights, acc = members.fitted_vote(probs, labels, [2, 0])
    assert acc == pytest.approx(1.0) and weights.sum() == pytest.approx(1.0) and (weights > 0).all()
    assert members.fitted_vote(probs, labels, [0, 1])[1] == pytest.approx(0.8)  # a copy adds nothing
    weights, acc = members.fitted_vote(probs, labels, [1])
    assert acc == pytest.approx(0.8) and weights.tolist() == [1.0]


@pytest.mark.parametrize("text", ["0,x", "0,0", "0,3", "-1"])
def test_bad_set_is_one_clear_error(text: str) -> None:
    with pytest.raises(FerkitError, match=f"--sets {text}"):
        members.parse_set(text, 3)
    assert members.parse_set("2,0", 3) == [2, 0]
