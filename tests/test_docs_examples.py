"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace, in a fresh folder holding what they name:
`photo.jpg` and `a.jpg` (real FER2013 faces pasted onto a textured canvas, as in test_predict.py), a
`photos/` folder, and `runs/cnn/best.pth` (a tiny real checkpoint). The names the examples take as given
are defined beforehand: `faces_uint8`, `crop`, `bgr_image`, `pil_image`, `rgb_array`. The data is a tiny
real FER2013 CSV (`$FERKIT_DATA`) and W&B is off, so the examples that train stay cheap.

A block right after a `<!-- no-test -->` line is skipped; each such marker says why next to it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_predict import BORDER, DETECTABLE, GROUP, paste

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```(\w*)\s*$")
NO_TEST = "<!-- no-test"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block, except one right after a `<!-- no-test -->`."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if FENCE.match(lines[j])), len(lines))
        previous = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        if fence.group(1) == "python" and not previous.startswith(NO_TEST):
            blocks.append((i + 2, "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    return blocks


DOCS_WITH_PYTHON = [p for p in DOCS if python_blocks(p.read_text())]
# a document whose examples train is a slow test (`pytest -m "not slow"` leaves it out)
DOC_PARAMS = [
    pytest.param(p, marks=[pytest.mark.slow] if "ferkit.train(" in p.read_text() else [], id=p.name)
    for p in DOCS_WITH_PYTHON
]


@pytest.fixture(scope="module")
def workspace(real_dataset, tiny_checkpoint, tmp_path_factory) -> Path:
    """The files the examples name, made once and copied for each document."""
    public = np.flatnonzero(real_dataset.splits == "PublicTest")
    faces = real_dataset.images[public[list(DETECTABLE)]]
    root = tmp_path_factory.mktemp("docs-workspace")
    group, border = paste(faces[:3], GROUP), paste(faces[3:5], BORDER)
    Image.fromarray(group).save(root / "photo.jpg", quality=95)
    Image.fromarray(border).save(root / "a.jpg", quality=95)
    (root / "photos" / "more").mkdir(parents=True)
    Image.fromarray(group).save(root / "photos" / "group.png")
    Image.fromarray(border).save(root / "photos" / "more" / "border.png")
    (root / "runs" / "cnn").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, root / "runs" / "cnn" / "best.pth")
    np.save(root / "faces.npy", faces)
    return root


def given_names(folder: Path) -> dict[str, object]:
    """What the examples take as given, made from the workspace's files."""
    rgb = np.asarray(Image.open(folder / "photo.jpg").convert("RGB"))
    faces = np.load(folder / "faces.npy")
    return {
        "__name__": "__docs__",
        "faces_uint8": faces[:3],  # (N, 48, 48) uint8 face crops
        "crop": faces[0],  # one face, already cropped
        "bgr_image": cv2.imread(str(folder / "photo.jpg")),  # as OpenCV reads it
        "pil_image": Image.open(folder / "a.jpg"),
        "rgb_array": rgb,
    }


def test_python_blocks_are_found_and_no_test_skips_one() -> None:
    text = (
        "intro\n```python\nx = 1\n```\n\n"
        "<!-- no-test: trains for an hour -->\n```python\nslow()\n```\n"
        "```bash\nferkit train\n```\n```python\ny = x + 1\nprint(y)\n```\n"
    )
    assert python_blocks(text) == [(3, "x = 1\n"), (14, "y = x + 1\nprint(y)\n")]
    assert {p.name for p in DOCS_WITH_PYTHON} >= {"README.md", "using.md"}


@pytest.mark.parametrize("doc", DOC_PARAMS)
def test_python_examples_run(doc, workspace, tiny_real_csv, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "work"
    shutil.copytree(workspace, folder)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("FERKIT_DATA", str(tiny_real_csv))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    namespace = given_names(folder)
    for line, code in python_blocks(doc.read_text()):
        padded = "\n" * (line - 1) + code  # tracebacks name the document's own line numbers
        exec(compile(padded, str(doc.relative_to(ROOT)), "exec"), namespace)
