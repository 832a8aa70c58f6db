"""Accuracy benchmark: train a recipe, evaluate single-crop and TTA, append a row to bench/results.csv.

    python bench/accuracy.py RECIPE [--budget_minutes N] [--output_dir DIR] [--resume]
    python bench/accuracy.py --ensemble NAME MODEL MODEL ... [--weights fit]
    python bench/accuracy.py --table [--update-readme]

RECIPE is a file in configs/ (without .yaml). The run trains on Training, chooses its checkpoint on
PublicTest, and reports PublicTest and PrivateTest accuracy with no TTA, flip and ten-crop TTA. An
ensemble row soft-votes models (a run folder stands for its best.pth; a spec, card or shipped model's name
is one vote), weights uniform or fitted on PublicTest.
PrivateTest is only reported: nothing reads it to choose. A long run survives interruption: rerun the
same command with --resume. The README's accuracy table is generated from bench/results.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from ferkit.classes import CLASS_NAMES
from ferkit.cli import main as ferkit
from ferkit.data import load_dataset
from ferkit.errors import FerkitError
from ferkit.evaluation.evaluate import ensemble_weights, evaluate_model
from ferkit.metrics import classification_report
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.predictor import combine
from ferkit.shipping.model_card import git_commit
from ferkit.utils.device import cpu_has_bf16, cpu_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.csv"
COLUMNS = (
    ["recipe", "commit", "date", "machine", "minutes", "epochs", "best_epoch"]
    + [f"{split}_{tta}" for split in ("public", "private") for tta in ("none", "flip", "tencrop")]
    + ["private_macro_f1", "command"]
)
TABLE_START, TABLE_END = "<!-- accuracy-table:start -->", "<!-- accuracy-table:end -->"
TABLE_PAGE = ROOT / "docs" / "benchmarks.md"  # the page holding the accuracy table between the markers


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{os.cpu_count()}-core {cpu_name()}{' (bf16)' if cpu_has_bf16() else ''}"


TTAS = ("none", "flip", "tencrop")


def accuracies(model_path: str, ds, device: str = "auto") -> dict:
    """PublicTest and PrivateTest accuracy for each TTA mode, and PrivateTest macro-F1 without TTA."""
    row = {}
    for split in ("PublicTest", "PrivateTest"):
        for tta in TTAS:
            report, _, _ = evaluate_model(model_path, ds, split, tta, device=device)
            row.update(columns(split, tta, report))
    return row


def ensemble_accuracies(members: list[str], ds, weights: str, device: str = "auto") -> dict:
    """As `accuracies`, for the soft vote of `members` (one vote each). Each member predicts each split and
    TTA once; the weights are fitted on its PublicTest probabilities for that TTA (never PrivateTest)."""
    predictors = [load_predictor(m, device)[0] for m in members]
    public, private = (ds.split(s, labelled_only=True) for s in ("PublicTest", "PrivateTest"))
    row = {}
    for tta in TTAS:
        public_probs = [m.predict(public.images, tta) for m in predictors]
        w = ensemble_weights(weights, len(members), public_probs, public.labels)
        private_probs = [m.predict(private.images, tta) for m in predictors]
        for split, data, probs in (
            ("PublicTest", public, public_probs),
            ("PrivateTest", private, private_probs),
        ):
            report = classification_report(data.labels, combine(probs, w), CLASS_NAMES)
            row.update(columns(split, tta, report))
        print(f"tta {tta}: weights {np.round(w / w.sum(), 3).tolist()}")
    return row


def columns(split: str, tta: str, report: dict) -> dict:
    """The results.csv cells one (split, TTA) evaluation fills."""
    row = {f"{'public' if split == 'PublicTest' else 'private'}_{tta}": round(report["accuracy"], 4)}
    if split == "PrivateTest" and tta == "none":
        row["private_macro_f1"] = round(report["macro_f1"], 4)
    return row


def append(row: dict) -> None:
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(" ".join(f"{k}={row[k]}" for k in COLUMNS if k != "command"))


def run_row(recipe: str, out: Path, train_args: list[str]) -> dict:
    """The results.csv cells of a finished run folder `out` other than its accuracies; `train_args`: the
    `ferkit train` arguments that trained it (--resume left out of the command)."""
    metrics = list(csv.DictReader((out / "metrics.csv").open()))
    best = max(metrics, key=lambda r: float(r["val_acc"]))
    return {
        "recipe": recipe,
        "commit": git_commit(),
        "date": date.today().isoformat(),
        "machine": machine(),
        "minutes": round(sum(float(r["time"]) for r in metrics) / 60, 1),
        "epochs": len(metrics),
        "best_epoch": best["epoch"],
        "command": "ferkit " + shlex.join(a for a in train_args if a != "--resume"),
    }


def run_recipe(args: argparse.Namespace) -> None:
    out = Path(args.output_dir or ROOT / "runs" / f"bench-{args.recipe}")
    train_args = [
        "train",
        "--config",
        f"configs/{args.recipe}.yaml",
        "--output_dir",
        str(out),
        "--save_best_to",
        "",
        "--no-progress",
    ]
    if args.budget_minutes:
        train_args += ["--time_budget", str(args.budget_minutes)]
    if args.data:
        train_args += ["--data", args.data]
    train_args += args.extra
    if args.resume:
        train_args.append("--resume")
    start = time.time()
    os.chdir(ROOT)
    code = ferkit(train_args)
    if code:
        sys.exit(code)
    row = run_row(args.recipe, out, train_args)
    ds = load_dataset(args.data)
    append(row | accuracies(str(out / "best.pth"), ds))
    print(f"benchmark wall time {(time.time() - start) / 60:.1f} min")


def run_ensemble(args: argparse.Namespace) -> None:
    name, *models = args.ensemble
    members = [str(Path(m) / "best.pth") if Path(m).is_dir() else m for m in models]
    ds = load_dataset(args.data)
    row = ensemble_row(name, members, args.weights)
    append(row | ensemble_accuracies(members, ds, args.weights))


def ensemble_row(name: str, members: list[str], weights: str) -> dict:
    """The results.csv cells of the ensemble row `name` other than its accuracies."""
    return {
        "recipe": name,
        "commit": git_commit(),
        "date": date.today().isoformat(),
        "machine": machine(),
        "minutes": "",
        "epochs": "",
        "best_epoch": "",
        "command": f"ferkit ensemble --weights {weights} --model_paths " + " ".join(members),
    }


def table() -> str:
    """The README's accuracy table, from bench/results.csv."""
    rows = list(csv.DictReader(RESULTS.open()))
    lines = [
        "| recipe | PublicTest | PrivateTest | PrivateTest flip | PrivateTest ten-crop | macro-F1 | epochs "
        "| minutes | machine | commit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {float(r['public_none']):.2%} | {float(r['private_none']):.2%} "
            f"| {float(r['private_flip']):.2%} | {float(r['private_tencrop']):.2%} "
            f"| {float(r['private_macro_f1']):.3f} | {r['epochs']} | {r['minutes']} | {r['machine']} "
            f"| {r['commit']} |"
        )
    lines.append("")
    lines += [f"- `{r['recipe']}`: `{r['command']}`" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", nargs="?", help="a configs/*.yaml name")
    parser.add_argument("--budget_minutes", type=float, default=0, help="wall-time budget (schedule adapts)")
    parser.add_argument("--output_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--data", default=None, help="FER2013 (default $FERKIT_DATA)")
    parser.add_argument(
        "--ensemble",
        nargs="+",
        metavar="NAME MODEL",
        help="NAME, then run folders (their best.pth) or model files",
    )
    parser.add_argument("--weights", choices=["uniform", "fit"], default="fit")
    parser.add_argument("--table", action="store_true", help="print the accuracy table from results.csv")
    parser.add_argument(
        "--update-docs",
        "--update-readme",
        dest="update_docs",
        action="store_true",
        help="with --table: write it into docs/benchmarks.md (--update-readme: the old name)",
    )
    args, args.extra = parser.parse_known_args()
    if args.table:
        text = table()
        if args.update_docs:
            page = TABLE_PAGE.read_text()
            head, rest = page.split(TABLE_START)
            _, tail = rest.split(TABLE_END)
            TABLE_PAGE.write_text(f"{head}{TABLE_START}\n{text}\n{TABLE_END}{tail}")
        print(text)
        return
    if not (args.ensemble or args.recipe):
        parser.error("give a RECIPE, --ensemble NAME RUN_DIR ..., or --table")
    try:
        if args.ensemble:
            run_ensemble(args)
        else:
            run_recipe(args)
    except FerkitError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
