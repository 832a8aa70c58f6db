"""Shared fixtures: an isolated ferkit cache, the real FER2013 data (via $FERKIT_DATA), tiny CSVs, the CLI."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ferkit.classes import NUM_CLASSES

SPLIT_ORDER = ("Training", "PublicTest", "PrivateTest")


# Tests that start ferkit in a subprocess, train, or run a notebook: `pytest -m "not slow"` leaves them out.
SLOW_FIXTURES = {"run_ferkit", "inspect_wandb"}
SLOW_FILES = {"test_train.py", "test_notebook.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def ferkit_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `$FERKIT_CACHE_DIR` for the whole session (never ~/.cache): the real data is parsed once."""
    path = tmp_path_factory.mktemp("ferkit-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERKIT_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def real_data_path(pytestconfig: pytest.Config) -> Path:
    """The real fer2013.csv(.gz) from $FERKIT_DATA (relative to where pytest was started); else skip."""
    env = os.environ.get("FERKIT_DATA")
    if not env:
        pytest.skip("FERKIT_DATA is not set (e.g. FERKIT_DATA=../shared/data/fer2013.csv.gz): no real data")
    path = (Path(pytestconfig.invocation_params.dir) / Path(env).expanduser()).resolve()
    if not path.exists():
        pytest.skip(f"FERKIT_DATA={env} does not exist ({path})")
    return path


@pytest.fixture(scope="session")
def real_ferplus_path(real_data_path: Path, pytestconfig: pytest.Config) -> Path:
    """FER+ fer2013new.csv: $FERKIT_FERPLUS, else beside the real data; else skip."""
    env = os.environ.get("FERKIT_FERPLUS")
    base = real_data_path if real_data_path.is_dir() else real_data_path.parent
    path = Path(pytestconfig.invocation_params.dir) / env if env else base / "fer2013new.csv"
    if not path.is_file():
        pytest.skip(f"no FER+ file at {path} (set FERKIT_FERPLUS)")
    return path.resolve()


@pytest.fixture(scope="session")
def real_dataset(real_data_path: Path, ferkit_cache_dir: Path):
    """The full real dataset, loaded once per session (through the session cache)."""
    from ferkit.data import load_dataset

    return load_dataset(real_data_path)


@dataclass
class FerRows:
    """What a generated CSV holds, to compare a reader's result against."""

    path: Path
    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # int64 (N,), -1 when the file has no emotion column
    splits: np.ndarray  # str (N,)


def write_fer_csv(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray | None,
    splits: np.ndarray | None,
    columns: Sequence[str] = ("emotion", "pixels", "Usage"),
    newline: str = "\n",
    quote_pixels: bool = False,
) -> Path:
    """Write rows in a FER2013 CSV form; `columns` (any order, names as written) choose the form.

    A path ending in .gz is gzip-compressed.
    """
    lines = [",".join(columns)]
    for i, img in enumerate(images):
        pixels = " ".join(map(str, img.reshape(-1).tolist()))
        values = {
            "emotion": str(int(labels[i])) if labels is not None else "",
            "pixels": f'"{pixels}"' if quote_pixels else pixels,
            "usage": str(splits[i]) if splits is not None else "",
        }
        lines.append(",".join(values[c.strip().lower()] for c in columns))
    data = (newline.join(lines) + newline).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def make_fer_csv() -> Callable[..., FerRows]:
    """Factory: `make_fer_csv(path, n_per_split=(14, 7, 7), columns=..., seed=0)` writes random faces.

    Labels cycle through the 7 classes inside each split (so 7k rows per split hold every class).
    Without a Usage column every row is Training; without an emotion column, unlabelled `test`.
    Extra keywords (`newline`, `quote_pixels`) go to `write_fer_csv`.
    """

    def make(
        path: Path,
        n_per_split: Sequence[int] = (14, 7, 7),
        columns: Sequence[str] = ("emotion", "pixels", "Usage"),
        seed: int = 0,
        **fmt,
    ) -> FerRows:
        names = [c.strip().lower() for c in columns]
        if "usage" not in names:
            n_per_split = (sum(n_per_split),)
        rng = np.random.default_rng(seed)
        n = sum(n_per_split)
        images = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
        labels = np.concatenate([np.arange(k) % NUM_CLASSES for k in n_per_split]).astype(np.int64)
        splits = np.repeat(np.array(SPLIT_ORDER[: len(n_per_split)]), n_per_split)
        if "emotion" not in names:
            labels = np.full(n, -1, np.int64)
            splits = np.full(n, "test")
        write_fer_csv(path, images, labels, splits, columns, **fmt)
        return FerRows(path, images, labels, splits)

    return make


@pytest.fixture(scope="session")
def tiny_real_csv(real_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fer2013.csv of REAL faces, for fast training tests: every split holds every class.

    The first 100 rows of each class in Training and 20 in PublicTest and PrivateTest (700/140/140),
    in their original order.
    """
    keep = []
    for split, per_class in zip(SPLIT_ORDER, (100, 20, 20), strict=True):
        for label in range(NUM_CLASSES):
            keep.append(
                np.flatnonzero((real_dataset.splits == split) & (real_dataset.labels == label))[:per_class]
            )
    rows = np.sort(np.concatenate(keep))
    path = tmp_path_factory.mktemp("tiny-real") / "fer2013.csv"
    return write_fer_csv(
        path, real_dataset.images[rows], real_dataset.labels[rows], real_dataset.splits[rows]
    )


def ferkit_train_cmd(data: Path, out: Path, *args: object) -> list[str]:
    """`python -m ferkit train --data DATA --output_dir OUT --save_best_to '' ARGS...` as an argv list."""
    base = [sys.executable, "-m", "ferkit", "train", "--data", str(data), "--output_dir", str(out)]
    return [*base, "--save_best_to", "", *map(str, args)]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> str:
    """A user mistake's ending: a non-zero exit (or exactly `code`), no traceback, and one
    `ferkit...error:` line on stderr holding every needle; returns that line."""
    assert proc.returncode != 0 if code is None else proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ferkit") and "error:" in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def run_ferkit() -> Callable[..., subprocess.CompletedProcess]:
    """Factory: `run_ferkit("data", "info", ..., cwd=None, env=None)` runs `python -m ferkit` for real.

    `env` entries are added to (value None: removed from) the current environment.
    """

    def run(
        *args: str, cwd: Path | None = None, env: dict[str, str | None] | None = None, timeout: float = 120
    ):
        full_env = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        return subprocess.run(
            [sys.executable, "-m", "ferkit", *map(str, args)],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def inspect_wandb() -> Callable[[Path], dict[str, list[dict]]]:
    """Factory: what the only offline W&B run under an output folder REALLY logged, by record type.

    Reads `wandb leet inspect --json <run dir>` (one JSON record per line, each with a `type`) and returns
    e.g. `{"run": [...], "history": [...], "artifact": [...], "summary": [...], "exit": [...]}`.
    """

    def inspect(output_dir: Path) -> dict[str, list[dict]]:
        (run_dir,) = (output_dir / "wandb").glob("offline-run-*")
        wandb_bin = Path(sys.executable).parent / "wandb"
        out = subprocess.run(
            [str(wandb_bin), "leet", "inspect", "--json", str(run_dir)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        grouped: dict[str, list[dict]] = {}
        for line in out.splitlines():
            rec = json.loads(line)
            grouped.setdefault(rec["type"], []).append(rec.get(rec["type"], rec))
        return grouped

    return inspect


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pth of a real (tiny) `ferkit train` run on `tiny_real_csv`: 2 epochs of a few batches."""
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    args = [
        "--epochs",
        "2",
        "--batch_size",
        "32",
        "--limit_batches",
        "4",
        "--wandb",
        "disabled",
        "--no-progress",
    ]
    cmd = ferkit_train_cmd(tiny_real_csv, out, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out / "best.pth"
