"""Tracker: CSV/JSON always, W&B offline read back with `wandb leet inspect --json` (never online)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import wandb

from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError
from ferkit.tracking import Tracker, model_reference

WANDB_BIN = Path(sys.executable).parent / "wandb"


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh $HOME without W&B credentials or settings, module-wide (W&B's service outlives a test)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith(("WANDB_", "XDG_")) or v == "NETRC"]:
            mp.delenv(var)
        mp.setenv("HOME", str(home))
        yield home


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_invalid_mode_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FerkitError, match="bogus"):
        Tracker(tmp_path, {}, mode="bogus", enabled=False)
    monkeypatch.setenv("WANDB_MODE", "dryrun-ish")
    with pytest.raises(FerkitError, match="WANDB_MODE"):
        Tracker(tmp_path, {}, mode="auto")


def test_disabled_writes_csv_and_json_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with Tracker(out, {"lr": 0.1}, mode="disabled") as tracker:
        tracker.log_epoch({"epoch": 1, "train_loss": 1.5, "val_acc": 0.25})
        # A key first seen in epoch 2 widens the header; epoch 1 gets an empty cell.
        tracker.log_epoch({"epoch": 2, "train_loss": 1.0, "val_acc": 0.5, "lr": 0.01})
        tracker.log_summary({"best_val_acc": 0.5, "best_epoch": np.int64(2)})
        tracker.log_summary({"test_acc": np.float32(0.75)})
        tracker.log_confusion_matrix(np.array([0, 1, 1, 6]), np.array([0, 1, 2, 6]), CLASS_NAMES)  # W&B only
        with pytest.raises(ValueError, match="3 true labels but 2 predictions"):
            tracker.log_confusion_matrix(np.zeros(3, int), np.zeros(2, int), CLASS_NAMES)
        tracker.log_predictions(np.zeros((2, 48, 48), np.uint8), [0, 1], np.full((2, 7), 1 / 7), CLASS_NAMES)
        with pytest.raises(FileNotFoundError):
            tracker.log_model(out / "missing.pt")
        tracker.use_model(out / "missing.pt")  # W&B only

    header, rows = read_csv(out / "metrics.csv")
    assert header == ["epoch", "train_loss", "val_acc", "lr"]
    assert rows == [
        {"epoch": "1", "train_loss": "1.5", "val_acc": "0.25", "lr": ""},
        {"epoch": "2", "train_loss": "1.0", "val_acc": "0.5", "lr": "0.01"},
    ]
    assert json.loads((out / "summary.json").read_text()) == {
        "best_val_acc": 0.5,
        "best_epoch": 2,
        "test_acc": 0.75,
    }
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]
    assert "WANDB_DATA_DIR" not in os.environ


def test_wandb_mode_env_and_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with Tracker(tmp_path / "auto", {}) as tracker:  # mode="auto" follows WANDB_MODE
        tracker.log_epoch({"epoch": 1, "val_acc": 0.5})
    assert not (tmp_path / "auto" / "wandb").exists()

    with Tracker(tmp_path / "rank1", {}, mode="offline", enabled=False) as tracker:
        tracker.log_epoch({"epoch": 1, "val_acc": 0.5})
        tracker.log_summary({"test_acc": 0.5})
    assert not (tmp_path / "rank1").exists()


def test_resume_drops_later_epochs(tmp_path: Path) -> None:
    with Tracker(tmp_path, {}, mode="disabled") as tracker:
        for epoch in range(1, 5):
            tracker.log_epoch({"epoch": epoch, "val_acc": epoch / 10})
        with pytest.raises(ValueError, match="epoch 4 logged after epoch 4"):
            tracker.log_epoch({"epoch": 4, "val_acc": 0.0})

    tracker = Tracker(tmp_path, {}, mode="disabled", resume_epoch=2)
    assert [r["epoch"] for r in read_csv(tmp_path / "metrics.csv")[1]] == ["1", "2"]  # already truncated
    for epoch in range(3, 6):
        tracker.log_epoch({"epoch": epoch, "val_acc": epoch / 100, "time": 1.0})
    tracker.finish()

    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == ["epoch", "val_acc", "time"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [r["val_acc"] for r in rows] == ["0.1", "0.2", "0.03", "0.04", "0.05"]


def test_offline_end_to_end(tmp_path: Path, home: Path, inspect_wandb) -> None:
    out = tmp_path / "run"
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights" * 100)
    rng = np.random.default_rng(0)
    config = {"model": "resnet18", "lr": 0.1, "epochs": 2}
    with Tracker(out, config, mode="offline", tags=["test", "fer"], run_name="e2e") as tracker:
        for epoch in (1, 2):
            tracker.log_epoch({"epoch": epoch, "train_loss": 1 / epoch, "val_acc": 0.3 * epoch, "lr": 0.1})
        tracker.log_confusion_matrix(rng.integers(0, 7, 50), rng.integers(0, 7, 50), CLASS_NAMES)
        images = rng.integers(0, 256, (4, 48, 48), dtype=np.uint8)
        tracker.log_predictions(images, [0, 3, 5, 6], rng.dirichlet(np.ones(7), 4), CLASS_NAMES)
        tracker.log_model(checkpoint, metadata={"val_acc": 0.6})
        tracker.use_model(checkpoint)
        tracker.log_summary({"test_acc": 0.55})
        assert Path(os.environ["WANDB_DATA_DIR"]).is_relative_to(out)
    assert "WANDB_DATA_DIR" not in os.environ  # restored by finish()

    recs = inspect_wandb(out)
    (run,) = recs.get("run", [])
    assert run["project"] == "facial-expression-recognition" and run["tags"] == ["test", "fer"]
    assert config.items() <= run["config"]["update"].items()
    assert run["run_id"] == (out / "wandb_run_id.txt").read_text().strip()

    history = recs.get("history", [])
    epochs = [h["item"] for h in history if "train_loss" in h["item"]]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert {"val_acc", "lr"} <= epochs[0].keys()
    tables = {k.split(".")[0]: h["item"] for h in history for k in h["item"] if k.endswith("._type")}
    assert tables["confusion_matrix_table"]["confusion_matrix_table._type"] == "table-file"
    assert tables["val_predictions"]["val_predictions.nrows"] == 4
    assert tables["val_predictions"]["val_predictions.ncols"] == 3 + len(CLASS_NAMES)
    config_updates = {k: v for c in recs.get("config", []) for k, v in c["update"].items()}
    assert config_updates["input_model"] == str(checkpoint)
    assert "_wandb.visualize.confusion_matrix" in config_updates  # the chart, not just its table
    assert {"test_acc": 0.55} in [s["update"] for s in recs.get("summary", [])]

    (model,) = [a for a in recs.get("artifact", []) if a["type"] == "model"]
    assert model["name"] == "model-e2e" and set(model["aliases"]) == {"best", "latest"}
    assert json.loads(model["metadata"]) == {"val_acc": 0.6}
    staged = [e["local_path"] for a in recs.get("artifact", []) for e in a["manifest"]["contents"]]
    assert staged and all(Path(p).is_relative_to(out / "wandb") for p in staged)
    assert [e["exit_code"] for e in recs["exit"]] == [0]
    assert not list(home.rglob("*")), "W&B wrote to $HOME"


def test_offline_resume_keeps_run_id(tmp_path: Path) -> None:
    with Tracker(tmp_path, {"lr": 0.1}) as tracker:  # "auto" without credentials: offline
        tracker.log_epoch({"epoch": 1, "val_acc": 0.1})
        tracker.log_epoch({"epoch": 2, "val_acc": 0.2})
    run_id = (tmp_path / "wandb_run_id.txt").read_text().strip()

    with Tracker(tmp_path, {"lr": 0.1}, mode="offline", resume_epoch=1) as tracker:
        tracker.log_epoch({"epoch": 2, "val_acc": 0.25})
    assert (tmp_path / "wandb_run_id.txt").read_text().strip() == run_id
    run_dirs = [p.name for p in (tmp_path / "wandb").glob("offline-run-*")]
    assert len(run_dirs) == 2 and all(f"-{run_id}" in name for name in run_dirs)
    assert [r["val_acc"] for r in read_csv(tmp_path / "metrics.csv")[1]] == ["0.1", "0.25"]


def test_wandb_failures_fall_back_to_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], inspect_wandb
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("network unreachable\nsecond line")

    with monkeypatch.context() as mp:
        mp.setattr(wandb, "init", broken)
        tracker = Tracker(tmp_path / "init", {}, mode="online")
    tracker.log_epoch({"epoch": 1, "val_acc": 0.5})
    tracker.use_model(tmp_path / "missing.pt")
    tracker.finish()
    assert capsys.readouterr().err.splitlines() == [
        "warning: W&B could not start (RuntimeError: network unreachable); continuing with CSV/JSON only"
    ]
    assert (tmp_path / "init" / "metrics.csv").exists()

    tracker = Tracker(tmp_path / "log", {}, mode="offline")
    monkeypatch.setattr(wandb.Run, "log", broken)
    tracker.log_epoch({"epoch": 1, "val_acc": 0.5})
    tracker.log_epoch({"epoch": 2, "val_acc": 0.6})
    tracker.finish()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [
        "warning: W&B failed to log an epoch (RuntimeError: network unreachable); "
        "continuing with CSV/JSON only"
    ]
    assert len(read_csv(tmp_path / "log" / "metrics.csv")[1]) == 2
    assert [e["exit_code"] for e in inspect_wandb(tmp_path / "log")["exit"]] == [1]  # closed as failed


def test_without_wandb_installed_tracking_falls_back_to_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as if it were not installed
    tracker = Tracker(tmp_path, {}, mode="offline")
    tracker.log_epoch({"epoch": 1, "val_acc": 0.5})
    tracker.finish()
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: W&B could not start (ModuleNotFoundError: ")
    assert warning.endswith("continuing with CSV/JSON only") and not (tmp_path / "wandb").exists()
    assert [r["val_acc"] for r in read_csv(tmp_path / "metrics.csv")[1]] == ["0.5"]


@pytest.mark.parametrize("key", ["", "x" * 40])
def test_credentials_check_is_local(tmp_path: Path, key: str) -> None:
    """Run in a subprocess: a successful check logs the whole process in, and tests must stay offline."""
    env = {**os.environ, "HOME": str(tmp_path), "WANDB_API_KEY": key, "WANDB_CACHE_DIR": str(tmp_path)}
    code = "from ferkit.tracking import has_wandb_credentials; print(has_wandb_credentials())"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == str(bool(key)) and result.stderr == ""


def test_model_reference(tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    artifact = model_reference(checkpoint)
    assert isinstance(artifact, wandb.Artifact) and artifact.type == "model"
    assert artifact.name == f"model-{tmp_path.name}-best"
    assert [e.ref for e in artifact.manifest.entries.values()] == [checkpoint.as_uri()]
    assert model_reference("me/fer/model-e2e:best") == "me/fer/model-e2e:best"
