"""An evaluation report as pictures: confusion matrix, per-class bars, reliability, mistakes, summary.md."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.errors import FerkitError
from ferkit.metrics import calibration_bins
from ferkit.runtime.explain import class_activation_maps, overlay
from ferkit.utils.plot import save_figure, subplots


def heading(fig: Any, title: str, what: str) -> None:
    """The figure's title: the report title (wrapped to the figure's width) above what the figure shows."""
    wrapped = textwrap.fill(title, max(30, int(fig.get_figwidth() * 9)), break_on_hyphens=False)
    fig.suptitle(f"{wrapped}\n{what}", fontsize=11)


def most_confident_mistakes(probs: np.ndarray, labels: np.ndarray, per_class: int = 6) -> np.ndarray:
    """Positions of the most confident wrong predictions: up to `per_class` per true class, class by class,
    most confident first (ties in row order)."""
    order = np.argsort(-probs.max(1), kind="stable")
    wrong = order[probs.argmax(1)[order] != labels[order]]
    return np.concatenate([wrong[labels[wrong] == c][:per_class] for c in range(probs.shape[1])])


def plot_confusion_matrix(report: dict, class_names: Sequence[str], title: str, out: Path) -> Path:
    """Counts and row-normalised (recall) confusion matrices side by side, every cell annotated."""
    cm = np.asarray(report["confusion_matrix"], np.int64)
    support = cm.sum(1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)
    n = len(class_names)
    fig, axes = subplots(1, 2, figsize=(15, 6.8))
    panels = (
        (cm, max(int(cm.max()), 1), "Counts", lambda v: f"{v:d}", lambda v, _: f"{v:.0f}"),
        (
            norm,
            1.0,
            "Normalised by true class (rows sum to 100%)",
            lambda v: f"{v:.0%}",
            lambda v, _: f"{v:.0%}",
        ),
    )
    for ax, (values, vmax, name, cell, tick) in zip(axes, panels, strict=True):
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        for i in range(n):
            for j in range(n):
                dark = values[i, j] / vmax > 0.55
                ax.text(
                    j,
                    i,
                    cell(values[i, j]),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if dark else "black",
                )
        ax.set_xticks(range(n), class_names, rotation=35, ha="right")
        ax.set_yticks(range(n), [f"{c} ({s})" for c, s in zip(class_names, support[:, 0], strict=True)])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class (support)")
        ax.set_title(name, fontsize=11)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format=tick)
    heading(fig, title, f"Confusion matrix: {report['num_images']} images, accuracy {report['accuracy']:.2%}")
    fig.tight_layout()
    return save_figure(fig, out)


def plot_per_class(report: dict, class_names: Sequence[str], title: str, out: Path) -> Path:
    """Grouped bars of precision, recall and F1 per class; support under each class name."""
    per_class = report["per_class"]
    x = np.arange(len(class_names))
    width = 0.27
    fig, ax = subplots(figsize=(11, 5.5))
    colors = ("#4C72B0", "#DD8452", "#55A868")
    for offset, key, color in zip((-width, 0.0, width), ("precision", "recall", "f1"), colors, strict=True):
        values = [per_class[c][key] for c in class_names]
        bars = ax.bar(x + offset, values, width, label="F1" if key == "f1" else key, color=color)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.axhline(
        report["macro_f1"],
        color="0.3",
        linestyle="--",
        linewidth=1,
        label=f"macro-F1 {report['macro_f1']:.3f}",
    )
    ax.set_xticks(x, [f"{c}\n(n={per_class[c]['support']})" for c in class_names])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.set_xlabel("true class (number of images)")
    heading(fig, title, f"Per-class precision, recall and F1 (accuracy {report['accuracy']:.2%})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_reliability(report: dict, probs: np.ndarray, labels: np.ndarray, title: str, out: Path) -> Path:
    """Accuracy against confidence per bin with the diagonal; image counts per bin underneath."""
    b = calibration_bins(probs, labels)
    edges, width = b["edges"], 1.0 / len(b["count"])
    centers = edges[:-1] + width / 2
    seen = b["count"] > 0
    fig, (ax, hist) = subplots(2, 1, figsize=(6.5, 7.5), sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    ax.bar(centers[seen], b["accuracy"][seen], width, color="#4C72B0", edgecolor="white", label="accuracy")
    ax.bar(
        centers[seen],
        b["confidence"][seen] - b["accuracy"][seen],
        width,
        bottom=b["accuracy"][seen],
        color="#C44E52",
        alpha=0.35,
        edgecolor="#C44E52",
        hatch="//",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in bin")
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    heading(fig, title, f"Reliability: ECE {report['ece']:.4f} ({len(b['count'])} confidence bins)")
    hist.bar(centers, b["count"], width, color="0.55", edgecolor="white")
    hist.set_xlabel("confidence (highest predicted probability)")
    hist.set_ylabel("images")
    for a in (ax, hist):
        a.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_mistakes(
    probs: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    indices: np.ndarray,
    class_names: Sequence[str],
    title: str,
    out: Path,
    k: int = 6,
    heat: np.ndarray | None = None,
) -> Path:
    """One row per true class: its k most confident wrong predictions, with prediction and source row;
    with `heat` (the class activation maps of the predicted classes, in `most_confident_mistakes` order),
    each face with its map over it."""
    rows = most_confident_mistakes(probs, labels, k)
    maps = {} if heat is None else {int(r): h for r, h in zip(rows, heat, strict=True)}
    wrong = probs.argmax(1) != labels
    n = len(class_names)
    fig, axes = subplots(n, k, figsize=(1.75 * k + 1.3, 2.1 * n), squeeze=False)
    for c, name in enumerate(class_names):
        picks = rows[labels[rows] == c]
        for j, ax in enumerate(axes[c]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(picks):
                i = picks[j]
                p = int(probs[i].argmax())
                if i in maps:
                    ax.imshow(overlay(images[i], maps[i], size=96))
                else:
                    ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
                ax.set_xlabel(f"pred {class_names[p]} (p={probs[i, p]:.2f})\nrow {indices[i]}", fontsize=8)
        axes[c][0].set_ylabel(
            f"{name}\n{(wrong & (labels == c)).sum()} of {(labels == c).sum()}\nwrong",
            rotation=0,
            ha="right",
            va="center",
            fontsize=10,
        )
    what = " (heat: where the model saw the predicted class, Grad-CAM)" if maps else ""
    heading(fig, title, f"Most confident mistakes per true class (up to {k}){what}")
    fig.tight_layout()
    return save_figure(fig, out)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def summary_markdown(report: dict, class_names: Sequence[str], title: str, explained: bool = False) -> str:
    """The report's numbers and tables in Markdown, with the four figures linked relatively."""
    maps = (
        " Over each face, the class activation map (Grad-CAM) of the predicted class: where the model "
        "found its evidence."
        if explained
        else ""
    )
    per_class = report["per_class"]
    lines = [
        f"# {title}",
        "",
        f"- images: {report['num_images']}",
        f"- accuracy: {report['accuracy']:.2%}",
        f"- macro-F1: {report['macro_f1']:.4f}",
        f"- ECE: {report['ece']:.4f} (equal-width confidence bins)",
        "",
        "## Per class",
        "",
        *_markdown_table(
            ("class", "precision", "recall", "F1", "support"),
            [
                (
                    c,
                    *(f"{per_class[c][key]:.3f}" for key in ("precision", "recall", "f1")),
                    per_class[c]["support"],
                )
                for c in class_names
            ],
        ),
        "",
        "![Per-class precision, recall and F1](per_class.png)",
        "",
        "## Confusion matrix",
        "",
        "Rows: true class; columns: predicted class.",
        "",
        *_markdown_table(
            ("true \\ predicted", *class_names),
            [(c, *row) for c, row in zip(class_names, report["confusion_matrix"], strict=True)],
        ),
        "",
        "![Confusion matrix](confusion_matrix.png)",
        "",
        "## Calibration",
        "",
        "![Reliability diagram](reliability.png)",
        "",
        "## Most confident mistakes",
        "",
        "Per true class, the wrong predictions the model was surest of (source row under each face)." + maps,
        "",
        "![Most confident mistakes](mistakes.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    report: dict,
    probs: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    indices: np.ndarray,
    class_names: Sequence[str],
    title: str,
    k: int = 6,
    predictor: Any = None,
) -> Path:
    """Write the four figures and summary.md (returned) for `report` = metrics.classification_report(...).

    `probs`, `labels`, `images` (uint8 N x 48 x 48) and `indices` (source rows) are row-aligned. With
    `predictor` (the PyTorch model the probabilities are of), the mistakes page shows each face's class
    activation map of its predicted class (`ferkit.runtime.explain`).
    """
    out_dir = Path(out_dir)
    probs, labels = np.asarray(probs), np.asarray(labels)
    if not len(probs) == len(labels) == len(images) == len(indices):
        raise ValueError(
            f"probs, labels, images, indices: {len(probs)}, {len(labels)}, {len(images)}, {len(indices)} rows"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FerkitError(f"{out_dir}: cannot create the report folder ({e.strerror or e})") from None
    plot_confusion_matrix(report, class_names, title, out_dir / "confusion_matrix.png")
    plot_per_class(report, class_names, title, out_dir / "per_class.png")
    plot_reliability(report, probs, labels, title, out_dir / "reliability.png")
    heat = None
    if predictor is not None:
        rows = most_confident_mistakes(probs, labels, k)
        heat = class_activation_maps(predictor, np.asarray(images)[rows], probs[rows].argmax(1))
    plot_mistakes(probs, labels, images, indices, class_names, title, out_dir / "mistakes.png", k, heat)
    summary = out_dir / "summary.md"
    try:
        summary.write_text(summary_markdown(report, class_names, title, heat is not None), encoding="utf-8")
    except OSError as e:
        raise FerkitError(f"{summary}: cannot write the summary ({e.strerror or e})") from None
    return summary
