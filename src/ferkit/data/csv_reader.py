"""Readers for the CSV forms of FER2013: fer2013.csv(.gz), icml_face_data.csv, train.csv, test.csv."""

from __future__ import annotations

import gzip
import io
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferkit.classes import NUM_CLASSES
from ferkit.data.dataset import FerDataset
from ferkit.errors import FerkitError

PIXELS = 48 * 48
USAGES = ("Training", "PublicTest", "PrivateTest")
MAX_BYTES = 1 << 30  # FER2013's CSV forms are 0.3 GB; a CSV (or what a .gz unpacks to) over 1 GiB is not one
# The CSV files a Kaggle folder may hold, in the order the loader looks for them.
FOLDER_CSVS = ("fer2013.csv", "fer2013.csv.gz", "icml_face_data.csv", "icml_face_data.csv.gz", "train.csv")


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip (by magic bytes, not by name); at most MAX_BYTES, so a
    gzip bomb costs no more memory than that."""
    if path.stat().st_size > MAX_BYTES:
        raise FerkitError(f"{path}: larger than {MAX_BYTES >> 20} MiB: not a FER2013 CSV")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            data = gz.read(MAX_BYTES + 1)
    except (EOFError, OSError, zlib.error) as e:
        raise FerkitError(f"{path}: truncated or corrupt gzip file ({e})") from None
    if len(data) > MAX_BYTES:
        raise FerkitError(
            f"{path}: unpacks to more than {MAX_BYTES >> 20} MiB: not a FER2013 CSV (a gzip bomb?)"
        )
    return data


def _split_lines(path: Path, data: bytes) -> tuple[list[str], list[bytes]]:
    """Header column names (stripped, lower-case) and the non-empty body lines."""
    if not data.strip():
        raise FerkitError(f"{path}: file is empty")
    if b"\x00" in data[:4096]:
        raise FerkitError(f"{path}: not a CSV file (binary content)")
    data = data.removeprefix(b"\xef\xbb\xbf")
    lines = data.split(b"\n")
    try:
        header = [c.strip().strip('"').lower() for c in lines[0].decode("utf-8").strip("\r").split(",")]
    except UnicodeDecodeError:
        raise FerkitError(f"{path}: not a CSV file (line 1 is not text)") from None
    return header, lines[1:]


def read_csv(path: Path, skip_bad_rows: bool = False) -> FerDataset:
    """Read any CSV form of FER2013; the columns decide which one it is.

    `emotion,pixels,Usage` (fer2013.csv, icml_face_data.csv, in any column order) keep the official
    split; `emotion,pixels` (train.csv) is Training; `pixels` alone (test.csv) is unlabelled `test`.
    Bad rows raise FerkitError naming the file and line, or are skipped and counted.
    """
    header, lines = _split_lines(path, read_bytes(path))
    col = _columns(path, header)
    bad: list[str] = []

    def reject(lineno: int, why: str) -> None:
        msg = f"{path}: line {lineno}: {why}"
        if not skip_bad_rows:
            raise FerkitError(msg)
        bad.append(msg)

    rows = _read_rows(header, lines, col, reject)
    images, ok = _parse_pixels(rows.pixels)
    for i in np.flatnonzero(~ok):
        reject(rows.linenos[i], _pixel_problem(rows.pixels[i]))
    keep = np.flatnonzero(ok)
    if not len(keep):
        raise FerkitError(f"{path}: no usable rows")
    return FerDataset(
        images=images[keep].reshape(-1, 48, 48),
        labels=np.asarray(rows.labels, np.int64)[keep],
        splits=np.asarray(rows.splits)[keep],
        indices=np.asarray(rows.rows, np.int64)[keep],
        source=str(path),
        notes=[f"skipped {len(bad)} bad rows (first: {bad[0]})"] if bad else [],
    )


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    """Position of each FER2013 column present (emotion, pixels, usage); FerkitError for other files."""
    if "pixels" not in header and "image name" in header:
        raise FerkitError(f"{path}: this is the FER+ label file, not the images: pass it with --ferplus")
    if "pixels" not in header:
        raise FerkitError(
            f"{path}: no 'pixels' column (columns: {', '.join(header)[:80]}); "
            "expected FER2013 columns emotion,pixels,Usage"
        )
    col = {name: header.index(name) for name in ("emotion", "pixels", "usage") if name in header}
    if "usage" in col and "emotion" not in col:
        raise FerkitError(f"{path}: has a 'Usage' column but no 'emotion' column")
    return col


@dataclass
class _Rows:
    """The well-formed rows' fields, before their pixels are parsed."""

    pixels: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # data-row number, the FER+ row it pairs with
    linenos: list[int] = field(default_factory=list)


def _read_rows(
    header: list[str], lines: list[bytes], col: dict[str, int], reject: Callable[[int, str], None]
) -> _Rows:
    """Split each line into fields and check its label and split; `reject` is told about bad lines."""
    out = _Rows()
    default_split = "Training" if "emotion" in col else "test"
    row = -1  # blank lines don't count
    for lineno, line in enumerate(lines, start=2):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        row += 1
        fields = [f.strip().strip(b'"') for f in line.split(b",")]
        if len(fields) != len(header):
            reject(lineno, f"expected {len(header)} fields ({','.join(header)}), found {len(fields)}")
            continue
        label = -1
        if "emotion" in col:
            text = fields[col["emotion"]].decode("utf-8", "replace")
            if not (text.isascii() and text.isdigit() and int(text) < NUM_CLASSES):
                reject(lineno, f"emotion {text!r} is not a label 0-{NUM_CLASSES - 1}")
                continue
            label = int(text)
        split = fields[col["usage"]].decode("utf-8", "replace") if "usage" in col else default_split
        if "usage" in col and split not in USAGES:
            reject(lineno, f"Usage {split!r} is not one of {', '.join(USAGES)}")
            continue
        out.pixels.append(fields[col["pixels"]])
        out.labels.append(label)
        out.splits.append(split)
        out.rows.append(row)
        out.linenos.append(lineno)
    return out


def _parse_pixels(fields: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Parse space-separated pixel strings into uint8 (N, 2304); a bool mask marks well-formed rows."""
    out = np.zeros((len(fields), PIXELS), np.uint8)
    ok = np.ones(len(fields), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns when a string does not parse to its end
        for i, field in enumerate(fields):
            try:  # int64: int32 would wrap 4294967296 to 0; numpy 2 raises on non-numeric text
                values = np.fromstring(field, dtype=np.int64, sep=" ")
            except ValueError:
                ok[i] = False
                continue
            if values.size != PIXELS or values.min() < 0 or values.max() > 255:
                ok[i] = False
            else:
                out[i] = values
    return out, ok


def _pixel_problem(field: bytes) -> str:
    """Say what is wrong with one pixel string (the slow path, only for bad rows)."""
    tokens = field.split()
    for k, token in enumerate(tokens):
        if not token.isdigit() or int(token) > 255:
            return f"pixel {k + 1} is {token.decode('utf-8', 'replace')!r}, not an integer 0-255"
    return f"expected {PIXELS} pixel values, found {len(tokens)}"
