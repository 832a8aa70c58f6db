"""Faces and their expressions from Python: a `Recognizer` reads images in any form (files, folders, PIL
images, numpy arrays, torch tensors), finds the faces, crops them the way FER2013 framed its faces and
classifies the crops of many images in shared batches; each answer is a `Face`. `ferkit predict` runs the
same crops and batches (`face_crops`, `FaceBatcher`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, overload

import numpy as np
import torch
from PIL import Image

from ferkit.apps.detectors import Detection, Detector, default_detector
from ferkit.apps.faces import (
    ALIGN_EYES,
    Box,
    crop_face,
    eye_angle,
    is_image,
    load_image,
    resize_gray,
    to_gray,
    upright_image,
)
from ferkit.apps.video import DEFAULT_FPS, VideoFrame, analyse
from ferkit.classes import CLASS_NAMES, NUM_CLASSES, TTA_MODES
from ferkit.errors import FerkitError
from ferkit.runtime.explain import class_activation_maps, overlay
from ferkit.runtime.loading import load_model

if TYPE_CHECKING:
    from ferkit.runtime.onnx import OnnxPredictor
    from ferkit.runtime.predictor import Predictor

# A path (str or Path; a folder stands for its images), a PIL image, a uint8 numpy array (H x W gray,
# H x W x 3 RGB) or a torch tensor (C x H x W or H x W; uint8, or float in [0, 1]).
ImageInput: TypeAlias = "str | Path | Image.Image | np.ndarray | torch.Tensor"


# ----------------------------------------------------------------------------- one face
def rounded_probabilities(p: Sequence[float] | np.ndarray, places: int = 4) -> dict[str, float]:
    """Class -> probability, rounded (the rounded values still sum to 1 within 7 * 0.5e-4)."""
    p = np.asarray(p, np.float64)
    p = p / p.sum()
    return {name: round(float(v), places) for name, v in zip(CLASS_NAMES, p, strict=True)}


@dataclass(frozen=True)
class Face:
    """One face found in an image, and its expression.

    Attributes:
        box: `(x, y, w, h)` in pixels of the upright image (EXIF orientation applied).
        emotion: the most probable class, one of `ferkit.classes.CLASS_NAMES` ("Happy", ...).
        probabilities: class name -> the model's probability, all 7 classes in FER2013's order.
        score: the face detector's confidence; None where the detector gives none (OpenCV's Haar
            cascade) or with `detect=False`.
        track: which track the face belongs to across video frames; None for still images.

    Examples:
        >>> face = ferkit.load("ferkit-fer2013-fast").predict("photo.jpg")[0]
        >>> face.emotion, face.box, face.probabilities["Happy"]  # e.g. "Happy", (40, 120, 160, 160), 0.93
    """

    box: tuple[int, int, int, int]
    emotion: str
    probabilities: dict[str, float] = field(hash=False)
    score: float | None = None
    track: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The face as `ferkit predict --format json` writes it: `{"box": [x, y, w, h], "emotion",
        "probabilities"}` (rounded to 4 places), plus `"score"` and `"track"` where they are not None.

        Examples:
            >>> json.dumps([face.to_dict() for face in faces])
        """
        out: dict[str, Any] = {
            "box": [int(v) for v in self.box],
            "emotion": self.emotion,
            "probabilities": rounded_probabilities([self.probabilities[c] for c in CLASS_NAMES]),
        }
        if self.score is not None:
            out["score"] = round(float(self.score), 4)
        if self.track is not None:
            out["track"] = int(self.track)
        return out


class FaceCrop(NamedTuple):
    """A face's box in its image, its 48x48 uint8 gray crop and the detector's confidence (if any)."""

    box: Box
    crop: np.ndarray
    score: float | None = None


def face_of(crop: FaceCrop, p: np.ndarray) -> Face:
    """The `Face` for a crop whose class probabilities are `p`."""
    return Face(
        box=tuple(int(v) for v in crop.box),  # type: ignore[arg-type]
        emotion=CLASS_NAMES[int(np.argmax(p))],
        probabilities={name: float(v) for name, v in zip(CLASS_NAMES, p, strict=True)},
        score=None if crop.score is None else float(crop.score),
    )


class Explanation(NamedTuple):
    """A face, its 48x48 uint8 gray crop and the class activation map (Grad-CAM, 48x48 float in [0, 1])
    of its predicted emotion: where in the crop the model found the evidence."""

    face: Face
    crop: np.ndarray
    heat: np.ndarray

    def overlay(self, size: int = 192) -> np.ndarray:
        """The crop enlarged to `size` px with the heat map over it, RGB uint8 (what `--explain` writes)."""
        return overlay(self.crop, self.heat, size)


# ----------------------------------------------------------------------------- finding faces
def face_crops(
    image: np.ndarray, detect: bool = True, detector: Detector | None = None, align: bool = ALIGN_EYES
) -> list[FaceCrop]:
    """The faces of a uint8 image, gray (H, W) or RGB (H, W, 3), found by `detector` (None:
    `default_detector()`) on the image as given (a colour one in colour, which the CNN detector was
    trained on) and cropped from its gray copy to 48x48, each with the detector's confidence; `align`:
    each crop turned so that the eyes are level, where the detector gives them. `detect=False`: the whole
    image is one face (box `(0, 0, W, H)`)."""
    gray = to_gray(image)
    if not detect:
        h, w = gray.shape[:2]
        return [FaceCrop((0, 0, w, h), resize_gray(gray))]
    found = (detector or default_detector())(image)
    return [crop_detection(gray, d, align) for d in found]


def crop_detection(gray: np.ndarray, found: Detection, align: bool = ALIGN_EYES) -> FaceCrop:
    """The 48x48 crop of one detected face from the gray image, upright by its eyes when `align`."""
    angle = eye_angle(found.landmarks) if align else 0.0
    return FaceCrop(found.box, crop_face(gray, found.box, angle=angle), found.score)


class FaceBatcher:
    """Face crops from any number of images, classified a batch at a time; each crop's `Face` goes to
    the callback given with it, in the order the crops came."""

    def __init__(self, predictor: Predictor | OnnxPredictor, tta: str, batch_size: int) -> None:
        self.predictor = predictor
        self.tta = tta
        self.batch_size = batch_size
        self.pending: list[tuple[FaceCrop, Callable[[Face], Any]]] = []

    def add(self, crop: FaceCrop, done: Callable[[Face], Any]) -> None:
        self.pending.append((crop, done))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        probs = self.predictor.predict(np.stack([c.crop for c, _ in pending]), self.tta, self.batch_size)
        for (crop, done), p in zip(pending, probs, strict=True):
            done(face_of(crop, p))


# ----------------------------------------------------------------------------- images in any form
def image_files(folder: str | Path) -> list[Path]:
    """The images under `folder`, recursively, sorted by path (hidden files and folders skipped)."""
    folder = Path(folder)
    found = sorted(
        p
        for p in folder.rglob("*")
        if is_image(p) and p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )
    if not found:
        raise FerkitError(f"{folder}: no images in this folder")
    return found


def _is_one_image(images: Any) -> bool:
    return isinstance(images, str | Path | Image.Image | np.ndarray | torch.Tensor)


def expand_inputs(images: ImageInput | Iterable[ImageInput]) -> tuple[list[ImageInput], bool]:
    """The images to read (folders replaced by their images) and whether `images` was one image."""
    if _is_one_image(images):
        if isinstance(images, str | Path) and Path(images).is_dir():
            return list(image_files(images)), False
        return [images], True  # type: ignore[list-item]
    if not isinstance(images, Iterable):
        raise FerkitError(f"cannot read {type(images).__name__!r} as images: {INPUT_HINT}")
    items: list[ImageInput] = []
    for item in images:
        is_dir = isinstance(item, str | Path) and Path(item).is_dir()
        items += image_files(item) if is_dir else [item]  # type: ignore[arg-type]
    return items, False


INPUT_HINT = "pass a path, a PIL image, a uint8 numpy array, a torch tensor or a list of them"


def gray_of(image: ImageInput) -> np.ndarray:
    """uint8 (H, W) gray of one image in any accepted form; FerkitError for anything else."""
    return to_gray(pixels_of(image))


def pixels_of(image: ImageInput) -> np.ndarray:
    """uint8 (H, W) gray or (H, W, 3) RGB of one image in any accepted form, in colour where it has
    colour (for the face detector); FerkitError for anything else."""
    if isinstance(image, str | Path):
        return np.asarray(load_image(image))
    if isinstance(image, Image.Image):
        try:
            return np.asarray(upright_image(image))
        except (OSError, ValueError) as e:
            raise FerkitError(f"PIL image: unreadable ({e})") from None
    if isinstance(image, torch.Tensor):
        image = tensor_to_array(image)
    if isinstance(image, np.ndarray):
        return array_pixels(image)
    raise FerkitError(f"cannot read {type(image).__name__!r} as an image: {INPUT_HINT}")


def array_pixels(arr: np.ndarray) -> np.ndarray:
    """uint8 H x W gray or H x W x 3 RGB from H x W, H x W x 1, H x W x 3 (RGB) or H x W x 4 (RGBA,
    flattened onto white)."""
    if arr.dtype != np.uint8:
        raise FerkitError(f"a {arr.dtype} array: images are uint8 (0-255)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        return np.asarray(upright_image(Image.fromarray(arr, "RGBA")))
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3):
        if min(arr.shape[:2]) < 1:
            raise FerkitError(f"an empty {arr.shape} image")
        return arr
    raise FerkitError(f"an array of shape {arr.shape}: expected H x W gray or H x W x 3 RGB")


def tensor_to_array(t: torch.Tensor) -> np.ndarray:
    """A uint8 H x W (x C) array from a tensor: C x H x W (torchvision's layout; C 1, 3 or 4) or H x W,
    uint8 or float in [0, 1] (as torchvision's `to_tensor` gives)."""
    t = t.detach().cpu()
    if t.ndim == 3 and t.shape[0] in (1, 3, 4):
        t = t.permute(1, 2, 0)
    if t.is_floating_point():
        return np.clip(np.rint(t.float().numpy() * 255.0), 0, 255).astype(np.uint8)
    if t.dtype != torch.uint8:
        raise FerkitError(f"a {t.dtype} tensor: images are uint8 (0-255) or float (0-1)")
    return t.numpy()


def crops_of(faces: Any) -> np.ndarray:
    """uint8 (N, 48, 48) from (N, 48, 48) faces or a list of face crops of any size and form."""
    if isinstance(faces, torch.Tensor):
        faces = [tensor_to_array(t) for t in faces] if faces.ndim in (3, 4) else faces
    if isinstance(faces, np.ndarray) and faces.ndim in (3, 4):
        if faces.dtype == np.uint8 and faces.shape[1:] == (48, 48):
            return np.ascontiguousarray(faces)
        faces = list(faces)
    if _is_one_image(faces) or not isinstance(faces, Iterable):
        raise FerkitError(
            f"faces: a {type(faces).__name__} {getattr(faces, 'shape', '')}; expected uint8 N x 48 x 48 "
            "or a list of face crops"
        )
    crops = [resize_gray(gray_of(f)) for f in faces]
    return np.stack(crops) if crops else np.zeros((0, 48, 48), np.uint8)


# ----------------------------------------------------------------------------- the recognizer
class Recognizer:
    """A model and a face finder: the faces in images and their expressions.

    Made by `ferkit.load`; `predict` finds and classifies faces, `classify` takes faces already cropped.
    `align`: each face's crop is turned so that its eyes are level, where the detector finds the eyes
    (libfacedetection does, the Haar cascade does not).

    Examples:
        >>> rec = ferkit.load("ferkit-fer2013-fast")
        >>> [f.emotion for f in rec.predict("photo.jpg")]  # e.g. ['Angry', 'Happy', 'Surprise']
    """

    def __init__(
        self,
        predictor: Predictor | OnnxPredictor,
        tta: str = "none",
        batch_size: int = 64,
        detector: Detector | None = None,
        model_path: str = "",
        align: bool = ALIGN_EYES,
    ) -> None:
        if tta not in TTA_MODES:
            raise FerkitError(f"tta {tta!r}: expected one of {', '.join(TTA_MODES)}")
        if batch_size < 1:
            raise FerkitError(f"batch_size {batch_size}: must be at least 1")
        self.predictor = predictor
        self.tta = tta
        self.batch_size = batch_size
        self.detector = detector or default_detector()
        self.model_path = model_path
        self.align = align

    @property
    def arch(self) -> str:
        """The architecture the model runs: `cnn`, or `ensemble(cnn, vgg, ...)`."""
        return str(getattr(self.predictor, "arch", type(self.predictor).__name__))

    def __repr__(self) -> str:
        return f"Recognizer({self.model_path or self.arch!r}, arch={self.arch!r}, tta={self.tta!r})"

    @overload
    def predict(self, images: ImageInput, *, detect: bool = True) -> list[Face]: ...

    @overload
    def predict(self, images: Iterable[ImageInput], *, detect: bool = True) -> list[list[Face]]: ...

    def predict(
        self, images: ImageInput | Iterable[ImageInput], *, detect: bool = True
    ) -> list[Face] | list[list[Face]]:
        """The faces in one image (a list of `Face`, left to right), or in each of several (a list of
        lists, in order). A folder stands for its images, recursively, sorted by path; all faces are
        classified together, `batch_size` at a time. `detect=False`: each image is one face.

        Images: a path, a PIL image (both read upright, by EXIF orientation), a uint8 numpy array
        (H x W gray, H x W x 3 RGB) or a torch tensor (C x H x W, uint8 or float in [0, 1]).
        FerkitError, naming the file, for a missing or unreadable one.

        Examples:
            >>> faces = rec.predict("photo.jpg")
            >>> per_image = rec.predict(["a.jpg", pil_image, rgb_array])
            >>> rec.predict(crop, detect=False)[0].emotion  # a face already cropped
        """
        items, one = expand_inputs(images)
        results: list[list[Face]] = [[] for _ in items]
        batcher = FaceBatcher(self.predictor, self.tta, self.batch_size)
        for item, faces in zip(items, results, strict=True):
            for crop in self.face_crops(pixels_of(item), detect):
                batcher.add(crop, faces.append)
        batcher.flush()
        return results[0] if one else results

    @overload
    def explain(self, images: ImageInput, *, detect: bool = True) -> list[Explanation]: ...

    @overload
    def explain(self, images: Iterable[ImageInput], *, detect: bool = True) -> list[list[Explanation]]: ...

    def explain(
        self, images: ImageInput | Iterable[ImageInput], *, detect: bool = True
    ) -> list[Explanation] | list[list[Explanation]]:
        """As `predict`, each face with its crop and the class activation map (Grad-CAM) of its predicted
        emotion; an ensemble's map is its members' maps weighted as they vote. Needs a PyTorch model (not
        ONNX) and the `grad-cam` package (`pip install 'ferkit[explain]'`).

        Examples:
            >>> for e in rec.explain("photo.jpg"):
            ...     Image.fromarray(e.overlay()).save(f"{e.face.emotion}.png")
        """
        items, one = expand_inputs(images)
        crops = [self.face_crops(pixels_of(item), detect) for item in items]
        flat = [c for per_image in crops for c in per_image]
        faces = self.faces_of(flat)
        stacked = np.stack([c.crop for c in flat]) if flat else np.zeros((0, 48, 48), np.uint8)
        heat = iter(
            class_activation_maps(self.predictor, stacked, [f.emotion for f in faces], self.batch_size)
        )
        found = iter(faces)
        results = [[Explanation(next(found), c.crop, next(heat)) for c in per_image] for per_image in crops]
        return results[0] if one else results

    def face_crops(self, image: np.ndarray, detect: bool = True) -> list[FaceCrop]:
        """The faces of a uint8 gray or RGB image, found with this recognizer's detector (in colour where
        the image has it) and cropped to 48x48 gray."""
        return face_crops(image, detect, self.detector, self.align)

    def faces_of(self, crops: Sequence[FaceCrop]) -> list[Face]:
        """Classify face crops (e.g. of boxes found elsewhere): one `Face` each, in order."""
        out: list[Face] = []
        batcher = FaceBatcher(self.predictor, self.tta, self.batch_size)
        for crop in crops:
            batcher.add(crop, out.append)
        batcher.flush()
        return out

    def video(
        self, path: str | Path, *, fps: float | None = DEFAULT_FPS, smooth: float = 0.0, detect: bool = True
    ) -> Iterator[VideoFrame]:
        """The video's frames one at a time (`fps` a second, None: every frame), each a `VideoFrame`
        (`frame` index, `time` in seconds, `faces`, `image` RGB); each `Face` has its `track`, the same id
        for the same person across frames. `smooth` seconds: each track's probabilities averaged over
        that long. Frames are decoded as they are asked for, so memory stays flat however long the video.

        Examples:
            >>> for vf in rec.video("clip.mp4", fps=5):
            ...     print(vf.time, [(f.track, f.emotion) for f in vf.faces])
        """
        return analyse(self, path, fps, smooth, detect)

    def classify(self, faces: np.ndarray | torch.Tensor | Sequence[ImageInput]) -> np.ndarray:
        """Class probabilities (N, 7) of faces already cropped: uint8 (N, 48, 48), or a list of crops of
        any size and form (resized to 48x48 gray). Columns in the order of `ferkit.classes.CLASS_NAMES`.

        Examples:
            >>> probs = rec.classify(faces_uint8)  # (N, 48, 48) uint8 -> (N, 7)
            >>> probs.argmax(1)  # class indices, in the order of ferkit.classes.CLASS_NAMES
        """
        crops = crops_of(faces)
        if len(crops) == 0:
            return np.zeros((0, NUM_CLASSES))
        return np.asarray(self.predictor.predict(crops, self.tta, self.batch_size), np.float64)


def backend_for(model: str | Path | None) -> str:
    """The backend a model runs on by its name: onnx for an `.onnx` file, torch for anything else."""
    return "onnx" if model is not None and Path(model).suffix.lower() == ".onnx" else "torch"


def load_recognizer(
    model: str | Path | None = None,
    *,
    backend: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    tta: str | None = None,
    batch_size: int = 64,
    detector: Detector | None = None,
) -> Recognizer:
    """A `Recognizer` for anything `ferkit predict --model_path` takes (None: the shipped default);
    `backend` None: onnx for an `.onnx` file, else torch; `tta` None: the model's own."""
    path = str(model) if model is not None else None
    predictor, default_tta, source = load_model(path, backend or backend_for(path), device, precision)
    return Recognizer(predictor, tta or default_tta, batch_size, detector, source)
