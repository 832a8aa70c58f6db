"""Reader for FER2013 as image folders: `train/<class>/*.png`, `test/<class>/...`, `validation/...`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ferkit.classes import CLASS_NAMES
from ferkit.data.dataset import FerDataset
from ferkit.errors import FerkitError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

CLASS_SYNONYMS: dict[str, int] = {
    **{name.lower(): i for i, name in enumerate(CLASS_NAMES)},
    **{str(i): i for i in range(len(CLASS_NAMES))},
    "anger": 0, "mad": 0,
    "disgusted": 1, "disgusting": 1,
    "fearful": 2, "afraid": 2, "scared": 2,
    "happiness": 3, "joy": 3,
    "sadness": 4,
    "surprised": 5,
    "calm": 6,
}  # fmt: skip

SPLIT_FOLDERS = {
    "train": "Training",
    "training": "Training",
    "validation": "PublicTest",
    "val": "PublicTest",
    "valid": "PublicTest",
    "publictest": "PublicTest",
    "privatetest": "PrivateTest",
    "test": "test",
}
FILE_PREFIXES = {"training": "Training", "publictest": "PublicTest", "privatetest": "PrivateTest"}


def class_index(name: str) -> int | None:
    """FER2013 label of a class-folder name (by name, case-insensitive, with synonyms), or None."""
    return CLASS_SYNONYMS.get(name.strip().lower())


def _split_dirs(root: Path) -> list[tuple[Path, str]]:
    """(folder, split) pairs: split folders under root, or root itself as one split."""
    found = [(p, SPLIT_FOLDERS[p.name.lower()]) for p in sorted(root.iterdir())
             if p.is_dir() and p.name.lower() in SPLIT_FOLDERS]  # fmt: skip
    if not found:
        return [(root, SPLIT_FOLDERS.get(root.name.lower(), "Training"))]
    if any(s == "PublicTest" for _, s in found):  # a separate validation folder: test is the private one
        found = [(p, "PrivateTest" if s == "test" else s) for p, s in found]
    return found


def _file_split(path: Path, folder_split: str) -> str:
    """`PublicTest_123.png` keeps its official split whatever folder it is in."""
    prefix = path.name.split("_", 1)[0].lower()
    return FILE_PREFIXES.get(prefix, folder_split) if "_" in path.name else folder_split


def read_image_folders(root: Path, skip_bad_rows: bool = False) -> FerDataset:
    """Read `root/<split>/<class>/<image>` (or `root/<class>/<image>`), classes mapped by name."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    splits: list[str] = []
    bad: list[str] = []
    converted = resized = 0
    for split_dir, folder_split in _split_dirs(root):
        class_dirs = [p for p in sorted(split_dir.iterdir()) if p.is_dir()]
        if not class_dirs:
            raise FerkitError(f"{split_dir}: no class folders (expected e.g. {split_dir}/happy/*.png)")
        for class_dir in class_dirs:
            label = class_index(class_dir.name)
            if label is None:
                msg = (
                    f"{class_dir}: unknown class folder {class_dir.name!r} (known: {', '.join(CLASS_NAMES)})"
                )
                if not skip_bad_rows:
                    raise FerkitError(msg)
                bad.append(msg)
                continue
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(file) as im:
                        colour = im.mode != "L"
                        gray = im.convert("L")
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                        Image.DecompressionBombError) as e:  # Pillow's errors for damaged files  # fmt: skip
                    msg = f"{file}: not a readable image ({e.__class__.__name__})"
                    if not skip_bad_rows:
                        raise FerkitError(msg) from None
                    bad.append(msg)
                    continue
                converted += colour
                if gray.size != (48, 48):
                    resized += 1
                    gray = gray.resize((48, 48), Image.Resampling.BILINEAR)
                images.append(np.asarray(gray, np.uint8))
                labels.append(label)
                splits.append(_file_split(file, folder_split))
    if not images:
        raise FerkitError(f"{root}: no images found in its class folders")
    notes = []
    if converted:
        notes.append(f"converted {converted} colour images to grayscale")
    if resized:
        notes.append(f"resized {resized} images to 48x48")
    if bad:
        notes.append(f"skipped {len(bad)} bad entries (first: {bad[0]})")
    return FerDataset(
        images=np.stack(images),
        labels=np.asarray(labels, np.int64),
        splits=np.asarray(splits),
        indices=np.arange(len(images), dtype=np.int64),
        source=str(root),
        notes=notes,
    )
