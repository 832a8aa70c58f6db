"""What each ensemble member adds (issue 27 section 1): every network's PublicTest accuracy, how often
each pair disagrees, and the ensemble's PublicTest accuracy as members are added greedily (each step
adds the member that raises PublicTest most, with voting weights fitted on PublicTest).

    FERKIT_DATA=../shared/data/fer2013.csv.gz python bench/members.py [MODEL ...] [--tta flip] [--max_mb 20]

MODEL: a checkpoint, run folder (its best.pth), ensemble spec, model card or shipped name; an ensemble
or card stands for each of its networks. Default: the shipped ensemble's networks. `--max_mb` keeps the
greedy sets within a shipped model's size (int8: a megabyte per million parameters); several caps give a
greedy table each from the same predictions. `--sets 0,1,2 0,1,4` also scores the named sets (numbers
from the first table), to compare candidate ensembles from one set of predictions. PrivateTest is only
reported, never used to choose.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from ferkit.data import load_dataset
from ferkit.errors import FerkitError
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.predictor import combine, fit_weights, members_and_weights


def networks(models: list[str]) -> list[tuple[str, object]]:
    """(label, CheckpointModel) for every network the models hold."""
    found = []
    for model in models:
        path = Path(model) / "best.pth" if Path(model).is_dir() else model
        members, _ = members_and_weights(load_predictor(str(path), "cpu")[0])
        name = Path(model).name if Path(model).is_dir() else Path(str(model)).stem
        for i, m in enumerate(members):
            found.append((f"{name}#{i} {m.arch}" if len(members) > 1 else f"{name} {m.arch}", m))
    return found


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def int8_mb(model: object) -> float:
    """Megabytes of a network's int8 weights: one byte a parameter."""
    return sum(p.numel() for p in model.model.parameters()) / 1e6


def greedy(
    probs: list[np.ndarray], labels: np.ndarray, sizes: list[float], max_mb: float = float("inf")
) -> list[tuple[list[int], np.ndarray, float]]:
    """Forward selection: (chosen members, their fitted weights, PublicTest accuracy) after each step,
    among the members that keep the set's int8 `sizes` within `max_mb`."""
    chosen: list[int] = []
    steps = []
    while True:
        room = max_mb - sum(sizes[j] for j in chosen)
        candidates = [i for i in range(len(probs)) if i not in chosen and sizes[i] <= room]
        if not candidates:
            return steps
        best = None
        for i in candidates:
            trial = [*chosen, i]
            w, acc = fitted_vote(probs, labels, trial)
            if best is None or acc > best[2]:
                best = (trial, w, acc)
        chosen = best[0]
        steps.append(best)


def fitted_vote(probs: list[np.ndarray], labels: np.ndarray, chosen: list[int]) -> tuple[np.ndarray, float]:
    """The `chosen` members' voting weights fitted on these (PublicTest) predictions, and their accuracy."""
    w = fit_weights([probs[j] for j in chosen], labels) if len(chosen) > 1 else np.ones(1)
    w = w / w.sum()
    return w, accuracy(combine([probs[j] for j in chosen], w), labels)


def parse_set(text: str, count: int) -> list[int]:
    """'0,2,5' -> [0, 2, 5]: network numbers of the first table, each once."""
    try:
        chosen = [int(x) for x in text.split(",")]
    except ValueError:
        raise FerkitError(
            f"--sets {text}: expected network numbers separated by commas, like 0,1,4"
        ) from None
    if len(set(chosen)) != len(chosen) or not all(0 <= i < count for i in chosen):
        raise FerkitError(f"--sets {text}: each number once, from 0 to {count - 1}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["ferkit-fer2013"])
    parser.add_argument("--tta", default="flip", choices=("none", "flip", "tencrop"))
    parser.add_argument("--data", default=os.environ.get("FERKIT_DATA", ""))
    parser.add_argument(
        "--max_mb", type=float, nargs="+", default=[float("inf")], help="size caps, int8 MB (inf: none)"
    )
    parser.add_argument("--sets", nargs="+", default=[], help="sets to score as well, like 0,1,2 0,1,4")
    args = parser.parse_args()
    ds = load_dataset(args.data)
    public, private = ds.split("PublicTest", True), ds.split("PrivateTest", True)
    nets = networks(args.models)
    sizes = [int8_mb(m) for _, m in nets]
    sets = [parse_set(text, len(nets)) for text in args.sets]
    for cap in args.max_mb:
        if not cap >= min(sizes):  # before minutes of predictions; also catches nan
            raise FerkitError(f"--max_mb {cap:g}: no network fits, the smallest takes {min(sizes):.1f} MB")
    pub = [m.predict(public.images, args.tta) for _, m in nets]
    priv = [m.predict(private.images, args.tta) for _, m in nets]
    print(f"models: {' '.join(args.models)}; tta {args.tta}; load average {os.getloadavg()[0]:.1f}\n")
    print("| # | network | int8 MB | PublicTest |\n|---:|---|---:|---:|")
    for i, ((label, _), p) in enumerate(zip(nets, pub, strict=True)):
        print(f"| {i} | {label} | {sizes[i]:.1f} | {accuracy(p, public.labels):.2%} |")
    preds = [p.argmax(1) for p in pub]
    print("\nPairwise disagreement on PublicTest (share of faces the two label differently):\n")
    print("| | " + " | ".join(str(j) for j in range(len(nets))) + " |")
    print("|---|" + "---:|" * len(nets))
    for i in range(len(nets)):
        cells = [f"{(preds[i] != preds[j]).mean():.1%}" if j != i else "-" for j in range(len(nets))]
        print(f"| {i} | " + " | ".join(cells) + " |")
    for cap in args.max_mb:
        print_greedy(pub, priv, public.labels, private.labels, sizes, cap)
    if sets:
        print("\nNamed sets (weights fitted on PublicTest):\n")
        print_sets(
            [(chosen, *fitted_vote(pub, public.labels, chosen)) for chosen in sets],
            priv,
            private.labels,
            sizes,
        )


def print_greedy(
    pub: list[np.ndarray],
    priv: list[np.ndarray],
    pub_labels: np.ndarray,
    priv_labels: np.ndarray,
    sizes: list[float],
    cap: float,
) -> None:
    """The greedy table under one size cap; PrivateTest only reported for the sets PublicTest chose."""
    within = f", at most {cap:g} MB" if cap != float("inf") else ""
    print(f"\nGreedy addition (weights fitted on PublicTest{within}):\n")
    print_sets(greedy(pub, pub_labels, sizes, cap), priv, priv_labels, sizes)


def print_sets(
    scored: list[tuple[list[int], np.ndarray, float]],
    priv: list[np.ndarray],
    priv_labels: np.ndarray,
    sizes: list[float],
) -> None:
    """One table row per (members, fitted weights, PublicTest accuracy); PrivateTest only reported."""
    print("| members | weights | int8 MB | PublicTest | PrivateTest |\n|---|---|---:|---:|---:|")
    for chosen, w, acc in scored:
        priv_acc = accuracy(combine([priv[j] for j in chosen], w), priv_labels)
        names, weights = ", ".join(map(str, chosen)), ", ".join(f"{x:.2f}" for x in w)
        mb = sum(sizes[j] for j in chosen)
        print(f"| {names} | {weights} | {mb:.1f} | {acc:.2%} | {priv_acc:.2%} |")


if __name__ == "__main__":
    try:
        main()
    except FerkitError as e:  # a bad model, data or option: one line
        sys.exit(f"members: error: {e}")
