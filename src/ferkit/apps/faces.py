"""Faces in photos and videos: read any image upright, find faces with OpenCV's Haar cascade, crop them
the way FER2013 framed its faces (square, 48x48 gray), and sample video frames once a second."""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterator
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
    gray: np.ndarray, box: Box | list[int], margin: float = FACE_MARGIN, size: int = FACE_SIZE
) -> np.ndarray:
    """A square crop around `box`, `margin` of the box's side added on each side, as uint8 size x size.

    Parts of the square outside the image are filled by repeating the border pixels, so faces at the
    edge of a photo still give a centred crop.
    """
    x, y, w, h = (int(v) for v in box)
    side = max(1, math.ceil(max(w, h) * (1 + 2 * margin)))
    x0 = round(x + w / 2 - side / 2)
    y0 = round(y + h / 2 - side / 2)
    x1, y1 = x0 + side, y0 + side
    ih, iw = gray.shape[:2]
    crop = gray[max(0, y0) : min(ih, y1), max(0, x0) : min(iw, x1)]
    if crop.size == 0:
        raise ValueError(f"box {box} lies outside the {iw}x{ih} image")
    pads = (max(0, -y0), max(0, y1 - ih), max(0, -x0), max(0, x1 - iw))
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, cv2.BORDER_REPLICATE)
    return resize_gray(crop, size)


def resize_gray(gray: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """uint8 size x size (area averaging when shrinking, bilinear when enlarging)."""
    if gray.shape[:2] == (size, size):
        return np.ascontiguousarray(gray, np.uint8)
    shrink = gray.shape[0] >= size and gray.shape[1] >= size
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------- videos
def video_frames(path: str | Path, every_seconds: float = 1.0) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, RGB uint8 frame) every `every_seconds`, starting with the first frame.

    A file OpenCV cannot open, or one with no decodable frame, is a FerkitError naming it.
    """
    path = Path(path)
    if every_seconds <= 0:
        raise ValueError("every_seconds must be positive")
    if not path.is_file():
        raise FerkitError(f"{path}: file not found")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise FerkitError(f"{path}: not a video OpenCV can decode (corrupt or unsupported)")
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not math.isfinite(fps) or fps <= 0:
            fps = 25.0
        index, next_time, yielded = 0, 0.0, 0
        while cap.grab():
            t = index / fps
            index += 1
            if t + 1e-6 < next_time:
                continue
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                continue
            next_time = (math.floor(t / every_seconds + 1e-6) + 1) * every_seconds
            yielded += 1
            yield round(t, 3), cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if yielded == 0:
            raise FerkitError(f"{path}: no video frame could be decoded (corrupt or unsupported)")
    finally:
        cap.release()
