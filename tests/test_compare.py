"""Comparing real tiny training runs: the table's numbers come from the run files, curves, bad folders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit.errors import FerkitError
from ferkit.evaluation.compare import compare_runs, format_table, plot_curves, private_accuracy
from ferkit.evaluation.evaluate import evaluate_model

# one batch of 16 per epoch, validation on 64 PublicTest faces: seconds per run
FAST = ["--batch_size", "16", "--eval_batch_size", "64", "--limit_batches", "1", "--wandb", "disabled"]
FAST += ["--save_best_to", "", "--no-progress"]
SGD_RESTARTS = ["--optimizer", "sgd", "--lr", "0.05", "--scheduler", "restarts", "--restart_cycles", "2"]
RUNS = {"adam": ["--epochs", "2"], "sgd": ["--epochs", "3", *SGD_RESTARTS]}


@pytest.fixture(scope="module")
def runs(tiny_real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real `ferkit train` run folders, trained once for the module."""
    root = tmp_path_factory.mktemp("runs")
    for name, args in RUNS.items():
        cmd = [sys.executable, "-m", "ferkit", "train", "--data", str(tiny_real_csv)]
        cmd += ["--output_dir", str(root / name), *FAST, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    return [root / name for name in RUNS]


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_rows_come_from_the_run_files(runs: list[Path]) -> None:
    rows = compare_runs(runs, private={"sgd": 0.25})
    assert [r["run"] for r in rows] == ["adam", "sgd"]
    assert [r["epochs"] for r in rows] == [2, 3]
    for run, row in zip(runs, rows, strict=True):
        lines = metrics(run)
        assert row["model"] == "cnn"
        assert row["best_public"] == max(float(r["val_acc"]) for r in lines)
        assert row["best_epoch"] == json.loads((run / "summary.json").read_text())["best_epoch"]
        assert row["wall_minutes"] == pytest.approx(sum(float(r["time"]) for r in lines) / 60)
    assert "sgd lr=0.05 restarts x2" in rows[1]["recipe"] and "adam lr=0.001 cosine" in rows[0]["recipe"]
    assert [r["private"] for r in rows] == [None, 0.25]
    assert compare_runs([runs[0]], private={str(runs[0]): 0.5})[0]["private"] == 0.5

    table = format_table(rows).splitlines()
    assert len(table) == 4 and table[0].startswith("run") and table[3].startswith("sgd")
    assert f"{rows[1]['best_public']:.2%} (epoch {rows[1]['best_epoch']})" in table[3]
    assert table[3].rstrip().endswith("25.00%") and table[2].rstrip().endswith("-")
    assert len({len(line.rstrip()) for line in table[1:]}) == 1  # aligned columns


def test_curves_png(runs: list[Path], tmp_path: Path) -> None:
    out = plot_curves(runs, tmp_path / "curves" / "val.png")
    img = np.asarray(Image.open(out).convert("L"), np.float64)
    assert min(img.shape) > 300 and img.std() > 10


def test_not_a_run_folder(runs: list[Path], tmp_path: Path) -> None:
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    (empty / "config.yaml").write_text("model: cnn\n")
    with pytest.raises(FerkitError, match=f"{empty}.*metrics.csv"):
        compare_runs([runs[0], empty])
    with pytest.raises(FerkitError, match=str(tmp_path / "missing")):
        plot_curves([tmp_path / "missing"], tmp_path / "x.png")


def test_private_accuracy_is_evaluate_on_private_test(runs: list[Path], tiny_real_csv: Path) -> None:
    from ferkit.data import load_dataset

    ds = load_dataset(tiny_real_csv)
    acc = private_accuracy(runs[1], ds)
    report, data, _ = evaluate_model(str(runs[1] / "best.pth"), ds, "PrivateTest")
    assert 0.0 <= acc <= 1.0 and acc == report["accuracy"]
    assert len(data) == 140 and (acc * 140) == pytest.approx(round(acc * 140))
