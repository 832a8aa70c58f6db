"""`ferkit` command line: the parser of every command, and how a command's errors end.

Each command's options and `cmd_*` live in a module per command group; shared options in `options.py`.
Library modules that import torch are imported inside the `cmd_*` functions, so `ferkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ferkit.cli.data import add_data_parser
from ferkit.cli.evaluate import add_compare_parser, add_ensemble_parser, add_evaluate_parser, add_ship_parser
from ferkit.cli.export import add_export_parser
from ferkit.cli.predict import add_predict_parser
from ferkit.cli.serve import add_serve_parser
from ferkit.cli.train import add_models_parser, add_train_parser
from ferkit.errors import FerkitError
from ferkit.version import __version__


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) with a pointer to --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> Parser:
    """`ferkit` and its subcommands, in the order `ferkit --help` lists them."""
    parser = Parser(prog="ferkit", description="Facial expression recognition on FER2013.")
    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (
        add_data_parser,
        add_models_parser,
        add_train_parser,
        add_evaluate_parser,
        add_ship_parser,
        add_ensemble_parser,
        add_predict_parser,
        add_export_parser,
        add_serve_parser,
        add_compare_parser,
    ):
        add(sub)
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
