"""Run an ONNX file written by `ferkit export` on ONNX Runtime, with `CheckpointModel.predict`'s interface.

The graph takes gray faces as float32 `N x 1 x 48 x 48` in [0, 1] and returns softmax probabilities `N x 7`;
test-time augmentation stays outside it. onnxruntime and torch are imported only when a model runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ferkit.classes import CLASS_NAMES, NUM_CLASSES
from ferkit.errors import FerkitError
from ferkit.utils.paths import is_file

INPUT_NAME = "images"
OUTPUT_NAME = "probs"
INSTALL_HINT = "pip install 'ferkit[onnx]'"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise FerkitError(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def onnx_session(model: bytes | str, source: str, threads: int = 0):
    """An ONNX Runtime CPU session for a serialized model or a file; FerkitError naming `source`."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind error types (InvalidProtobuf, Fail, ...)
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise FerkitError(f"{source}: not a readable ONNX model ({e.__class__.__name__}: {first})") from None


def run_session(session, faces: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities for float32 (N, 1, 48, 48) faces, in batches."""
    out = [
        session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(faces[i : i + batch_size])})[0]
        for i in range(0, len(faces), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)


def faces_to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 48, 48) or (N, 1, 48, 48) -> float32 (N, 1, 48, 48) in [0, 1] (as `to_float`)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1:] != (1, 48, 48) or images.dtype != np.uint8:
        raise FerkitError(f"expected uint8 faces N x 48 x 48, got {images.dtype} {images.shape}")
    return images.astype(np.float32) / np.float32(255.0)


def check_crop_tta(crop_sizes: list[int], tta: str, source: str) -> None:
    """FerkitError when ten-crop TTA meets a crop model in a graph: the graph takes whole faces and crops
    their centre, so it cannot take the corner crops a crop model's ten-crop averages."""
    if tta == "tencrop" and any(crop_sizes):
        raise FerkitError(
            f"{source}: ten-crop TTA of a crop model (crop_size {max(crop_sizes)}) takes corner crops, which "
            "an ONNX graph of whole faces cannot; use --tta flip or none (ferkit ship --tta flip sets a "
            "card's default)"
        )


class OnnxPredictor:
    """An exported ferkit model on ONNX Runtime, with `CheckpointModel.predict`'s interface."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = str(path)
        p = Path(path)
        if not is_file(p):
            raise FerkitError(f"{p}: ONNX model not found")
        self.session = onnx_session(str(p), str(p), threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if (
            len(inputs) != 1
            or list(inputs[0].shape[1:]) != [1, 48, 48]
            or isinstance(inputs[0].shape[0], int)  # a fixed batch size: not `ferkit export`'s dynamic one
            or inputs[0].type != "tensor(float)"
            or len(outputs) != 1
            or list(outputs[0].shape[1:]) != [NUM_CLASSES]
        ):
            got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise FerkitError(
                f"{p}: not a ferkit face model (expects one float input N x 1 x 48 x 48 and "
                f"{NUM_CLASSES} outputs; has {got})"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.arch = self.metadata.get("arch", "onnx")
        self.default_tta = self.metadata.get("tta", "none")
        self.crop_sizes = self._crop_sizes(p)
        names = self.metadata.get("class_names")
        try:
            classes = json.loads(names) if names else list(CLASS_NAMES)
        except (ValueError, RecursionError):
            classes = None
        if classes != list(CLASS_NAMES):
            raise FerkitError(f"{p}: model classes {names} do not match FER2013's {list(CLASS_NAMES)}")

    def _crop_sizes(self, path: Path) -> list[int]:
        """The crop side of each network in the graph (0: whole faces), from the file's metadata (files of
        ferkit before crop models: none)."""
        try:
            sizes = json.loads(self.metadata.get("crop_sizes", "[]"))
        except (ValueError, RecursionError):
            sizes = None
        if not isinstance(sizes, list) or not all(isinstance(c, int) and 0 <= c < 48 for c in sizes):
            raise FerkitError(
                f"{path}: metadata crop_sizes {self.metadata['crop_sizes']!r} is not a list of sides"
            )
        return sizes

    def predict(self, images: np.ndarray, tta: str = "none", batch_size: int = 512) -> np.ndarray:
        """Probabilities (N, 7) as float64, in the order of `images` (uint8 N x 48 x 48); TTA averaged.
        FerkitError when they are not finite (a damaged graph), or for ten-crop TTA of crop models."""
        import torch

        from ferkit.data.transforms import tta_views  # torch: only once a model runs

        check_crop_tta(self.crop_sizes, tta, self.path)
        x = faces_to_float(images)
        out = []
        for i in range(0, len(x), batch_size):
            views = tta_views(torch.from_numpy(x[i : i + batch_size]), tta)
            probs = sum(
                self.session.run([self.output_name], {self.input_name: v.contiguous().numpy()})[0].astype(
                    np.float64
                )
                for v in views
            )
            out.append(probs / len(views))
        result = np.concatenate(out) if out else np.zeros((0, NUM_CLASSES))
        if not np.isfinite(result).all():
            raise FerkitError(
                f"{self.path}: the model gives probabilities that are not finite (a damaged graph?)"
            )
        return result


def load_onnx_predictor(path: str | Path, threads: int = 0) -> tuple[OnnxPredictor, str]:
    """An exported model and its default TTA (an ensemble spec's own), as `load_predictor` returns them."""
    predictor = OnnxPredictor(path, threads)
    return predictor, predictor.default_tta
