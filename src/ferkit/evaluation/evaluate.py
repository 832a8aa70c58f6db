"""`ferkit evaluate` and `ferkit ensemble`: exact metrics of a checkpoint or ensemble on one split."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.classes import CLASS_NAMES
from ferkit.data.dataset import FerDataset
from ferkit.errors import FerkitError
from ferkit.metrics import classification_report
from ferkit.runtime.explain import check_explainable
from ferkit.runtime.loading import load_predictor, save_ensemble_spec
from ferkit.runtime.predictor import Predictor, combine, fit_weights, flatten
from ferkit.utils.io import atomic_write
from ferkit.utils.paths import timestamped_run_dir


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise FerkitError(f"--batch_size {batch_size}: must be at least 1")


def evaluate_model(
    model_path: str | None,
    ds: FerDataset,
    split: str,
    tta: str | None = None,
    batch_size: int = 512,
    device: str = "auto",
    precision: str = "fp32",
    backend: str = "torch",
) -> tuple[dict[str, Any], FerDataset, np.ndarray]:
    """Report, faces and probabilities of a checkpoint or ensemble spec on the labelled rows of `split`.

    `tta` None means the spec's default (none for a checkpoint); `precision` as `load_predictor` takes it;
    `backend` "onnx": `model_path` is an `.onnx` file from `ferkit export`, run on ONNX Runtime.
    """
    from ferkit.runtime.loading import load_model

    check_batch_size(batch_size)
    predictor, default_tta, path = load_model(model_path, backend, device, precision)
    tta = tta or default_tta
    data = ds.split(split, labelled_only=True)
    probs = predictor.predict(data.images, tta, batch_size)
    report = {"model_path": path, "split": split, "tta": tta, "precision": precision}
    if backend == "onnx":  # ONNX Runtime runs the graph as exported: float32, or int8 (`export --quantize`)
        report |= {
            "backend": backend,
            "precision": "int8" if predictor.metadata.get("quantized") == "int8" else "fp32",
        }
    return report | classification_report(data.labels, probs, CLASS_NAMES), data, probs


def evaluate_ensemble(
    model_paths: list[str],
    ds: FerDataset,
    split: str,
    weights: str = "uniform",
    tta: str = "none",
    batch_size: int = 512,
    device: str = "auto",
    save: str | None = None,
    precision: str = "fp32",
) -> tuple[dict[str, Any], FerDataset, np.ndarray]:
    """Soft voting over models (checkpoints, specs, cards or shipped names; each one vote, however many
    networks it holds); weights uniform or fitted on PublicTest; each member reported too."""
    check_batch_size(batch_size)
    if not model_paths:
        raise FerkitError("an ensemble needs at least one --model_paths model")
    members = [load_predictor(p, device, precision)[0] for p in model_paths]
    public = ds.split("PublicTest", labelled_only=True)
    fitted = ensemble_weights(
        weights,
        len(members),
        lambda: [m.predict(public.images, tta, batch_size) for m in members],
        public.labels,
    )
    fitted = fitted / fitted.sum()
    data = ds.split(split, labelled_only=True)
    member_probs = [m.predict(data.images, tta, batch_size) for m in members]
    probs = combine(member_probs, fitted)
    reports = member_reports(list(map(str, model_paths)), members, member_probs, data.labels)
    for member, w in zip(reports, fitted, strict=True):
        member["weight"] = float(w)
    report = {
        "model_path": "ensemble of " + ", ".join(map(str, model_paths)),
        "split": split,
        "tta": tta,
        "precision": precision,
    }
    report |= {
        "weights": weights,
        **classification_report(data.labels, probs, CLASS_NAMES),
        "members": reports,
    }
    if save:
        origin = "PublicTest" if weights == "fit" else "uniform"
        save_ensemble_spec(Path(save), list(map(str, model_paths)), fitted, tta, origin)
        report["saved"] = str(save)
    return report, data, probs


def write_predictions(path: Path, data: FerDataset, probs: np.ndarray) -> None:
    """One row per face in source order: index (0-based source row), true, pred, one probability per class."""
    order = np.argsort(data.indices, kind="stable")
    with atomic_write(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "true", "pred", *CLASS_NAMES])
        for i in order:
            writer.writerow(
                [
                    int(data.indices[i]),
                    CLASS_NAMES[data.labels[i]],
                    CLASS_NAMES[int(probs[i].argmax())],
                    *(f"{p:.9g}" for p in probs[i]),
                ]
            )


def member_reports(
    paths: list[str], members: list[Predictor], member_probs: list[np.ndarray], labels: np.ndarray
) -> list[dict]:
    """Accuracy and macro-F1 of each ensemble member on the same faces."""
    out = []
    for path, m, p in zip(paths, members, member_probs, strict=True):
        r = classification_report(labels, p, CLASS_NAMES)
        out.append({"path": path, "arch": m.arch, "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]})
    return out


def ensemble_weights(
    mode: str,
    count: int,
    public_probs: list[np.ndarray] | Callable[[], list[np.ndarray]],
    public_labels: np.ndarray,
) -> np.ndarray:
    """`count` members' weights: uniform, or fitted on their PublicTest probabilities (`public_probs`: the
    list, or a function computing it, called only then; never PrivateTest's, whatever split is reported)."""
    if mode == "uniform":
        return np.ones(count)
    if mode != "fit":
        raise FerkitError(f"--weights {mode!r}: expected uniform or fit")
    return fit_weights(public_probs() if callable(public_probs) else public_probs, public_labels)


def format_report(r: dict[str, Any]) -> str:
    """A human-readable version of an evaluation report."""
    lines = [
        f"{r['model_path']} on {r['split']} (tta: {r['tta']}, {r['precision']}"
        + (f", {r['backend']}" if "backend" in r else "")
        + f"): {r['num_images']} images",
        f"accuracy {r['accuracy']:.2%}   macro-F1 {r['macro_f1']:.4f}   ECE {r['ece']:.4f}",
    ]
    for m in r.get("members", []):
        lines.append(
            f"  member {m['path']} ({m['arch']}, weight {m['weight']:.3f}): accuracy {m['accuracy']:.2%}"
        )
    lines += ["", f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for name, m in r["per_class"].items():
        lines.append(
            f"{name:<10}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>9}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * 10 + "".join(f"{c[:7]:>8}" for c in CLASS_NAMES))
    for name, row in zip(CLASS_NAMES, r["confusion_matrix"], strict=True):
        lines.append(f"{name:<10}" + "".join(f"{n:>8}" for n in row))
    return "\n".join(lines)


def publish(
    report: dict[str, Any],
    data: FerDataset,
    probs: np.ndarray,
    *,
    predictions: str | None = None,
    report_dir: str | None = None,
    wandb: str = "auto",
    output_dir: str | None = None,
) -> None:
    """Write what was asked for: the predictions CSV, the report folder, and the W&B `evaluate` job."""
    if predictions:
        write_predictions(Path(predictions), data, probs)
        report["predictions"] = predictions
    if report_dir:
        from ferkit.evaluation.report import write_report

        title = f"{report['model_path']} on {report['split']} (tta {report['tta']})"
        summary = write_report(
            Path(report_dir),
            report,
            probs,
            data.labels,
            data.images,
            data.indices,
            CLASS_NAMES,
            title,
            predictor=explainable_model(report),
        )
        report["report"] = str(summary)
    if wandb != "disabled":
        track_evaluation(
            report, data, probs, wandb, Path(output_dir or report_dir or timestamped_run_dir("evaluate"))
        )


def explainable_model(report: dict[str, Any]) -> Predictor | None:
    """The PyTorch model a report is of (an ensemble run's members with their weights), on the CPU, for the
    mistakes page's class activation maps; None for an ONNX model or without the grad-cam package."""
    if report.get("backend") == "onnx":
        return None
    if "weights" in report and "members" in report:
        parts = [load_predictor(m["path"], "cpu")[0] for m in report["members"]]
        predictor: Predictor = flatten(parts, np.array([m["weight"] for m in report["members"]]))
    else:
        predictor = load_predictor(report["model_path"], "cpu")[0]
    try:
        check_explainable(predictor)
    except FerkitError:
        return None
    return predictor


def track_evaluation(
    report: dict[str, Any], data: FerDataset, probs: np.ndarray, mode: str, out: Path
) -> None:
    """A W&B `evaluate` job: the checkpoint as input (lineage), metrics, confusion matrix, mistakes table."""
    from ferkit.evaluation.report import most_confident_mistakes
    from ferkit.tracking import Tracker

    split = report["split"]
    config = {k: report[k] for k in ("model_path", "split", "tta")} | {"num_images": report["num_images"]}
    tracker = Tracker(out, config, mode=mode, job_type="evaluate", tags=["evaluate", split, report["tta"]])
    for member in report.get("members", [{"path": report["model_path"]}]):
        tracker.use_model(member["path"])
    tracker.log_summary(
        {
            f"{split}/accuracy": report["accuracy"],
            f"{split}/macro_f1": report["macro_f1"],
            f"{split}/ece": report["ece"],
        }
    )
    preds = probs.argmax(1)
    tracker.log_confusion_matrix(data.labels, preds, CLASS_NAMES, title=f"{split}_confusion_matrix")
    rows = most_confident_mistakes(probs, data.labels)
    tracker.log_predictions(data.images[rows], data.labels[rows], probs[rows], CLASS_NAMES, key="mistakes")
    tracker.finish()
