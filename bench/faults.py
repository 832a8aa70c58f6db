"""Kill ferkit at random moments, and fill its disk: every file must stay its old or its new complete
version, a resume or rerun must complete, and a full disk must end in one line, not a traceback.

Run by hand, not a test (tests/test_faults.py runs the same checks, a few kills each):

    nice -n 19 .venv/bin/python bench/faults.py --kills 20 [--commands train,ship,export,cache] [--seed 0]
    .venv/bin/python bench/faults.py --kills 0 --full-disk      # only the full-disk runs

Each command first runs once uninterrupted (its duration is measured). Then, --kills times, it starts
again, sleeps a random fraction of that duration (a seeded RNG) and is SIGKILLed with its process group.
After each kill every file it writes (run folder, model card, ONNX file, data cache) is checked: it loads
completely (torch.load with weights_only, JSON parses, safetensors and npz open and every array reads,
metrics.csv parses with unique epochs, YAML parses, ONNX passes the checker); leftover `.*.tmp` and
`.*.draft.*` temporaries are counted, never read as results. Then `--resume` (train) or a rerun (the
others) must complete, and the files are checked again.

The commands: `train` (2 epochs of a tiny CNN on generated faces, W&B offline, so checkpoint, metrics,
summary and W&B writes all happen), `ship` (a model card over an earlier complete one), `export` (ONNX over
an earlier file), `cache` (`ferkit data info` writing a parsed dataset into an empty $FERKIT_CACHE_DIR).

--full-disk: train, ship and cache with too little room: a size-limited tmpfs when this process may
mount one (root), else RLIMIT_FSIZE (writes past the limit fail with EFBIG). Each must end with one
`ferkit: error:` line naming the file, exit 1, and leave the earlier checkpoint, card and data intact.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 7
TEMP_MARKS = (".tmp", ".draft.json", ".draft.safetensors")
TRAIN_ARGS = ("--epochs", "2", "--batch_size", "16", "--limit_batches", "2", "--no-progress")


def make_csv(path: Path, n_per_split: tuple[int, ...] = (70, 14, 14), seed: int = 0) -> Path:
    """A small FER2013 CSV of random faces, every class in every split: faults need files, not accuracy."""
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels,Usage"]
    for split, n in zip(("Training", "PublicTest", "PrivateTest"), n_per_split, strict=True):
        for i in range(n):
            pixels = " ".join(map(str, rng.integers(0, 256, 48 * 48).tolist()))
            lines.append(f"{i % CLASSES},{pixels},{split}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def is_temporary(path: Path) -> bool:
    """A writer's temporary (`.NAME.XXXX.tmp`, ship's `.NAME.draft.*`): never a result, never read."""
    return path.name.startswith(".") and path.name.endswith(TEMP_MARKS)


def _check_csv(path: Path) -> None:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if path.name == "metrics.csv":
        epochs = [int(r["epoch"]) for r in rows]
        if len(epochs) != len(set(epochs)):
            raise ValueError(f"epochs repeated: {epochs}")


def _check_npz(path: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            z[k]  # noqa: B018 - reading every array is the check


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            f.get_tensor(k)


def _check_pth(path: Path) -> None:
    import torch

    torch.load(path, map_location="cpu", weights_only=True)


def _check_onnx(path: Path) -> None:
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))


def _check_yaml(path: Path) -> None:
    import yaml

    yaml.safe_load(path.read_text())


CHECKS: dict[str, Callable[[Path], None]] = {
    ".pth": _check_pth,
    ".json": lambda p: json.loads(p.read_text()),
    ".safetensors": _check_safetensors,
    ".npz": _check_npz,
    ".csv": _check_csv,
    ".yaml": _check_yaml,
    ".onnx": _check_onnx,
}


@dataclass
class FileCheck:
    """What a look at a folder found: files read completely, temporaries left by a kill, damaged files."""

    read: int = 0
    temporaries: int = 0
    damaged: list[str] = field(default_factory=list)


def check_files(*folders: Path) -> FileCheck:
    """Read every result file under `folders` completely (W&B's own `wandb/` folder aside)."""
    found = FileCheck()
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if not path.is_file() or "wandb" in path.relative_to(folder).parts:
                continue
            if is_temporary(path):
                found.temporaries += 1
            elif (check := CHECKS.get(path.suffix)) is not None:
                try:
                    check(path)
                    found.read += 1
                except Exception as e:  # any failure to read it whole is damage
                    found.damaged.append(f"{path}: {e.__class__.__name__}: {str(e)[:120]}")
    return found


def ferkit(*args: object) -> list[str]:
    return [sys.executable, "-m", "ferkit", *map(str, args)]


def run(cmd: list[str], env: dict[str, str], limit: int | None = None, timeout: float = 600):
    """Run `cmd` to its end (with RLIMIT_FSIZE `limit` bytes, SIGXFSZ ignored, when given)."""

    def fsize() -> None:
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=fsize)


def kill_at(cmd: list[str], env: dict[str, str], after: float) -> bool:
    """Start `cmd` in its own process group and SIGKILL the group `after` seconds later; whether it was
    still running (False: it finished first)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        proc.wait(timeout=after)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


@dataclass
class Command:
    """One command under test: how to prepare its folder, start it, and complete it after a kill."""

    name: str
    start: Callable[[Path], list[str]]
    complete: Callable[[Path], list[str]]
    folders: Callable[[Path], list[Path]]
    prepare: Callable[[Path], None] = lambda work: None
    env: Callable[[Path], dict[str, str]] = lambda work: {}


@dataclass
class Tally:
    """Counts for one command: kills, kills that landed (the command still running), files read, leftover
    temporaries, damaged files, completions that failed (with their last stderr line)."""

    name: str
    seconds: float = 0.0
    kills: int = 0
    landed: int = 0
    read: int = 0
    temporaries: int = 0
    damaged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]


def commands(data: Path, base: Path, card: Path, onnx_file: Path) -> dict[str, Command]:
    """The four commands, each writing into the folder it is given (`work`)."""

    def train(work: Path) -> list[str]:
        resume = ["--resume"] if (work / "run" / "last.pth").is_file() else []
        out = work / "run"
        return ferkit("train", "--data", data, "--output_dir", out, "--save_best_to", "", *TRAIN_ARGS,
                      "--wandb", "offline", *resume)  # fmt: skip

    def ship(work: Path) -> list[str]:
        return ferkit("ship", "--model_path", base, "--output", work / "card.json", "--command", "faults",
                      "--data", data, "--tta", "none")  # fmt: skip

    def export(work: Path) -> list[str]:
        return ferkit("export", "--model_path", base, "--output", work / "model.onnx", "--data", data)

    def copy_card(work: Path) -> None:
        shutil.copy(card, work / "card.json")
        shutil.copy(card.with_suffix(".safetensors"), work / "card.safetensors")

    return {
        "train": Command("train", train, train, lambda w: [w / "run"]),
        "ship": Command("ship", ship, ship, lambda w: [w], prepare=copy_card),
        "export": Command(
            "export",
            export,
            export,
            lambda w: [w],
            prepare=lambda w: shutil.copy(onnx_file, w / "model.onnx"),
        ),  # fmt: skip
        "cache": Command(
            "cache",
            lambda w: ferkit("data", "info", data),
            lambda w: ferkit("data", "info", data),
            lambda w: [w / "cache"],
            env=lambda w: {"FERKIT_CACHE_DIR": str(w / "cache")},
        ),  # fmt: skip
    }


def env_for(cmd: Command, work: Path, base_env: dict[str, str]) -> dict[str, str]:
    return base_env | {"WANDB_DIR": str(work)} | cmd.env(work)


def measure(cmd: Command, out: Path, base_env: dict[str, str]) -> float:
    """Seconds an uninterrupted run of `cmd` takes from a fresh folder: the faster of two (the first may
    pay for cold caches), so that most kills land while it runs."""
    times = []
    for _ in range(2):
        work = out / f"{cmd.name}-clean"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        cmd.prepare(work)
        t0 = time.perf_counter()
        proc = run(cmd.start(work), env_for(cmd, work, base_env))
        if proc.returncode != 0:
            raise SystemExit(f"{cmd.name} fails uninterrupted: {_last_line(proc)}")
        times.append(time.perf_counter() - t0)
    return min(times)


def kill_many(cmd: Command, kills: int, rng: random.Random, out: Path, base_env: dict[str, str]) -> Tally:
    """`kills` runs of `cmd`, each SIGKILLed after a random fraction of its measured duration, checked,
    then completed and checked again."""
    tally = Tally(cmd.name, seconds=measure(cmd, out, base_env))
    for i in range(kills):
        work = out / f"{cmd.name}-{i:03d}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        cmd.prepare(work)
        env = env_for(cmd, work, base_env)
        tally.kills += 1
        tally.landed += kill_at(cmd.start(work), env, rng.uniform(0.05, 1.0) * tally.seconds)
        for found in (check_files(*cmd.folders(work)),):
            tally.read += found.read
            tally.temporaries += found.temporaries
            tally.damaged += found.damaged
        proc = run(cmd.complete(work), env)
        if proc.returncode != 0 or "Traceback" in proc.stderr:
            tally.failed.append(f"{work}: {_last_line(proc)}")
        after = check_files(*cmd.folders(work))
        tally.read += after.read
        tally.damaged += after.damaged
        shutil.rmtree(work, ignore_errors=True)
    return tally


def try_tmpfs(folder: Path, size: str) -> bool:
    """Mount a tmpfs of `size` at `folder` (root only); whether it worked."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, needle: str) -> str:
    """'' when `proc` ended with exit 1 and one `ferkit: error:` line holding `needle`, else why not."""
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 1 or "Traceback" in proc.stderr or len(lines) != 1:
        return f"exit {proc.returncode}, {len(lines)} stderr lines: {proc.stderr.strip()[-300:]}"
    if not lines[0].startswith("ferkit: error:") or needle not in lines[0]:
        return f"not a one-line error naming {needle}: {lines[0]}"
    return ""


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (temporaries aside), by relative path."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not is_temporary(p)}  # fmt: skip


@dataclass
class DiskRun:
    """One full-disk run: the command, how the room was limited, and what went wrong ('' for nothing)."""

    name: str
    how: str
    error_line: str
    problem: str


def _fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of `folder` but `leave` bytes."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with (folder / "filler").open("wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))


def full_disk(name: str, cmd: list[str], folder: Path, keep: Path, kept: tuple[str, ...], needle: str,
              env: dict[str, str], should_fail: bool = True) -> DiskRun:  # fmt: skip
    """Run `cmd` writing into `folder` (which holds the earlier files in `keep`'s copy) with too little room:
    a 1 MiB tmpfs headroom when mountable, else RLIMIT_FSIZE of 256 KiB. It must end in one line naming
    `needle` (`should_fail`) or succeed; the files named `kept` must be unchanged, every file must read
    whole, no temporary may be left, and the same command with room again must complete."""
    shutil.rmtree(folder, ignore_errors=True)
    mounted = try_tmpfs(folder, "64m")
    limit = None
    try:
        shutil.copytree(keep, folder, dirs_exist_ok=True)
        before = digests(folder)
        if mounted:
            _fill(folder, 1 << 20)
        else:
            limit = 256 << 10
        proc = run(cmd, env, limit=limit)
        after = digests(folder)
        after.pop("filler", None)
        problem = one_line_error(proc, needle) if should_fail else ("" if proc.returncode == 0 else
                                                                    _last_line(proc))  # fmt: skip
        if any(before[k] != after.get(k) for k in kept):
            problem += f" | an earlier file changed: {[k for k in kept if before[k] != after.get(k)]}"
        problem += "".join(f" | damaged: {d}" for d in check_files(folder).damaged)
        leftovers = [p.name for p in folder.rglob("*") if is_temporary(p)]
        if leftovers:
            problem += f" | temporaries left: {leftovers}"
        line = (proc.stderr.strip().splitlines() or [""])[-1]
        (folder / "filler").unlink(missing_ok=True)
        again = run(cmd, env)
        if again.returncode != 0:
            problem += f" | with room again: {_last_line(again)}"
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
    how = "tmpfs 1 MiB free" if mounted else "RLIMIT_FSIZE 256 KiB"
    return DiskRun(name, how, line, problem)


def full_disk_runs(
    out: Path, data: Path, base_env: dict[str, str], clean_run: Path, card: Path
) -> list[DiskRun]:
    """Train resuming past a complete run, ship over a complete card, and the data cache, out of room."""
    runs = []
    train = ferkit("train", "--data", data, "--output_dir", out / "disk-train", "--save_best_to", "",
                   *TRAIN_ARGS[2:], "--epochs", "3", "--wandb", "disabled", "--resume")  # fmt: skip
    runs.append(full_disk("train", train, out / "disk-train", clean_run, ("last.pth",), "last.pth", base_env))
    cards = out / "disk-ship-keep"
    cards.mkdir(parents=True, exist_ok=True)
    for f in (card, card.with_suffix(".safetensors")):
        shutil.copy(f, cards / f.name)
    ship = ferkit("ship", "--model_path", clean_run / "best.pth", "--output", out / "disk-ship" / card.name,
                  "--command", "faults", "--data", data, "--tta", "none")  # fmt: skip
    kept = (card.name, card.with_suffix(".safetensors").name)
    runs.append(full_disk("ship", ship, out / "disk-ship", cards, kept, card.stem, base_env))
    empty = out / "disk-cache-keep"
    empty.mkdir(parents=True, exist_ok=True)
    env = base_env | {"FERKIT_CACHE_DIR": str(out / "disk-cache")}
    info = ferkit("data", "info", data)
    runs.append(full_disk("cache", info, out / "disk-cache", empty, (), "", env, should_fail=False))
    return runs


def report(tallies: list[Tally], disks: list[DiskRun]) -> int:
    """Print the tables; the exit status: 1 when anything was lost, damaged or ended in a traceback."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    load = os.getloadavg()[0]
    print(f"CPU {cpu}, {os.cpu_count()} cores, load {load:.1f}, python {platform.python_version()}")
    bad = 0
    if tallies:
        print("\n| command | clean run (s) | kills | landed mid-run | files read whole | temporaries left | "
              "damaged files | failed completions |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
        for t in tallies:
            print(f"| {t.name} | {t.seconds:.1f} | {t.kills} | {t.landed} | {t.read} | {t.temporaries} | "
                  f"{len(t.damaged)} | {len(t.failed)} |")  # fmt: skip
            for line in t.damaged + t.failed:
                print(f"  {line}")
            bad += len(t.damaged) + len(t.failed)
    if disks:
        print("\n| full disk | room | outcome | message |\n|---|---|---|---|")
        for d in disks:
            print(f"| {d.name} | {d.how} | {d.problem or 'ok'} | `{d.error_line}` |")
            bad += bool(d.problem)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per command")
    parser.add_argument("--commands", default="train,ship,export,cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-disk", action="store_true", help="also the full-disk runs")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="ferkit-faults-"))
    base_env = dict(os.environ) | {"FERKIT_CACHE_DIR": str(out / "cache-shared"), "WANDB_MODE": "offline",
                                   "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    data = make_csv(out / "tiny.csv")
    setup = out / "setup"
    proc = run(ferkit("train", "--data", data, "--output_dir", setup / "run", "--save_best_to", "",
                      *TRAIN_ARGS, "--wandb", "disabled"), base_env)  # fmt: skip
    card, onnx_file = setup / "card.json", setup / "model.onnx"
    for step in (proc,
                 run(ferkit("ship", "--model_path", setup / "run" / "best.pth", "--output", card, "--command",
                            "faults", "--data", data, "--tta", "none"), base_env),
                 run(ferkit("export", "--model_path", setup / "run" / "best.pth", "--output", onnx_file,
                            "--data", data), base_env)):  # fmt: skip
        if step.returncode != 0:
            raise SystemExit(f"setup failed: {_last_line(step)}")
    cmds = commands(data, setup / "run" / "best.pth", card, onnx_file)
    rng = random.Random(args.seed)
    tallies = [kill_many(cmds[n], args.kills, rng, out, base_env) for n in args.commands.split(",") if n]
    disks = full_disk_runs(out, data, base_env, setup / "run", card) if args.full_disk else []
    return report(tallies, disks)


if __name__ == "__main__":
    raise SystemExit(main())
