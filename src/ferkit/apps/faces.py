"""Faces in photos: read any image upright, find faces with OpenCV's Haar cascade, and crop them the way
FER2013 framed its faces (square, 48x48 gray), turned upright by the eyes where they are known. Video
frames are read by `ferkit.apps.video.read_frames`."""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ferkit.errors import FerkitError

# Silence FFmpeg's own console messages ("moov atom not found"): a bad video is reported once, by us.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402  (after the FFmpeg log level is set)

CASCADE = "haarcascade_frontalface_default.xml"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
FACE_SIZE = 48
# Detection parameters: the usual ones for this cascade; the smallest face is 1/25 of the image's shorter
# side (never below the cascade's own 24x24 window), and very large photos are searched at 1600 px.
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
MIN_FACE_FRACTION = 0.04
DETECT_MAX_SIDE = 1600
# The cascade's box on a FER2013 face (enlarged onto a photo) covers the whole 48x48 crop: median box side
# 0.98 of the face, centred. So the box itself, with no margin, reproduces the framing the models were
# trained on; a 0.2 margin would shrink faces to ~70% of their training size.
FACE_MARGIN = 0.0
# Turning each crop so that the eyes are level (where the detector gives them) gained nothing on PublicTest
# faces turned +-25 degrees and cost a little on upright ones (bench/crops.py, docs/findings.md): off.
ALIGN_EYES = False

Box = tuple[int, int, int, int]


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------- images
def load_image(path: str | Path) -> Image.Image:
    """The image upright (EXIF orientation applied) in mode RGB or L.

    Grayscale stays L; palette and alpha images are flattened onto white; 16-bit and 32-bit grayscale are
    scaled to 8 bits. An unreadable, truncated or non-image file, or one larger than Pillow's
    `Image.MAX_IMAGE_PIXELS` (a possible decompression bomb), is a FerkitError naming the file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                upright = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FerkitError(
            f"{path}: image too large (over {Image.MAX_IMAGE_PIXELS:,} pixels), refusing a possible "
            "decompression bomb"
        ) from None
    except FileNotFoundError:
        raise FerkitError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise FerkitError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise FerkitError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise FerkitError(f"{path}: corrupt or unreadable image ({e})") from None
    return _to_rgb_or_l(upright)


def upright_image(im: Image.Image) -> Image.Image:
    """An image already opened (a PIL image a caller holds) as `load_image` returns a file's: EXIF
    orientation applied, mode RGB or L."""
    return _to_rgb_or_l(ImageOps.exif_transpose(im))


def _to_rgb_or_l(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("RGB", "L"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        arr = np.asarray(im, np.float64)
        top = 1.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 255.0
        arr = np.nan_to_num(arr) * (255.0 / top)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("RGB")
        return flat.convert("L") if mode in ("LA", "La") else flat
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...


def to_gray(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 (H, W) gray from a PIL image (RGB or L) or an RGB / gray array."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        return np.ascontiguousarray(arr, np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(arr[..., :3], np.uint8), cv2.COLOR_RGB2GRAY)


# ----------------------------------------------------------------------------- detection and crops
@functools.lru_cache(maxsize=4)
def _cascade(path: str | None = None) -> cv2.CascadeClassifier:
    """OpenCV's frontal-face cascade, or the cascade file `path`."""
    default = os.path.join(cv2.data.haarcascades, CASCADE)
    cascade = cv2.CascadeClassifier(path or default)
    if cascade.empty():
        if path:
            raise FerkitError(f"{path}: not an OpenCV cascade file (or not found)")
        raise FerkitError(
            f"OpenCV's face detector {default} could not be loaded (install opencv-python-headless 4)"
        )
    return cascade


def detect_faces(
    gray: np.ndarray,
    scale_factor: float = SCALE_FACTOR,
    min_neighbors: int = MIN_NEIGHBORS,
    min_size: int | None = None,
    cascade: str | None = None,
) -> list[Box]:
    """Frontal faces (x, y, w, h) in a uint8 gray image, left to right (OpenCV's Haar cascade).

    `min_size`: the smallest face side in pixels of `gray` (None: 1/25 of its shorter side, at least 24);
    `cascade`: another cascade file than OpenCV's frontal-face one.
    No histogram equalisation: the cascade normalises each window's contrast itself, and on FER2013 faces
    pasted onto textured photos equalising found a third fewer faces (54 vs 82 of 120), no fewer false ones.
    """
    gray = np.ascontiguousarray(gray, np.uint8)
    h, w = gray.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = gray
    if scale < 1.0:
        small = cv2.resize(
            gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    if min_size is None:
        min_side = max(24, round(min(small.shape) * MIN_FACE_FRACTION))
    else:
        min_side = max(1, round(min_size * scale))
    if min(small.shape) < min_side:
        return []
    found = _cascade(cascade).detectMultiScale(
        small,
        scaleFactor=scale_factor,
        minNeighbors=min_neighbors,
        minSize=(min_side, min_side),
    )
    boxes = [tuple(round(int(v) / scale) for v in box) for box in np.asarray(found).reshape(-1, 4)]
    return sorted(boxes, key=lambda b: (b[0], b[1]))  # type: ignore[return-value]


def crop_face(
    gray: np.ndarray,
    box: Box | list[int],
    margin: float = FACE_MARGIN,
    size: int = FACE_SIZE,
    angle: float = 0.0,
) -> np.ndarray:
    """A square crop around `box`, `margin` of the box's side added on each side, as uint8 size x size.

    `angle`: degrees the face is turned clockwise in the image plane (as `eye_angle` measures it); the
    square is turned by as much about its centre, so the face comes out upright with the framing an
    upright face's box gives it. Parts of the square outside the image are filled by repeating the border
    pixels, so faces at the edge of a photo still give a centred crop.
    """
    x, y, w, h = (int(v) for v in box)
    side = max(1, math.ceil(max(w, h) * (1 + 2 * margin)))
    x0 = round(x + w / 2 - side / 2)
    y0 = round(y + h / 2 - side / 2)
    ih, iw = gray.shape[:2]
    if x0 >= iw or y0 >= ih or x0 + side <= 0 or y0 + side <= 0:
        raise ValueError(f"box {box} lies outside the {iw}x{ih} image")
    if angle:
        return resize_gray(_turned_square(gray, x0, y0, side, angle), size)
    x1, y1 = x0 + side, y0 + side
    crop = gray[max(0, y0) : min(ih, y1), max(0, x0) : min(iw, x1)]
    pads = (max(0, -y0), max(0, y1 - ih), max(0, -x0), max(0, x1 - iw))
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, cv2.BORDER_REPLICATE)
    return resize_gray(crop, size)


def _turned_square(gray: np.ndarray, x0: int, y0: int, side: int, angle: float) -> np.ndarray:
    """The side x side square at (x0, y0), turned `angle` degrees about its centre, at the image's own
    resolution: one bilinear warp, then the same shrinking (area averaging) as an upright crop."""
    centre = (x0 + side / 2 - 0.5, y0 + side / 2 - 0.5)  # in pixel-index coordinates
    matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
    matrix[:, 2] += (side / 2 - 0.5) - np.asarray(centre)  # the square's centre to the output's centre
    return cv2.warpAffine(
        np.ascontiguousarray(gray, np.uint8),
        matrix,
        (side, side),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def eye_angle(landmarks: Sequence[Sequence[float]] | None) -> float:
    """Degrees a face is turned in the image plane, from its eyes (the first two of a detector's five
    landmarks: the person's right eye, then left eye); 0 without landmarks. Positive: clockwise as seen,
    the eye on the image's right lower than the other."""
    if not landmarks or len(landmarks) < 2:
        return 0.0
    (rx, ry), (lx, ly) = landmarks[0][:2], landmarks[1][:2]
    if lx == rx and ly == ry:
        return 0.0
    return math.degrees(math.atan2(ly - ry, lx - rx))


def resize_gray(gray: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """uint8 size x size (area averaging when shrinking, bilinear when enlarging)."""
    if gray.shape[:2] == (size, size):
        return np.ascontiguousarray(gray, np.uint8)
    shrink = gray.shape[0] >= size and gray.shape[1] >= size
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
