"""`ferkit evaluate`, `ship`, `ensemble` and `compare`: measure models and runs on FER2013."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ferkit.cli.options import (
    add_backend,
    add_batch_size,
    add_data_options,
    add_device,
    add_format,
    add_model_path,
    add_output_dir,
    add_precision,
    add_split,
    add_tta,
    add_wandb,
    dataset_from_args,
)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ferkit.evaluation.evaluate import evaluate_model

    report, data, probs = evaluate_model(
        args.model_path,
        dataset_from_args(args),
        args.split,
        args.tta,
        args.batch_size,
        args.device,
        args.precision,
        args.backend,
    )
    return publish_report(args, report, data, probs)


def cmd_ensemble(args: argparse.Namespace) -> int:
    from ferkit.evaluation.evaluate import evaluate_ensemble

    report, data, probs = evaluate_ensemble(
        args.model_paths,
        dataset_from_args(args),
        args.split,
        args.weights,
        args.tta,
        args.batch_size,
        args.device,
        args.save,
        args.precision,
    )
    return publish_report(args, report, data, probs)


def publish_report(args: argparse.Namespace, report: dict[str, Any], data: Any, probs: Any) -> int:
    """Write the outputs the options ask for, then print the report as text or JSON."""
    from ferkit.evaluation.evaluate import format_report, publish

    publish(
        report,
        data,
        probs,
        predictions=args.predictions,
        report_dir=args.report,
        wandb=args.wandb,
        output_dir=args.output_dir,
    )
    print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    from ferkit.shipping.model_card import write_model_card

    output = Path(args.output)
    card = write_model_card(
        args.model_path,
        output,
        dataset_from_args(args),
        args.tta,
        args.command,
        args.name,
        args.batch_size,
        args.weights_dtype,
    )
    print(f"{output} + {card['weights']} ({card['parameters']:,} parameters)")
    for split, acc in card["accuracy"].items():
        print(f"{split}: " + ", ".join(f"tta {mode} {value:.2%}" for mode, value in acc.items()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ferkit.evaluation.compare import compare_table, format_table, plot_curves

    runs = [Path(d) for d in args.run_dirs]
    rows = compare_table(runs, None if args.no_private else lambda: dataset_from_args(args), args.device)
    print(json.dumps(rows, indent=2) if args.format == "json" else format_table(rows))
    if args.plot:
        print(f"validation curves: {plot_curves(runs, Path(args.plot))}", file=sys.stderr)
    return 0


def add_evaluation_options(p: argparse.ArgumentParser) -> None:
    """The data, running and output options `evaluate` and `ensemble` share."""
    add_data_options(p)
    add_split(p, "PrivateTest")
    add_batch_size(p, 512)
    add_device(p)
    add_precision(p)
    add_format(p)
    p.add_argument("--predictions", help="CSV of per-image predictions (index, true, pred, probabilities)")
    p.add_argument(
        "--report", help="folder for the report: confusion matrix, per-class, reliability, mistakes"
    )
    add_wandb(p)
    add_output_dir(p, "folder for the W&B evaluate run (default: --report or runs/<time>-evaluate)")


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate", help="accuracy, per-class metrics, confusion matrix of a checkpoint or ensemble"
    )
    add_model_path(ev)
    add_backend(ev)
    add_tta(ev)
    add_evaluation_options(ev)
    ev.set_defaults(func=cmd_evaluate)


def add_ship_parser(sub: argparse._SubParsersAction) -> None:
    sh = sub.add_parser(
        "ship",
        help="write a model as safetensors + JSON model card, with its accuracy measured on both splits",
    )
    add_model_path(sh, required=True, help="checkpoint or ensemble spec")
    sh.add_argument("--output", required=True, help="model card to write (.json; weights beside it)")
    sh.add_argument("--command", required=True, help="the command that trained the model, for the card")
    add_tta(sh, default="flip", help="default TTA")
    sh.add_argument("--name", default="", help="model name (default: the card's file name)")
    add_batch_size(sh, 512)
    sh.add_argument(
        "--weights_dtype",
        "--weights-dtype",
        choices=["float16", "int8"],
        default="float16",
        help="storage: float16, or int8 convolution/linear weights with a scale per output channel "
        "(a quarter of float32's size; the card's accuracy is measured on what is stored)",
    )
    add_data_options(sh)
    sh.set_defaults(func=cmd_ship)


def add_ensemble_parser(sub: argparse._SubParsersAction) -> None:
    en = sub.add_parser("ensemble", help="soft-voting ensemble of models, each member reported too")
    en.add_argument(
        "--model_paths",
        "--model-paths",
        nargs="+",
        required=True,
        help="models: checkpoints, ensemble specs, model cards or shipped models' names",
    )
    en.add_argument(
        "--weights",
        choices=["uniform", "fit"],
        default="uniform",
        help="member weights: uniform, or fitted on PublicTest (never PrivateTest)",
    )
    add_tta(en, default="none", help="test-time augmentation (default none)")
    en.add_argument("--save", help="write the ensemble spec (.json) for evaluate/predict/export")
    add_evaluation_options(en)
    en.set_defaults(func=cmd_ensemble)


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    cmp = sub.add_parser("compare", help="table and validation curves of several run folders")
    cmp.add_argument("run_dirs", nargs="+", help="run folders written by `ferkit train --output_dir`")
    add_data_options(cmp)
    cmp.add_argument("--plot", default="curves.png", help="PNG of the validation curves ('' to skip)")
    cmp.add_argument(
        "--no-private",
        "--no_private",
        action="store_true",
        help="skip the PrivateTest column (it is reported, never used to choose)",
    )
    add_device(cmp)
    add_format(cmp)
    cmp.set_defaults(func=cmd_compare)
