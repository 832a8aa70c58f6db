"""Nearest neighbours on a model's penultimate features, blended with its own vote (issue 27 section 3).

    FERKIT_DATA=../shared/data/fer2013.csv.gz python bench/knn.py [--model ferkit-fer2013] [--tta flip]

Neighbours come from Training; k, the temperature and the blend share are chosen on PublicTest (the grid
is printed, best first); PrivateTest is reported for the network alone and for the chosen setting, never
read to choose. The features are cached in --out so a rerun costs seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from ferkit.data import load_dataset
from ferkit.errors import FerkitError
from ferkit.evaluation.neighbours import (
    blend,
    choose_neighbours,
    neighbour_probs,
    predictor_features,
    score_settings,
)
from ferkit.runtime.loading import load_model
from ferkit.utils.device import cpu_name

SPLITS = ("Training", "PublicTest", "PrivateTest")


def features(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Features, network probabilities and labels of each split, from the cache when it matches."""
    cache = Path(args.out) / f"{Path(args.model).stem}-{args.tta}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    predictor, _, _ = load_model(args.model, "torch", "cpu", "auto")
    ds = load_dataset(args.data)
    found: dict[str, np.ndarray] = {}
    for split in SPLITS:
        data = ds.split(split, labelled_only=True)
        start = time.perf_counter()
        found[f"{split}_features"] = predictor_features(predictor, data.images, args.tta)
        found[f"{split}_probs"] = predictor.predict(data.images, args.tta)
        found[f"{split}_labels"] = data.labels
        dims = found[f"{split}_features"].shape[1]
        print(f"{split}: {len(data)} faces, {dims}-d features in {time.perf_counter() - start:.0f} s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **found)
    return found


def held_out_gains(f: dict[str, np.ndarray], rounds: int = 5, seed: int = 0) -> list[float]:
    """Accuracy gains over the network alone on one half of PublicTest, the setting chosen on the other
    half (both ways, `rounds` random halvings): the choice's own optimism taken out."""
    bank, bank_labels = f["Training_features"], f["Training_labels"]
    q, labels, probs = f["PublicTest_features"], f["PublicTest_labels"], f["PublicTest_probs"]
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(rounds):
        order = rng.permutation(len(labels))
        halves = order[: len(order) // 2], order[len(order) // 2 :]
        for pick, score in (halves, halves[::-1]):
            best = choose_neighbours(score_settings(bank, bank_labels, q[pick], labels[pick], probs[pick]))
            knn = neighbour_probs(bank, bank_labels, q[score], best.k, best.temperature)
            hits = blend(probs[score], knn, best.share).argmax(1) == labels[score]
            gains.append(float(hits.mean() - (probs[score].argmax(1) == labels[score]).mean()))
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ferkit-fer2013", help="checkpoint, spec, card or shipped name")
    parser.add_argument("--tta", default="flip", choices=("none", "flip", "tencrop"))
    parser.add_argument("--data", default=os.environ.get("FERKIT_DATA", ""))
    parser.add_argument("--out", default="runs/knn", help="folder for the feature cache")
    args = parser.parse_args()
    f = features(args)
    bank, bank_labels = f["Training_features"], f["Training_labels"]
    settings = score_settings(
        bank, bank_labels, f["PublicTest_features"], f["PublicTest_labels"], f["PublicTest_probs"]
    )
    alone = next(s for s in settings if s.share == 0.0)
    best = choose_neighbours(settings)
    print(f"\n{args.model}, tta {args.tta}; CPU {cpu_name()}; load average {os.getloadavg()[0]:.1f}")
    print("\nPublicTest, best settings first:\n")
    print("| k | temperature | share | PublicTest |\n|---:|---:|---:|---:|")
    for s in sorted(settings, key=lambda s: -s.accuracy)[:10]:
        print(f"| {s.k} | {s.temperature} | {s.share} | {s.accuracy:.2%} |")
    knn_only = max((s for s in settings if s.share == 1.0), key=lambda s: s.accuracy)
    alone_at = f"k {knn_only.k}, t {knn_only.temperature}"
    print(f"\nneighbours alone at best ({alone_at}): {knn_only.accuracy:.2%} PublicTest")
    private = f["PrivateTest_labels"]
    knn = neighbour_probs(bank, bank_labels, f["PrivateTest_features"], best.k, best.temperature)
    net_acc = float((f["PrivateTest_probs"].argmax(1) == private).mean())
    blended = float((blend(f["PrivateTest_probs"], knn, best.share).argmax(1) == private).mean())
    chosen = f"chosen: k {best.k}, temperature {best.temperature}, share {best.share}"
    print("\n| | PublicTest | PrivateTest |\n|---|---:|---:|")
    print(f"| network alone | {alone.accuracy:.2%} | {net_acc:.2%} |")
    print(f"| {chosen} | {best.accuracy:.2%} | {blended:.2%} |")
    gains = held_out_gains(f)
    print(
        f"\nchosen on half of PublicTest, scored on the other half ({len(gains)} halves): gain "
        f"{100 * np.mean(gains):+.2f} points (from {100 * min(gains):+.2f} to {100 * max(gains):+.2f})"
    )


if __name__ == "__main__":
    try:
        main()
    except FerkitError as e:  # a bad model, data or option: one line
        sys.exit(f"knn: error: {e}")
