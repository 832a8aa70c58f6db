"""Evaluate a checkpoint on a split: accuracy, macro-F1, per-class metrics, confusion matrix."""

from __future__ import annotations

from typing import Any

import torch

from ferkit.checkpoint import model_from_checkpoint
from ferkit.classes import CLASS_NAMES
from ferkit.data.dataset import FerDataset
from ferkit.data.transforms import BatchTransform
from ferkit.engine import autocast_dtype, predict_probs, select_device
from ferkit.errors import FerkitError
from ferkit.metrics import classification_report


def evaluate_checkpoint(
    model_path: str,
    ckpt: dict[str, Any],
    ds: FerDataset,
    split: str,
    batch_size: int = 512,
    device: str = "auto",
) -> dict[str, Any]:
    """Metrics of the checkpoint `ckpt` (read from `model_path`) on the labelled rows of `split`."""
    if list(ckpt["class_names"]) != list(CLASS_NAMES):
        raise FerkitError(
            f"{model_path}: model classes {ckpt['class_names']} do not match FER2013's {list(CLASS_NAMES)}"
        )
    if batch_size < 1:
        raise FerkitError(f"--batch_size {batch_size}: must be at least 1")
    data = ds.split(split, labelled_only=True)
    dev = select_device(device)
    model = model_from_checkpoint(ckpt, model_path).to(dev)
    tf = BatchTransform(tuple(ckpt["input_size"]), tuple(ckpt["mean"]), tuple(ckpt["std"]))
    probs = predict_probs(
        model, torch.from_numpy(data.images).to(dev), tf, batch_size, autocast_dtype("fp32", dev)
    )
    report = classification_report(data.labels, probs.numpy(), CLASS_NAMES)
    return {"model_path": str(model_path), "arch": ckpt["arch"], "split": split, **report}


def format_report(r: dict[str, Any]) -> str:
    """A human-readable version of `evaluate_checkpoint`'s report."""
    lines = [
        f"{r['model_path']} ({r['arch']}) on {r['split']}: {r['num_images']} images",
        f"accuracy {r['accuracy']:.2%}   macro-F1 {r['macro_f1']:.4f}   ECE {r['ece']:.4f}",
        "",
        f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
    for name, m in r["per_class"].items():
        lines.append(
            f"{name:<10}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>9}"
        )
    lines += [
        "",
        "confusion matrix (rows: true, columns: predicted)",
        " " * 10 + "".join(f"{c[:7]:>8}" for c in CLASS_NAMES),
    ]
    for name, row in zip(CLASS_NAMES, r["confusion_matrix"], strict=True):
        lines.append(f"{name:<10}" + "".join(f"{n:>8}" for n in row))
    return "\n".join(lines)
