"""`FER`: the `fer` package's interface on ferkit's models, so that code written for `fer` switches with
one import line (`from ferkit import FER`).

Like `fer`, it takes OpenCV's BGR images (what `cv2.imread` returns), answers with lower-case emotion
names and rounds probabilities to 2 places; unlike `fer`, it needs neither TensorFlow nor a network.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ferkit.apps.detectors import HaarDetector, create_detector
from ferkit.apps.faces import crop_face, to_gray, upright_image
from ferkit.apps.recognizer import FaceCrop, ImageInput, load_recognizer, pixels_of
from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError

FER_LABELS: dict[str, str] = {name: name.lower() for name in CLASS_NAMES}  # "Happy" -> "happy"
FER_PLACES = 2  # fer rounds every probability to 2 places


class FER:
    """Facial expressions the way the `fer` package's `FER` reports them, on a ferkit model.

    fer's keywords are taken: `cascade_file`, `scale_factor`, `min_neighbors` and `min_face_size` set the
    Haar cascade (`min_face_size` None: 1/25 of the image's shorter side, at least 24 px; fer's own
    default is 50 px); `mtcnn=True` asks for a neural detector: ferkit's best (`create_detector("auto")`);
    `offsets` warns and is ignored (ferkit crops each face as its models were trained: the detector's
    box, no margin); `tfserving=True` is refused. `model` is anything `ferkit.load` takes (None: the
    shipped default); `device`, `precision` and `tta` as there.

    Examples:
        >>> from ferkit import FER
        >>> detector = FER()
        >>> detector.detect_emotions(cv2.imread("photo.jpg"))  # [{"box": [x, y, w, h], "emotions": {...}}]
        >>> detector.top_emotion(cv2.imread("photo.jpg"))  # e.g. ("happy", 0.93)
    """

    def __init__(
        self,
        cascade_file: str | None = None,
        mtcnn: bool = False,
        tfserving: bool = False,
        scale_factor: float = 1.1,
        min_face_size: int | None = None,
        min_neighbors: int = 5,
        offsets: tuple[int, int] | None = None,
        *,
        model: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        tta: str | None = None,
    ) -> None:
        if tfserving:
            raise FerkitError("FER(tfserving=True): ferkit runs its own model in-process; drop tfserving")
        if offsets is not None:
            warnings.warn(
                "FER(offsets=...) is ignored: ferkit crops each face as its models were trained "
                "(the detector's box, no margin)",
                stacklevel=2,
            )
        # fer's default is OpenCV's Haar cascade; mtcnn=True asks for a neural detector: ferkit's best
        detector = (
            create_detector("auto", min_face_size)
            if mtcnn
            else HaarDetector(min_face_size, scale_factor, min_neighbors, cascade_file)
        )
        self.recognizer = load_recognizer(
            model, device=device, precision=precision, tta=tta, detector=detector
        )
        self.emotions: list[dict[str, Any]] = []  # the last answer, as fer keeps it

    def detect_emotions(
        self, img: np.ndarray | str | Path, face_rectangles: Sequence[Sequence[int]] | None = None
    ) -> list[dict[str, Any]]:
        """Every face and its expression: `[{"box": [x, y, w, h], "emotions": {"angry": p, "disgust": p,
        "fear": p, "happy": p, "sad": p, "surprise": p, "neutral": p}}]`, probabilities rounded to 2 places.

        `img`: a BGR (as `cv2.imread` gives) or gray uint8 array, an image file's path or a base64
        `data:image/...` URI. `face_rectangles`: boxes found elsewhere, classified instead of detecting
        (a box outside the image is skipped with a warning, as fer does).

        Examples:
            >>> FER().detect_emotions(bgr_image)[0]["emotions"]["happy"]
        """
        pixels = bgr_to_pixels(img)
        if face_rectangles is None:
            crops = self.recognizer.face_crops(pixels)  # the detector sees colour, as in ferkit predict
        else:
            crops = given_crops(to_gray(pixels), face_rectangles)
        self.emotions = [
            {
                "box": list(face.box),
                "emotions": {FER_LABELS[c]: round(p, FER_PLACES) for c, p in face.probabilities.items()},
            }
            for face in self.recognizer.faces_of(crops)
        ]
        return self.emotions

    def top_emotion(self, img: np.ndarray | str | Path) -> tuple[str | None, float | None]:
        """The first face's most probable emotion and its (rounded) probability; `(None, None)` when the
        image has no face.

        Examples:
            >>> emotion, score = FER().top_emotion(bgr_image)  # e.g. ("happy", 0.93)
        """
        emotions = self.detect_emotions(img)
        if not emotions:
            return None, None
        first = emotions[0]["emotions"]
        top = max(first, key=lambda name: first[name])
        return top, first[top]


def given_crops(gray: np.ndarray, boxes: Sequence[Sequence[int]]) -> list[FaceCrop]:
    """Crops of boxes found elsewhere; a box that misses the image is skipped with a warning."""
    crops = []
    for box in boxes:
        x, y, w, h = (int(v) for v in box)
        try:
            crops.append(FaceCrop((x, y, w, h), crop_face(gray, (x, y, w, h))))
        except ValueError as e:
            warnings.warn(f"face_rectangles: {e}; skipped", stacklevel=3)
    return crops


def bgr_to_pixels(img: Any) -> np.ndarray:
    """uint8 RGB (or gray, for a gray input) of what fer takes: a BGR, BGRA or gray array, a path, or a
    base64 `data:image/` URI."""
    if isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGB
        return cv2.cvtColor(np.ascontiguousarray(img), code)
    if isinstance(img, str) and img.startswith("data:image/"):
        return data_uri_pixels(img)
    image: ImageInput = img
    return pixels_of(image)


def data_uri_pixels(uri: str) -> np.ndarray:
    """uint8 RGB or gray of a base64 `data:image/...;base64,...` URI."""
    try:
        data = base64.b64decode(uri.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(upright_image(im))
    except (IndexError, binascii.Error, UnidentifiedImageError, OSError, ValueError) as e:
        raise FerkitError(f"data:image URI: not a readable base64 image ({e.__class__.__name__})") from None
