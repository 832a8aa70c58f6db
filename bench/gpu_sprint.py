"""GPU sprint: several recipes trained side by side on one GPU, then evaluated, ensembled and shipped in
int8, everything under one folder small enough to bring back.

    python bench/gpu_sprint.py --out runs/sprint [--minutes 9] [--members resnet18 resnet34 vgg cnn]
        [--device cuda] [--data FER2013] [--reserve 3] [--pack DIR]

A member is a recipe in configs/ (without .yaml), optionally followed by `ferkit train` options:
`resnet18:batch_size=512:lr=0.4`, `mobilenet_v2_imagenet:pretrained=/path/to/mobilenet_v2-b0353104.pth`,
`cnn_crop40` (the crop recipe).
Each member trains in its own process, all at once on the one device, with the whole dataset on it and the
precision and memory format ferkit picks there (bf16 autocast and channels-last on a GPU), for --minutes
minus --reserve of wall time (`--time_budget`: its LR schedule is spread over that time). Then each
finished member gets a results row (bench/accuracy.py's: PublicTest and PrivateTest with none, flip and
ten-crop TTA, from its best.pth) and an int8 model card (`ferkit ship`); their soft vote, weights fitted
on PublicTest with flip TTA (`ferkit ensemble`), gets a row and an int8 card too. PrivateTest is only
reported: nothing reads it to choose.

Rerunnable: a finished member (its summary.json) is skipped and an interrupted one resumes; a row, card or
ensemble spec already written for the same members is kept. --pack DIR writes the folder without its .pth
and W&B files as DIR/sprint.tar.NN, parts of at most 15 MiB and 60 MiB together (a weights file that does
not fit is left out, with its card, and the log says so): `cat DIR/sprint.tar.* | tar -x` unpacks it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import yaml
from accuracy import COLUMNS, accuracies, ensemble_accuracies, ensemble_row, machine, run_row

from ferkit.cli.main import main as ferkit
from ferkit.config import FIELDS, resolve_config
from ferkit.data import FerDataset, load_dataset
from ferkit.errors import FerkitError
from ferkit.shipping.model_card import git_commit
from ferkit.utils.device import select_device
from ferkit.utils.io import atomic_write, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
DEFAULT_MEMBERS = ("resnet18", "resnet34", "vgg", "cnn")
# Options the sprint sets for every member; a member's own options are the others.
SPRINT_OPTIONS = (
    "output_dir",
    "resume",
    "device",
    "data",
    "save_best_to",
    "time_budget",
    "wandb",
    "progress",
)
PART_BYTES = 15 * 2**20  # each file that comes back from the GPU machine: at most 16 MiB
PACK_BYTES = 60 * 2**20  # all of them together: at most 64 MiB
STOP_GRACE_S = 20  # after SIGTERM at the deadline, seconds before SIGKILL


class Log:
    """Lines to stdout and OUT/sprint.log, each stamped with the minutes since the sprint started."""

    def __init__(self, path: Path, start: float) -> None:
        self.path, self.start = path, start

    def __call__(self, text: str) -> None:
        stamp = f"[{(time.monotonic() - self.start) / 60:5.2f} min]"
        lines = [f"{stamp} {line}" for line in text.rstrip().splitlines()]
        if not lines:
            return
        print("\n".join(lines), flush=True)
        with self.path.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Member:
    """One recipe of the sprint with its own `ferkit train` options, and where its files go."""

    name: str
    recipe: str
    options: dict[str, Any]
    out: Path  # the sprint folder

    @property
    def run(self) -> Path:
        return self.out / "members" / self.name

    @property
    def card(self) -> Path:
        return self.out / "cards" / f"{self.name}.json"

    @property
    def finished(self) -> bool:
        return (self.run / "summary.json").exists()


def parse_member(spec: str, out: Path) -> Member:
    """`RECIPE[:OPTION=VALUE...]` as a Member; a FerkitError names an unknown recipe or option, or a bad
    value (checked as `ferkit train` checks it, before anything runs)."""
    recipe, *pairs = spec.split(":")
    config = ROOT / "configs" / f"{recipe}.yaml"
    if not recipe or not config.is_file():
        known = ", ".join(sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
        raise FerkitError(f"--members {spec}: no recipe configs/{recipe}.yaml (recipes: {known})")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.replace("-", "_")
        if not (sep and value) or key not in FIELDS or key in SPRINT_OPTIONS:
            raise FerkitError(
                f"--members {spec}: {pair!r} is not OPTION=VALUE for a `ferkit train` option "
                f"(the sprint sets {', '.join(SPRINT_OPTIONS)})"
            )
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise FerkitError(f"--members {spec}: {pair!r}: not a valid value") from None
    resolve_config(str(config), options)
    short = {k: Path(v).stem if isinstance(v, str) and "/" in v else v for k, v in options.items()}
    name = "-".join([recipe, *(f"{k}{v}" for k, v in short.items())])  # a file: its name's stem
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return Member(name, recipe, options, out)


def flags(key: str, value: Any) -> list[str]:
    """The `ferkit train` arguments that set option `key` to `value`."""
    if isinstance(value, bool):
        return [f"--{key}" if value else f"--no-{key}"]
    if isinstance(value, list):
        return [f"--{key}", *map(str, value)]
    return [f"--{key}", str(value)]


def train_args(member: Member, args: argparse.Namespace) -> list[str]:
    """`member`'s `ferkit train` arguments (run from the repository root). A member that already started
    keeps the time budget it started with, so that a resumed run follows the same schedule."""
    budget = args.minutes - args.reserve
    saved = member.run / "config.yaml"
    if (member.run / "last.pth").exists() and saved.exists():
        budget = yaml.safe_load(saved.read_text())["time_budget"]
    argv = ["train", "--config", f"configs/{member.recipe}.yaml", "--output_dir", str(member.run)]
    argv += ["--save_best_to", "", "--no-progress", "--wandb", "disabled", "--device", args.device]
    argv += ["--time_budget", f"{budget:g}"] + (["--data", args.data] if args.data else [])
    for key, value in member.options.items():
        argv += flags(key, value)
    return argv


def launch(member: Member, args: argparse.Namespace, log: Log) -> subprocess.Popen:
    """Start `ferkit train` for `member` (with --resume after an interruption), its output appended to
    its train.log."""
    argv = train_args(member, args)
    if (member.run / "last.pth").exists():
        argv.append("--resume")
    member.run.mkdir(parents=True, exist_ok=True)
    log(f"{member.name}: {'resumes' if '--resume' in argv else 'starts'}: ferkit {shlex.join(argv)}")
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    with (member.run / "train.log").open("a") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "ferkit", *argv], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )


def train_members(members: list[Member], args: argparse.Namespace, log: Log) -> dict[str, str]:
    """Train the unfinished members side by side until they end or the training deadline passes (those
    still running then are stopped, and resume on the next run); returns each member's status."""
    status = {m.name: "finished earlier (skipped)" for m in members if m.finished}
    for name in status:
        log(f"{name}: finished earlier, skipped")
    procs = {m.name: (m, launch(m, args, log)) for m in members if not m.finished}
    deadline = log.start + (args.minutes - args.reserve / 2) * 60
    for name, (member, proc) in procs.items():
        try:
            code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()  # checkpoints are written atomically: last.pth stays whole
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stopped = proc.returncode != 0 or not member.finished  # it may have ended just then
            status[name] = "stopped at the deadline (resumes on the next run)" if stopped else "finished"
        else:
            status[name] = "finished" if code == 0 and member.finished else f"failed (exit {code})"
        lines = (member.run / "train.log").read_text(errors="replace").strip().splitlines()
        log(f"{name}: {status[name]}; {lines[-1] if lines else 'no output'}")
    return status


def logged(log: Log, fn: Callable[..., T], *args: Any) -> tuple[T, str]:
    """`fn(*args)` and what it printed, which also goes into the log."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return fn(*args), out.getvalue()
    finally:
        log(out.getvalue())


def ferkit_cli(argv: list[str], log: Log) -> None:
    """Run a ferkit command in this process, its output into the log; a FerkitError if it fails."""
    code, printed = logged(log, ferkit, argv)
    if code:
        last = (printed.strip().splitlines() or ["no output"])[-1]
        raise FerkitError(f"ferkit {argv[0]} failed (exit {code}): {last}")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV ([] before the first)."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def add_row(path: Path, row: dict[str, Any], log: Log) -> None:
    """Append `row` to the results CSV `path` (bench/results.csv's columns), rewriting it atomically."""
    rows = [*read_rows(path), row]
    with atomic_write(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    log(" ".join(f"{k}={row[k]}" for k in COLUMNS if k != "command"))


def ship(model: str, card: Path, tta: str, command: str, args: argparse.Namespace, log: Log) -> None:
    """`ferkit ship` `model` as the int8 model card `card`, its accuracy measured on what is stored."""
    argv = ["ship", "--model_path", model, "--output", str(card), "--tta", tta, "--weights_dtype", "int8"]
    ferkit_cli(argv + ["--command", command] + (["--data", args.data] if args.data else []), log)


def member_results(member: Member, ds: FerDataset, args: argparse.Namespace, log: Log) -> float:
    """`member`'s results row and int8 card (single-crop), each unless already written; returns the
    seconds its card took."""
    results, best = args.out / "results.csv", str(member.run / "best.pth")
    argv = train_args(member, args)
    if not any(r["recipe"] == member.name for r in read_rows(results)):
        add_row(results, run_row(member.name, member.run, argv) | accuracies(best, ds, args.device), log)
    if member.card.exists():
        return 0.0
    t0 = time.monotonic()
    ship(best, member.card, "none", "ferkit " + shlex.join(argv), args, log)
    return time.monotonic() - t0


def spec_members(spec: Path) -> list[Path]:
    """The member files of an ensemble spec, resolved ([] when there is none)."""
    if not spec.exists():
        return []
    return [(spec.parent / m["path"]).resolve() for m in json.loads(spec.read_text())["members"]]


def ensemble_name(members: list[Member]) -> str:
    """The ensemble's name in results.csv, as bench/accuracy.py names one."""
    return f"ensemble({', '.join(m.name for m in members)})"


def ensemble(members: list[Member], ds: FerDataset, args: argparse.Namespace, log: Log, card_s: float) -> str:
    """The members' soft vote: spec (weights fitted on PublicTest, flip TTA), results row and int8 card,
    each unless already written for these members; the card is left for later when the time left is
    short of 1.5 x what it should take (`card_s`: what the members' single-crop cards took; flip triples
    it). Returns the ensemble's status."""
    spec, card, results = args.out / "ensemble.json", args.out / "sprint.json", args.out / "results.csv"
    cards = [str(m.card) for m in members]
    if spec_members(spec) != [Path(c).resolve() for c in cards]:
        card.unlink(missing_ok=True)  # a card of other members
        argv = ["ensemble", "--model_paths", *cards, "--weights", "fit", "--split", "PublicTest"]
        argv += ["--tta", "flip", "--save", str(spec), "--wandb", "disabled", "--device", args.device]
        ferkit_cli(argv + (["--data", args.data] if args.data else []), log)
    name = ensemble_name(members)
    if not any(r["recipe"] == name for r in read_rows(results)):
        row = ensemble_row(name, cards, "fit")
        add_row(results, row | logged(log, ensemble_accuracies, cards, ds, "fit", args.device)[0], log)
    if card.exists():
        return "shipped earlier"
    command = f"python bench/gpu_sprint.py {shlex.join(sys.argv[1:])}"
    left = log.start + args.minutes * 60 - time.monotonic()
    if 1.5 * 3 * card_s > left:
        log(f"ensemble card left for later ({left:.0f} s left): ferkit ship --model_path {spec} ...")
        return "card left for later: ferkit ship --model_path ensemble.json --weights_dtype int8"
    ship(str(spec), card, "flip", command, args, log)
    return "shipped"


def size_mib(paths: list[Path]) -> float:
    """The files' total size in MiB, as the sprint reports it."""
    return sum(p.stat().st_size for p in paths) / 2**20


def files(out: Path, keep: Callable[[Path], bool] = lambda p: True) -> list[Path]:
    """The files under `out` that `keep` accepts, in a fixed order."""
    return sorted(p for p in out.rglob("*") if p.is_file() and keep(p))


def portable(p: Path) -> bool:
    """Whether `p` goes into the pack: not a checkpoint (.pth) nor a W&B file."""
    return p.suffix != ".pth" and "wandb" not in p.parts


def pack(out: Path, dest: Path, log: Log) -> None:
    """`out`'s portable files as dest/sprint.tar.NN parts of PART_BYTES, PACK_BYTES together at most; a
    card whose weights would go over is left out with them (the members' cards go in first)."""
    portable_files = files(out, portable)
    weights = {p.with_suffix(".json"): p for p in portable_files if p.suffix == ".safetensors"}
    chosen = [p for p in portable_files if p.suffix != ".safetensors" and p not in weights]
    total = sum(p.stat().st_size + 1024 for p in chosen)  # 1 KiB: a tar header and padding
    for card in sorted(weights, key=lambda p: p.parent.name != "cards"):
        unit = [card, weights[card]]
        size = sum(p.stat().st_size + 1024 for p in unit)
        if total + size > PACK_BYTES - 2**20:
            log(f"pack: {card.relative_to(out)} and its weights left out ({size / 2**20:.1f} MiB too many)")
            continue
        chosen += unit
        total += size
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in chosen:
            tar.add(p, arcname=str(Path(out.name) / p.relative_to(out)))
    data = buf.getvalue()
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("sprint.tar.*"):
        old.unlink()
    for i in range(0, len(data), PART_BYTES):
        with atomic_write(dest / f"sprint.tar.{i // PART_BYTES:02d}", "wb") as fh:
            fh.write(data[i : i + PART_BYTES])
    log(f"pack: {len(chosen)} files, {len(data) / 2**20:.1f} MiB in {dest}/sprint.tar.*")


def summary_table(rows: list[dict[str, str]], status: dict[str, str]) -> list[str]:
    """SUMMARY.md's table: each results row, with what happened to its model in this run."""
    lines = [
        "| model | status | epochs | best epoch | minutes | PublicTest | PublicTest flip | PrivateTest flip "
        "| PrivateTest ten-crop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {status.get(r['recipe'], '')} | {r['epochs']} | {r['best_epoch']} "
            f"| {r['minutes']} | {float(r['public_none']):.2%} | {float(r['public_flip']):.2%} "
            f"| {float(r['private_flip']):.2%} | {float(r['private_tencrop']):.2%} |"
        )
    named = {r["recipe"] for r in rows}
    lines += [f"| {name} | {s} |  |  |  |  |  |  |  |" for name, s in status.items() if name not in named]
    return lines


def write_summary(out: Path, status: dict[str, str], args: argparse.Namespace, log: Log) -> None:
    """OUT/SUMMARY.md: what ran, the results table, where the files are and how to bring them back."""
    minutes = (time.monotonic() - log.start) / 60
    lines = [
        f"# GPU sprint {out.name}",
        "",
        f"{date.today().isoformat()}, {machine()}, commit {git_commit()}: {minutes:.1f} minutes of "
        f"{args.minutes:g}, each member trained for {args.minutes - args.reserve:g} (a resumed one keeps "
        "its first budget).",
        "",
        f"    python bench/gpu_sprint.py {shlex.join(sys.argv[1:])}",
        "",
        *summary_table(read_rows(out / "results.csv"), status),
        "",
        "Checkpoints were chosen on PublicTest and the ensemble's weights fitted on PublicTest; PrivateTest",
        "is only reported. All rows: `results.csv` (bench/results.csv's columns).",
        "",
        "- `members/NAME/`: each run folder (config.yaml, metrics.csv, summary.json, train.log, best.pth, "
        "last.pth)",
        "- `cards/NAME.json`: each member as an int8 model card (`ferkit ship`, single-crop)",
        "- `ensemble.json`: their soft vote over the cards (flip TTA); `sprint.json`: it as an int8 card",
        "- `sprint.log`: what the sprint did, with times",
        "",
        f"Size: {size_mib(files(out)):.1f} MiB, {size_mib(files(out, portable)):.1f} MiB without checkpoints "
        "and W&B files (what --pack takes). Unpack with `cat sprint.tar.* | tar -x`.",
    ]
    atomic_write_text(out / "SUMMARY.md", "\n".join(lines) + "\n")


def sprint(args: argparse.Namespace) -> int:
    """Train, evaluate, ensemble, ship, summarise and pack; 0 when every member has finished, else 1 (a
    stopped member resumes, and a failed one starts again, on the next run)."""
    start = time.monotonic()
    if not 0 < args.reserve < args.minutes:
        raise FerkitError(f"--reserve {args.reserve:g}: expected more than 0 and less than --minutes")
    select_device(args.device)  # a device this machine lacks: one line, before anything runs
    members = [parse_member(spec, args.out) for spec in args.members]
    if len({m.name for m in members}) < len(members):
        raise FerkitError("--members: a member is named twice")
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "sprint.log", start)
    log(f"sprint on {machine()}: {', '.join(m.name for m in members)} in {args.minutes:g} min ({args.out})")
    status: dict[str, str] = {}
    try:
        ds = load_dataset(args.data)  # parsed here once: the members then read it from the cache
        status |= train_members(members, args, log)
        finished = [m for m in members if m.finished]
        card_s = sum(member_results(m, ds, args, log) for m in finished)
        if len(finished) > 1:
            status[ensemble_name(finished)] = ensemble(finished, ds, args, log, card_s)
        else:
            log(f"no ensemble: {len(finished)} member(s) finished; rerun the same command to go on")
    except (FerkitError, KeyboardInterrupt) as e:
        status["sprint"] = f"failed: {str(e) or 'interrupted'}; rerun the same command to go on"
        raise
    finally:  # whatever happened, the summary and the pack say so, and the pack comes back
        write_summary(args.out, status, args, log)
        if args.pack:
            pack(args.out, args.pack, log)
        log(
            f"{args.out}: {size_mib(files(args.out)):.1f} MiB, {size_mib(files(args.out, portable)):.1f} "
            f"MiB without checkpoints; {args.out / 'SUMMARY.md'}"
        )
    return int(not all(m.finished for m in members))


def main() -> None:
    """Parse the options and run the sprint; a user mistake ends as one line on stderr."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="the sprint's folder")
    parser.add_argument("--minutes", type=float, default=9.0, help="the whole sprint's wall time")
    parser.add_argument(
        "--reserve", type=float, default=3.0, help="minutes of it kept for start-up, evaluation and shipping"
    )
    parser.add_argument(
        "--members", nargs="+", default=list(DEFAULT_MEMBERS), help="RECIPE[:OPTION=VALUE...]"
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--data", help="FER2013 (default $FERKIT_DATA)")
    parser.add_argument(
        "--pack", type=Path, help="also write the folder, without checkpoints, as tar parts here"
    )
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.data = str(Path(args.data).resolve()) if args.data else None
    args.pack = args.pack.resolve() if args.pack else None
    try:
        sys.exit(sprint(args))
    except FerkitError as e:
        sys.exit(f"gpu_sprint: error: {e}")
    except KeyboardInterrupt:
        sys.exit("gpu_sprint: interrupted; rerun the same command to go on (finished members are kept)")


if __name__ == "__main__":
    main()
