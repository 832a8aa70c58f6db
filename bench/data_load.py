"""Benchmark: loading FER2013 with ferkit (first load, cached load) against the usual pandas recipe.

Run by hand, not a test:

    FERKIT_DATA=../shared/data/fer2013.csv.gz .venv/bin/python bench/data_load.py [--repeat 3]

Times, best of --repeat runs each, in this one process on the same file:
  1. ferkit first load: `load_dataset(path)` with an empty temporary cache (hash, parse, store);
  2. ferkit cached load: `load_dataset(path)` again;
  3. pandas, as in FER tutorials: `pd.read_csv(path)`, `df.pixels.str.split()`, `np.array(..., np.uint8)`.
Exits 1 when a target fails: first load no slower than pandas, cached load >= 10x faster than pandas.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ferkit.data import load_dataset
from ferkit.errors import FerkitError

CACHED_SPEEDUP_TARGET = 10.0


def best_of(
    repeat: int, run: Callable[[], object], setup: Callable[[], None] | None = None
) -> tuple[float, object]:
    """The fastest of `repeat` timed calls of `run` (each after an untimed `setup`), and its last result."""
    times, result = [], None
    for _ in range(repeat):
        if setup:
            setup()
        result = None
        gc.collect()
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def pandas_load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The common tutorial recipe."""
    import pandas as pd

    df = pd.read_csv(path)
    images = np.array(df.pixels.str.split().tolist(), dtype=np.uint8).reshape(-1, 48, 48)
    return images, df.emotion.to_numpy(), df.Usage.to_numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=os.environ.get("FERKIT_DATA"), help="fer2013.csv(.gz) ($FERKIT_DATA)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each method; the best counts (3)")
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("no data: pass --data PATH or set FERKIT_DATA")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    path = Path(args.data)
    if not path.is_file():
        parser.error(f"{path}: not a file")
    try:
        import pandas as pd
    except ImportError:
        parser.error("pandas is not installed: pip install -e '.[dev]'")

    with tempfile.TemporaryDirectory(prefix="ferkit-bench-") as tmp:
        caches = iter(range(args.repeat))

        def fresh_cache() -> None:
            os.environ["FERKIT_CACHE_DIR"] = str(Path(tmp) / f"cache{next(caches)}")

        try:
            first, ds = best_of(args.repeat, lambda: load_dataset(path), setup=fresh_cache)
            cached, ds = best_of(args.repeat, lambda: load_dataset(path))
            no_cache, _ = best_of(args.repeat, lambda: load_dataset(path, cache=False))
        except FerkitError as e:
            print(f"data_load: error: {e}", file=sys.stderr)
            return 1
    pandas, (images, labels, usage) = best_of(args.repeat, lambda: pandas_load(path))
    same = (
        np.array_equal(images, ds.images)
        and np.array_equal(labels, ds.labels)
        and np.array_equal(usage.astype(str), ds.splits)
    )

    size = path.stat().st_size / 2**20
    print(f"{path} ({size:.1f} MiB, {len(ds)} rows), best of {args.repeat} runs")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'method':<44}{'seconds':>9}{'vs pandas':>11}")
    rows = [
        ("ferkit first load (empty cache)", first),
        ("ferkit cached load", cached),
        ("ferkit load, cache=False (parse only)", no_cache),
        ("pandas read_csv + str.split + np.array", pandas),
    ]
    for name, seconds in rows:
        print(f"{name:<44}{seconds:>9.3f}{pandas / seconds:>10.1f}x")
    print(f"same images, labels and splits as pandas: {'yes' if same else 'NO'}")

    failures = []
    if first > pandas:
        failures.append(f"first load {first:.3f}s is slower than pandas {pandas:.3f}s")
    if pandas / cached < CACHED_SPEEDUP_TARGET:
        failures.append(
            f"cached load is {pandas / cached:.1f}x faster than pandas, target {CACHED_SPEEDUP_TARGET:.0f}x"
        )
    if not same:
        failures.append("ferkit and pandas disagree on the data")
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print(f"targets met: first load <= pandas, cached >= {CACHED_SPEEDUP_TARGET:.0f}x faster than pandas")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
