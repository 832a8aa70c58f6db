"""Compare training runs: recipe, time, best PublicTest accuracy, PrivateTest accuracy, learning curves."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ferkit.config import TrainConfig, resolve_config
from ferkit.data.dataset import FerDataset
from ferkit.errors import FerkitError
from ferkit.evaluation.evaluate import evaluate_model
from ferkit.utils.plot import save_figure, subplots

RUN_FILES = ("config.yaml", "metrics.csv")


def read_run(run_dir: Path) -> tuple[TrainConfig, list[dict[str, float]]]:
    """A run folder's resolved config and its metrics.csv rows (numbers); FerkitError if it is not a run."""
    run_dir = Path(run_dir)
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise FerkitError(f"{run_dir}: not a ferkit run folder (no {' or '.join(missing)})")
    cfg = resolve_config(str(run_dir / "config.yaml"), {})
    try:
        with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    except ValueError as e:
        raise FerkitError(f"{run_dir / 'metrics.csv'}: not a metrics table ({e})") from None
    if not rows or any({"epoch", "val_acc", "val_loss", "time"} - set(row) for row in rows):
        raise FerkitError(
            f"{run_dir / 'metrics.csv'}: no complete epoch rows (epoch, val_acc, val_loss, time)"
        )
    return cfg, rows


def recipe(cfg: TrainConfig) -> str:
    """A short description of a training recipe: model, optimizer, learning rate, schedule, regularisers."""
    parts = [cfg.model + (f" ({cfg.pretrained})" if cfg.pretrained else "")]
    schedule = f"restarts x{cfg.restart_cycles}" if cfg.scheduler == "restarts" else cfg.scheduler
    parts += [f"{cfg.optimizer} lr={cfg.lr:g}", schedule, f"aug={cfg.augment}"]
    extras = {
        "wd": cfg.weight_decay,
        "ls": cfg.label_smoothing,
        "mixup": cfg.mixup,
        "cutmix": cfg.cutmix,
        "ema": cfg.ema,
        "distill": cfg.distill if cfg.teacher else 0.0,
        "ferplus_votes": cfg.ferplus_votes,
    }
    parts += [f"{name}={value:g}" for name, value in extras.items() if value]
    if cfg.class_weights != "none":
        parts.append(f"weights={cfg.class_weights}")
    if cfg.labels != "fer2013":
        parts.append(cfg.labels + (" soft" if cfg.soft_labels else ""))
    return " ".join(parts)


def compare_runs(run_dirs: Sequence[Path], private: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per run folder; `private` maps a run (folder name or path as given) to PrivateTest accuracy.

    `best_public` is the highest PublicTest (validation) accuracy in metrics.csv, reached at `best_epoch`.
    """
    private = private or {}
    table = []
    for run_dir in map(Path, run_dirs):
        cfg, rows = read_run(run_dir)
        best = max(rows, key=lambda r: r["val_acc"])  # the first epoch reaching it, as training chooses
        table.append(
            {
                "run": run_dir.name,
                "model": cfg.model,
                "recipe": recipe(cfg),
                "epochs": int(rows[-1]["epoch"]),
                "wall_minutes": sum(r["time"] for r in rows) / 60,
                "best_public": best["val_acc"],
                "best_epoch": int(best["epoch"]),
                "private": private.get(str(run_dir), private.get(run_dir.name)),
            }
        )
    return table


def private_accuracy(run_dir: Path, ds: FerDataset, device: str = "auto") -> float:
    """PrivateTest accuracy of the run's best.pth, for reporting only (nothing is chosen on it)."""
    report, _, _ = evaluate_model(str(Path(run_dir) / "best.pth"), ds, "PrivateTest", device=device)
    return report["accuracy"]


def compare_table(
    run_dirs: Sequence[Path], load_data: Callable[[], FerDataset] | None = None, device: str = "auto"
) -> list[dict[str, Any]]:
    """`compare_runs` rows; with `load_data`, each run's PrivateTest accuracy too, on the data it returns
    (called only once every folder has been checked, so a wrong folder fails before any data loads)."""
    rows = compare_runs(run_dirs)
    if load_data is None:
        return rows
    ds = load_data()
    return compare_runs(run_dirs, {str(r): private_accuracy(r, ds, device) for r in map(Path, run_dirs)})


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """`compare_runs` rows as an aligned text table (accuracies in percent)."""
    header = ("run", "model", "recipe", "epochs", "minutes", "best PublicTest", "PrivateTest")
    cells = [
        (
            r["run"],
            r["model"],
            r["recipe"],
            str(r["epochs"]),
            f"{r['wall_minutes']:.1f}",
            f"{r['best_public']:.2%} (epoch {r['best_epoch']})",
            "-" if r["private"] is None else f"{r['private']:.2%}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]
    left = 3  # run, model and recipe are text, left-aligned; the numbers are right-aligned

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, cells)])


def plot_curves(run_dirs: Sequence[Path], out_png: Path) -> Path:
    """PublicTest (validation) accuracy and loss per epoch, one line per run, best epoch marked."""
    runs = [(Path(d).name, read_run(Path(d))[1]) for d in run_dirs]
    if not runs:
        raise FerkitError("no run folders to plot")
    fig, (acc_ax, loss_ax) = subplots(1, 2, figsize=(13, 5))
    for name, rows in runs:
        epochs = [r["epoch"] for r in rows]
        best = max(rows, key=lambda r: r["val_acc"])
        (line,) = acc_ax.plot(epochs, [r["val_acc"] for r in rows], marker=".", label=name)
        acc_ax.plot(best["epoch"], best["val_acc"], marker="*", markersize=12, color=line.get_color())
        loss_ax.plot(epochs, [r["val_loss"] for r in rows], marker=".", color=line.get_color(), label=name)
    acc_ax.set_title("PublicTest accuracy (star: best epoch)")
    acc_ax.set_ylabel("accuracy")
    acc_ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    loss_ax.set_title("PublicTest loss")
    loss_ax.set_ylabel("cross-entropy")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="run")
    fig.suptitle(f"Validation curves of {len(runs)} run{'s' if len(runs) != 1 else ''}")
    fig.tight_layout()
    return save_figure(fig, Path(out_png))
