"""`ferkit train` (one flag per `TrainConfig` field) and `ferkit models`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from ferkit.cli.options import add_format
from ferkit.config import FIELDS, field_type


def cmd_train(args: argparse.Namespace) -> int:
    from ferkit.api import train

    summary = train(args.config, **given_options(args)).summary
    if "best_val_acc" in summary and summary.get("best_epoch"):
        print(
            f"best PublicTest accuracy {summary['best_val_acc']:.2%} at epoch {summary['best_epoch']}; "
            f"checkpoints in {summary['output_dir']}"
        )
    return 0


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The training options given on the command line (the others keep the YAML's or the defaults)."""
    return {k: v for k, v in vars(args).items() if k in FIELDS}


def add_config_options(p: argparse.ArgumentParser) -> None:
    """`--config`, then one flag per config field (`--batch_size` and `--batch-size`), defaulting to
    'not given' so that a YAML file's value is overridden only by a flag on the command line."""
    p.add_argument(
        "--config", help="YAML file of options, over those of the file its base: names (flags override it)"
    )
    for name, f in FIELDS.items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        kind = field_type(name)
        default = f.default if f.default_factory is dataclasses.MISSING else []
        common: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        common["help"] = f"{f.metadata['help']} (default: {default})"
        if kind is bool:
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif kind is list:
            p.add_argument(*flags, nargs="*", **common)
        elif name == "pretrained":  # a bare --pretrained means ImageNet weights
            p.add_argument(*flags, nargs="?", const="imagenet", **common)
        else:
            p.add_argument(*flags, type=kind, choices=f.metadata["choices"], **common)


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


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list the registered models")
    add_format(models)
    models.set_defaults(func=cmd_models)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model (Training split; best epoch chosen on PublicTest)")
    add_config_options(train)
    train.set_defaults(func=cmd_train)
