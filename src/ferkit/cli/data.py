"""`ferkit data info|show|download`: look at FER2013, or fetch it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ferkit.cli.options import add_data_options, add_format, add_split, dataset_from_args


def cmd_data_info(args: argparse.Namespace) -> int:
    from ferkit.data import dataset_info

    info = dataset_info(dataset_from_args(args))
    print(json.dumps(info, indent=2) if args.format == "json" else format_info(info))
    return 0


def format_info(info: dict) -> str:
    """`dataset_info` as text: the per-split, per-class table, then pixels, labels, duplicates and notes."""
    from ferkit.classes import CLASS_NAMES

    width = max(len(c) for c in CLASS_NAMES)
    lines = [
        f"{info['source']}: {info['total']} images, 48x48 grayscale",
        f"{'split':<12}" + "".join(f"{c:>{width + 2}}" for c in CLASS_NAMES) + f"{'total':>9}",
    ]
    for split, s in info["splits"].items():
        counts = "".join(f"{n:>{width + 2}}" for n in s["classes"].values())
        extra = f"  ({s['unlabelled']} unlabelled)" if s["unlabelled"] else ""
        lines.append(f"{split:<12}{counts}{s['total']:>9}{extra}")
    img, dup = info["images"], info["duplicates"]
    lines += [
        f"pixels: mean {img['mean']:.4f}, std {img['std']:.4f}; {img['blank']} blank images",
        f"labels: {info['labels']['labelled']} labelled, {info['labels']['unlabelled']} unlabelled",
        f"duplicates: {dup['duplicate_rows']} rows repeat an earlier image "
        f"({dup['duplicate_groups']} groups, "
        f"{dup['groups_with_conflicting_labels']} with conflicting labels)",
    ]
    lines += [f"note: {note}" for note in info["notes"]]
    return "\n".join(lines)


def cmd_data_show(args: argparse.Namespace) -> int:
    from ferkit.data.show import save_grid

    grid = save_grid(
        dataset_from_args(args), Path(args.out), per_class=args.per_class, seed=args.seed, split=args.split
    )
    print(grid)
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from ferkit.data.download import download

    out = download(Path(args.out), source=args.source)
    print(f"FER2013 downloaded to {out}; use it with --data {out}")
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect, visualise or download FER2013")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=type(data))
    info = data_sub.add_parser("info", help="per-split, per-class counts, duplicates")
    add_data_options(info, positional=True)
    add_format(info)
    info.set_defaults(func=cmd_data_info)

    show = data_sub.add_parser("show", help="a PNG grid of sample faces per class")
    add_data_options(show, positional=True)
    show.add_argument("--out", default="grid.png", help="PNG to write (default grid.png)")
    add_split(show, "all")
    show.add_argument("--per-class", "--per_class", type=int, default=8)
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(func=cmd_data_show)

    dl = data_sub.add_parser("download", help="fetch FER2013 from Kaggle (needs credentials)")
    dl.add_argument("--out", default="data", help="folder to put the files in (default ./data)")
    dl.add_argument("--source", choices=["competition", "folders"], default="competition")
    dl.set_defaults(func=cmd_data_download)
