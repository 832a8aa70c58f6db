"""Nearest neighbours on penultimate features: the features are the classifier's input, the vote is right
on separable data, the blend and the choice behave as documented."""

import numpy as np
import pytest
import torch

from ferkit.errors import FerkitError
from ferkit.evaluation.neighbours import (
    NeighbourSetting,
    blend,
    choose_neighbours,
    member_features,
    neighbour_probs,
    predictor_features,
    score_settings,
)
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.predictor import Ensemble


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_member_features_are_the_classifier_input(real_dataset) -> None:
    member, _ = load_predictor("ferkit-fer2013-fast", "cpu")
    faces = real_dataset.split("PublicTest").images[:16]
    got = member_features(member, faces)
    model = member.inference_model.eval()
    x = member.transform.prepare(torch.from_numpy(faces).float().div(255).unsqueeze(1))
    captured = []
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    hook = last.register_forward_hook(lambda _m, i, _o: captured.append(i[0]))
    with torch.no_grad():
        logits = model(x)
    hook.remove()
    assert got.shape == (16, last.in_features)
    np.testing.assert_allclose(got, captured[0].numpy(), rtol=1e-4, atol=1e-4)
    # the features carry the decision: the last layer on them gives the model's logits
    np.testing.assert_allclose(last(torch.from_numpy(got)).detach().numpy(), logits.numpy(), atol=1e-3)
    flipped = member_features(member, faces, "flip")
    assert not np.allclose(flipped, got)  # the mirror view is averaged in


def test_ensemble_features_are_unit_rows_weighted_by_vote(real_dataset) -> None:
    fast, _ = load_predictor("ferkit-fer2013-fast", "cpu")
    faces = real_dataset.split("PublicTest").images[:8]
    pair = Ensemble([fast, fast], np.array([0.75, 0.25]))
    f = predictor_features(pair, faces)
    d = f.shape[1] // 2
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(f[:, :d], axis=1) ** 2, 0.75, atol=1e-5)


def test_neighbour_vote_on_separable_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(7, 32)))
    labels = np.repeat(np.arange(7), 20)
    bank = unit(centres[labels] + 0.05 * rng.normal(size=(140, 32)))
    queries = unit(centres[[3, 5, 0]] + 0.05 * rng.normal(size=(3, 32)))
    probs = neighbour_probs(bank, labels, queries, k=10, temperature=0.1)
    assert probs.shape == (3, 7)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert probs.argmax(1).tolist() == [3, 5, 0]
    one = neighbour_probs(bank, labels, bank[:1], k=1, temperature=0.1)
    assert one[0, labels[0]] == pytest.approx(1.0)  # its own row is its nearest neighbour


@pytest.mark.parametrize(("k", "t"), [(0, 0.1), (141, 0.1), (5, 0.0)])
def test_bad_neighbour_settings_are_one_line_errors(k: int, t: float) -> None:
    bank = unit(np.ones((140, 4)))
    with pytest.raises(FerkitError, match="k |temperature"):
        neighbour_probs(bank, np.zeros(140, int), bank[:2], k=k, temperature=t)


def test_blend_and_choice() -> None:
    net = np.array([[0.6, 0.4], [0.2, 0.8]])
    knn = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(blend(net, knn, 0.0), net)
    np.testing.assert_allclose(blend(net, knn, 0.5), [[0.3, 0.7], [0.6, 0.4]])
    tied = [
        NeighbourSetting(50, 0.1, 0.3, 0.7),
        NeighbourSetting(10, 0.1, 0.3, 0.7),
        NeighbourSetting(5, 0.1, 0.5, 0.7),
    ]
    assert choose_neighbours(tied) == tied[1]  # equal accuracy: the smaller share, then the smaller k
    assert choose_neighbours([*tied, NeighbourSetting(5, 0.1, 1.0, 0.71)]).share == 1.0


def test_score_settings_includes_the_network_alone() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 50)
    bank = unit(rng.normal(size=(50, 8)))
    net = np.eye(7)[labels] * 0.9 + 0.1 / 7  # a network that is always right
    found = score_settings(bank, labels, bank, labels, net, ks=(3,), temperatures=(0.1,), shares=(0.0, 1.0))
    assert [s.share for s in found] == [0.0, 1.0]
    assert found[0].accuracy == 1.0
