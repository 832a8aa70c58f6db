"""`ferkit` command line: one subcommand per job. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ferkit.errors import FerkitError


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) with a pointer to --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_data_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    """The options every command that reads FER2013 shares."""
    if positional:
        p.add_argument(
            "data", nargs="?", help="FER2013 file or folder (default: $FERKIT_DATA, ./data/fer2013.csv)"
        )
    else:
        p.add_argument("--data", help="FER2013 file or folder (default: $FERKIT_DATA, ./data/fer2013.csv)")
    p.add_argument(
        "--skip-bad-rows", "--skip_bad_rows", action="store_true", help="skip malformed rows, report how many"
    )
    p.add_argument("--labels", choices=["fer2013", "ferplus"], default="fer2013", help="label source")
    p.add_argument("--ferplus", help="FER+ fer2013new.csv (default: $FERKIT_FERPLUS or beside the data)")


def load_from_args(args: argparse.Namespace):
    """Load the dataset the shared data options name."""
    from ferkit.data import load_dataset

    return load_dataset(args.data, skip_bad_rows=args.skip_bad_rows, labels=args.labels, ferplus=args.ferplus)


def cmd_data_info(args: argparse.Namespace) -> int:
    from ferkit.classes import CLASS_NAMES
    from ferkit.data import dataset_info

    info = dataset_info(load_from_args(args))
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['source']}: {info['total']} images, 48x48 grayscale")
    width = max(len(c) for c in CLASS_NAMES)
    print(f"{'split':<12}" + "".join(f"{c:>{width + 2}}" for c in CLASS_NAMES) + f"{'total':>9}")
    for split, s in info["splits"].items():
        counts = "".join(f"{n:>{width + 2}}" for n in s["classes"].values())
        extra = f"  ({s['unlabelled']} unlabelled)" if s["unlabelled"] else ""
        print(f"{split:<12}{counts}{s['total']:>9}{extra}")
    img, dup = info["images"], info["duplicates"]
    print(f"pixels: mean {img['mean']:.4f}, std {img['std']:.4f}; {img['blank']} blank images")
    print(f"labels: {info['labels']['labelled']} labelled, {info['labels']['unlabelled']} unlabelled")
    print(
        f"duplicates: {dup['duplicate_rows']} rows repeat an earlier image "
        f"({dup['duplicate_groups']} groups, "
        f"{dup['groups_with_conflicting_labels']} with conflicting labels)"
    )
    for note in info["notes"]:
        print(f"note: {note}")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from ferkit.data.show import save_grid

    if args.per_class < 1:
        raise FerkitError(f"--per-class {args.per_class}: must be at least 1")
    ds = load_from_args(args)
    if args.split != "all":
        ds = ds.split(args.split)
    print(save_grid(ds, Path(args.out), per_class=args.per_class, seed=args.seed))
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from ferkit.data.download import download

    out = download(Path(args.out), source=args.source)
    print(f"FER2013 downloaded to {out}; use it with --data {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ferkit.models import describe_models

    models = describe_models()
    if args.format == "json":
        print(json.dumps(models, indent=2))
        return 0
    print(f"{'name':<18}{'params':>12}  input")
    for m in models:
        print(f"{m['name']:<18}{m['params']:>12,}  {'x'.join(map(str, m['input_size']))}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ferkit.config import config_from_args
    from ferkit.training.engine import fit

    summary = fit(config_from_args(args))
    if "best_val_acc" in summary and summary.get("best_epoch"):
        print(
            f"best PublicTest accuracy {summary['best_val_acc']:.2%} at epoch {summary['best_epoch']}; "
            f"checkpoints in {summary['output_dir']}"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ferkit.evaluation.evaluate import evaluate_model

    report, data, probs = evaluate_model(
        args.model_path,
        load_from_args(args),
        args.split,
        args.tta,
        args.batch_size,
        args.device,
        args.precision,
        args.backend,
    )
    return publish_report(args, report, data, probs)


def cmd_ship(args: argparse.Namespace) -> int:
    from ferkit.shipping.model_card import write_model_card

    output = Path(args.output)
    if output.suffix != ".json":
        raise FerkitError(f"--output {output}: the model card is a .json file (weights go beside it)")
    card = write_model_card(
        args.model_path,
        output,
        load_from_args(args),
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


def cmd_ensemble(args: argparse.Namespace) -> int:
    from ferkit.evaluation.evaluate import evaluate_ensemble

    report, data, probs = evaluate_ensemble(
        args.model_paths,
        load_from_args(args),
        args.split,
        args.weights,
        args.tta,
        args.batch_size,
        args.device,
        args.save,
        args.precision,
    )
    return publish_report(args, report, data, probs)


def publish_report(args: argparse.Namespace, report: dict, data, probs) -> int:
    """Write the requested outputs, then print the report as text or JSON."""
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


def cmd_compare(args: argparse.Namespace) -> int:
    from ferkit.evaluation.compare import compare_runs, format_table, plot_curves, private_accuracy

    runs = [Path(d) for d in args.run_dirs]
    rows = compare_runs(runs)  # checks every folder before any evaluation
    if not args.no_private:
        ds = load_from_args(args)
        private = {str(r): private_accuracy(r, ds, args.device) for r in runs}
        rows = compare_runs(runs, private)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    if args.plot:
        print(f"validation curves: {plot_curves(runs, Path(args.plot))}", file=sys.stderr)
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from ferkit.config import add_config_arguments

    train = sub.add_parser("train", help="train a model (Training split; best epoch chosen on PublicTest)")
    add_config_arguments(train)
    train.set_defaults(func=cmd_train)


def add_evaluation_args(p: argparse.ArgumentParser) -> None:
    """Options shared by `evaluate` and `ensemble`."""
    from ferkit.apps.predict import add_precision_arg

    add_data_args(p)
    p.add_argument("--split", default="PrivateTest", help="Training, PublicTest, PrivateTest, test or all")
    p.add_argument("--batch_size", "--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    add_precision_arg(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--predictions", help="CSV of per-image predictions (index, true, pred, probabilities)")
    p.add_argument(
        "--report", help="folder for the report: confusion matrix, per-class, reliability, mistakes"
    )
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default="auto")
    p.add_argument(
        "--output_dir",
        "--output-dir",
        help="folder for the W&B evaluate run (default: --report or runs/<time>-evaluate)",
    )


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from ferkit.apps.predict import add_backend_arg

    ev = sub.add_parser(
        "evaluate", help="accuracy, per-class metrics, confusion matrix of a checkpoint or ensemble"
    )
    ev.add_argument(
        "--model_path",
        "--model-path",
        help="checkpoint, ensemble spec, model card or a shipped model's name (default: ferkit-fer2013); "
        "with --backend onnx an .onnx from `ferkit export`",
    )
    add_backend_arg(ev)
    ev.add_argument(
        "--tta",
        choices=["none", "flip", "tencrop"],
        default=None,
        help="test-time augmentation (default none; an ensemble spec's own)",
    )
    add_evaluation_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    sh = sub.add_parser(
        "ship",
        help="write a model as safetensors + JSON model card, with its accuracy measured on both splits",
    )
    sh.add_argument("--model_path", "--model-path", required=True, help="checkpoint or ensemble spec")
    sh.add_argument("--output", required=True, help="model card to write (.json; weights beside it)")
    sh.add_argument("--command", required=True, help="the command that trained the model, for the card")
    sh.add_argument("--tta", choices=["none", "flip", "tencrop"], default="flip", help="default TTA")
    sh.add_argument("--name", default="", help="model name (default: the card's file name)")
    sh.add_argument("--batch_size", "--batch-size", type=int, default=512)
    sh.add_argument(
        "--weights_dtype",
        "--weights-dtype",
        choices=["float16", "int8"],
        default="float16",
        help="storage: float16, or int8 convolution/linear weights with a scale per output channel "
        "(a quarter of float32's size; the card's accuracy is measured on what is stored)",
    )
    add_data_args(sh)
    sh.set_defaults(func=cmd_ship)

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
    en.add_argument("--tta", choices=["none", "flip", "tencrop"], default="none")
    en.add_argument("--save", help="write the ensemble spec (.json) for evaluate/predict/export")
    add_evaluation_args(en)
    en.set_defaults(func=cmd_ensemble)


def build_parser() -> Parser:
    parser = Parser(prog="ferkit", description="Facial expression recognition on FER2013.")
    from ferkit.version import __version__

    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    data = sub.add_parser("data", help="inspect, visualise or download FER2013")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    info = data_sub.add_parser("info", help="per-split, per-class counts, duplicates")
    add_data_args(info, positional=True)
    info.add_argument("--format", choices=["text", "json"], default="text")
    info.set_defaults(func=cmd_data_info)
    show = data_sub.add_parser("show", help="a PNG grid of sample faces per class")
    add_data_args(show, positional=True)
    show.add_argument("--out", default="grid.png", help="PNG to write (default grid.png)")
    show.add_argument("--split", default="all", help="Training, PublicTest, PrivateTest, test or all")
    show.add_argument("--per-class", "--per_class", type=int, default=8)
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(func=cmd_data_show)
    dl = data_sub.add_parser("download", help="fetch FER2013 from Kaggle (needs credentials)")
    dl.add_argument("--out", default="data", help="folder to put the files in (default ./data)")
    dl.add_argument("--source", choices=["competition", "folders"], default="competition")
    dl.set_defaults(func=cmd_data_download)

    models = sub.add_parser("models", help="list the registered models")
    models.add_argument("--format", choices=["text", "json"], default="text")
    models.set_defaults(func=cmd_models)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    from ferkit.apps.predict import add_predict_parser
    from ferkit.apps.serve import add_serve_parser
    from ferkit.shipping.export import add_export_parser

    add_predict_parser(sub)
    add_export_parser(sub)
    add_serve_parser(sub)
    cmp = sub.add_parser("compare", help="table and validation curves of several run folders")
    cmp.add_argument("run_dirs", nargs="+", help="run folders written by `ferkit train --output_dir`")
    add_data_args(cmp)
    cmp.add_argument("--plot", default="curves.png", help="PNG of the validation curves ('' to skip)")
    cmp.add_argument(
        "--no-private",
        "--no_private",
        action="store_true",
        help="skip the PrivateTest column (it is reported, never used to choose)",
    )
    cmp.add_argument("--device", default="auto")
    cmp.add_argument("--format", choices=["text", "json"], default="text")
    cmp.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user mistakes end as one line on stderr and a non-zero exit."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FerkitError as e:
        print(f"ferkit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ferkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `ferkit data info | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
