"""ferkit's public Python API, re-exported by `ferkit` itself: recognise expressions (`load`, `Recognizer`,
`Face`, `FER`), train (`train`), measure (`evaluate`) and read the data (`load_data`), each doing what the
command of the same name does.

Examples:
    >>> import ferkit
    >>> rec = ferkit.load()
    >>> [face.emotion for face in rec.predict("photo.jpg")]
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferkit.apps.detectors import Detector, create_detector
from ferkit.apps.fer_compat import FER
from ferkit.apps.recognizer import Face, Recognizer, backend_for, load_recognizer
from ferkit.config import FIELDS, resolve_config
from ferkit.data import FerDataset, load_dataset
from ferkit.errors import FerkitError
from ferkit.evaluation.evaluate import evaluate_model
from ferkit.models import create_model, list_models
from ferkit.training.loop import fit

__all__ = [
    "load",
    "Recognizer",
    "Face",
    "FER",
    "train",
    "RunResult",
    "evaluate",
    "load_data",
    "create_model",
    "list_models",
]


def load(
    model: str | Path | None = None,
    *,
    backend: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    tta: str | None = None,
    batch_size: int = 64,
    detector: str | Detector = "auto",
    min_face: int | None = None,
    align: bool = False,
) -> Recognizer:
    """A `Recognizer`: a model that finds the faces in images and tells their expressions.

    Args:
        model: the shipped default (None), a shipped model's name (`"ferkit-fer2013-fast"`), a checkpoint
            (`.pth`), an ensemble spec or a model card (`.json`), or an `.onnx` file from `ferkit export`.
        backend: "torch" or "onnx" (ONNX Runtime, CPU); None: onnx for an `.onnx` file, else torch.
        device: "auto" (CUDA when there is one), "cpu", "cuda" or "cuda:N".
        precision: "fp32" (what the model cards report), or "bf16" / "fp16" autocast (faster on CPUs
            with bf16 units; probabilities differ slightly).
        tta: test-time augmentation, "none", "flip" or "tencrop"; None: the model's own.
        batch_size: faces per model batch.
        detector: the face detector: "auto" (libfacedetection's CNN where its package is installed, else
            OpenCV's Haar cascade), "libfacedetection", "haar", or a `ferkit.apps.detectors.Detector`.
        min_face: the smallest face kept, in pixels (None: the detector's own limit).
        align: turn each face's crop so that its eyes are level, where the detector finds the eyes. Off by
            default: on PublicTest faces turned by up to 25 degrees it gained nothing (docs/findings.md).

    Raises:
        FerkitError: one line naming the model at fault (missing file, unknown name, not a model).

    Examples:
        >>> rec = ferkit.load("ferkit-fer2013-fast")
        >>> faces = rec.predict("photo.jpg")
    """
    if isinstance(detector, str):
        detector = create_detector(detector, min_face)
    rec = load_recognizer(
        model,
        backend=backend,
        device=device,
        precision=precision,
        tta=tta,
        batch_size=batch_size,
        detector=detector,
    )
    rec.align = align
    return rec


@dataclass(frozen=True)
class RunResult:
    """What `train` leaves: the run folder, its best checkpoint (chosen on PublicTest) and the summary
    `ferkit train` logs (`best_val_acc`, `best_epoch`, `epochs_run`, `val_macro_f1`, ...)."""

    output_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_val_acc: float
    summary: dict[str, Any] = field(hash=False, repr=False)


def train(config: str | Path | None = None, **overrides: Any) -> RunResult:
    """Train a model as `ferkit train` does: the defaults, then the YAML `config`, then `overrides`
    (any `ferkit train` option by its field name: `model="vgg"`, `epochs=30`, `output_dir="runs/vgg"`,
    `wandb="disabled"`, ...; see `ferkit.config.TrainConfig`).

    Raises:
        FerkitError: one line naming an unknown option, a bad value or a missing file.

    Examples:
        >>> result = ferkit.train(model="cnn", epochs=30, output_dir="runs/cnn")
        >>> rec = ferkit.load(result.best_checkpoint)
    """
    for name in overrides:
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (see ferkit.config.TrainConfig)"
            raise FerkitError(f"ferkit.train: unknown option {name!r}{hint}")
    summary = fit(resolve_config(str(config) if config else None, overrides))
    out = Path(summary["output_dir"])
    return RunResult(
        out, out / "best.pth", int(summary["best_epoch"]), float(summary["best_val_acc"]), summary
    )


def evaluate(
    model: str | Path | None = None,
    data: str | Path | FerDataset | None = None,
    split: str = "PrivateTest",
    tta: str | None = None,
    batch_size: int = 512,
    device: str = "auto",
    precision: str = "fp32",
    backend: str | None = None,
) -> dict[str, Any]:
    """The report `ferkit evaluate --format json` prints: `accuracy`, `macro_f1`, `ece`, `per_class`,
    `confusion_matrix`, `num_images`, ... of `model` (as `load` takes it; None: the shipped default) on
    the labelled faces of `split` of `data` (a path, a dataset from `load_data`, or None: as `load_data`).

    Examples:
        >>> report = ferkit.evaluate("ferkit-fer2013-fast", split="PrivateTest", tta="flip")
        >>> report["accuracy"], report["macro_f1"]
    """
    ds = data if isinstance(data, FerDataset) else load_data(data)
    path = str(model) if model is not None else None
    report, _, _ = evaluate_model(
        path, ds, split, tta, batch_size, device, precision, backend or backend_for(path)
    )
    return report


def load_data(
    path: str | Path | None = None,
    labels: str = "fer2013",
    ferplus: str | Path | None = None,
    skip_bad_rows: bool = False,
) -> FerDataset:
    """FER2013 in any of its forms (CSV, .csv.gz, Kaggle folders and archives, image folders), parsed
    once and cached. `path` None: `$FERKIT_DATA`, else `./data/fer2013.csv[.gz]`; `labels="ferplus"`:
    the FER+ majority labels (from `ferplus`, else `$FERKIT_FERPLUS`, else beside the data).

    Examples:
        >>> ds = ferkit.load_data()
        >>> test = ds.split("PrivateTest")
        >>> test.images.shape, test.labels.shape  # (3589, 48, 48) uint8, (3589,)
    """
    return load_dataset(path, skip_bad_rows=skip_bad_rows, labels=labels, ferplus=ferplus)
