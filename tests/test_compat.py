"""Files written by earlier ferkit versions keep loading and predict exactly as they did.

The fixtures in tests/fixtures were written by ferkit at commit 565a522 (before the layered layout): a tiny
cnn checkpoint, an ensemble spec over it, 8 generated faces and the probabilities that version computed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ferkit.runtime.loading import load_predictor

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture()
def fixtures(tmp_path: Path) -> Path:
    """A copy, so that nothing a test does can touch the committed files."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "fixtures"))


def test_old_checkpoint_predicts_as_before(fixtures: Path) -> None:
    predictor, tta = load_predictor(fixtures / "tiny_cnn.pth", "cpu")
    faces = np.load(fixtures / "faces.npy")
    assert tta == "none"
    np.testing.assert_allclose(
        predictor.predict(faces), np.load(fixtures / "tiny_cnn_probs.npy"), rtol=0, atol=1e-6
    )


def test_old_ensemble_spec_predicts_as_before(fixtures: Path) -> None:
    predictor, tta = load_predictor(fixtures / "tiny_ensemble.json", "cpu")
    faces = np.load(fixtures / "faces.npy")
    assert tta == "flip" and len(predictor.members) == 2
    np.testing.assert_allclose(predictor.weights / predictor.weights.sum(), [0.25, 0.75])
    np.testing.assert_allclose(
        predictor.predict(faces, tta), np.load(fixtures / "tiny_ensemble_probs_flip.npy"), rtol=0, atol=1e-6
    )


def test_shipped_models_load() -> None:
    """The model cards inside the package, by name."""
    for name in ("ferkit-fer2013", "ferkit-fer2013-fast"):
        predictor, tta = load_predictor(name, "cpu")
        probs = predictor.predict(np.full((2, 48, 48), 128, np.uint8), tta)
        assert probs.shape == (2, 7)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
