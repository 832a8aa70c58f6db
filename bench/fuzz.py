"""Fuzz every ferkit reader with hostile input: each must return a valid result or raise a one-line
FerkitError; never a traceback, a hang or memory beyond a bound.

Run by hand, not a test (tests/test_fuzz.py runs the same targets, a few dozen inputs each):

    nice -n 19 .venv/bin/python bench/fuzz.py [--examples 10000] [--readers csv,gzip,...] [--seed 0]
    .venv/bin/python bench/fuzz.py --replay runs/fuzz/csv/failures/00

Inputs are real valid ones (a tiny FER2013 CSV, image folders, a checkpoint, a model card, an ensemble
spec, an exported ONNX file, images, a video) mutated by Hypothesis: byte flips, truncations, insertions,
and structure-aware edits (CSV fields and lines, JSON and checkpoint fields: wrong types, missing keys,
huge numbers, NaN, deep nesting, path traversal in archive members), plus generated text. Each reader runs
in its own process (its peak RSS is its own; a crash loses only that reader), each input in-process under
alarms (10 s of CPU time, 60 s of wall time). A table per reader: inputs tried, valid results, one-line
errors, failures, the slowest input (wall and CPU seconds) and the peak RSS. The first failing input of
each kind is saved under OUT/READER/failures/NN for --replay (after a crash, the input that was running
is in OUT/READER/sandbox).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import faulthandler
import functools
import gzip
import io
import json
import math
import os
import pickle
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from PIL import Image

from ferkit.apps.faces import load_image, to_gray
from ferkit.apps.video import read_frames
from ferkit.classes import CLASS_NAMES, NUM_CLASSES
from ferkit.config import FIELDS, resolve_config
from ferkit.data import load_dataset
from ferkit.data.archive import is_archive
from ferkit.data.folder_reader import CLASS_SYNONYMS, IMAGE_SUFFIXES
from ferkit.errors import FerkitError
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.onnx import OnnxPredictor
from ferkit.shipping.export import export_onnx
from ferkit.shipping.model_card import write_model_card

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_fer_csv  # noqa: E402  (the tests' FER2013 CSV writer: one way to write rows)

HANG_S = 10.0  # an input that takes this much CPU time is a hang
WAIT_S = 60.0  # ... or this much wall time (a machine shared with other work can slow a fast input)
CRASH_S = 120.0  # a hang inside C code (the alarms cannot interrupt it): faulthandler ends the process
RSS_BOUND_MB = 3072  # peak RSS of one reader's process beyond this is a failure
MAX_SAVED = 20  # failing inputs saved per reader: the first of each kind
FACES = np.load(ROOT / "tests" / "fixtures" / "faces.npy")[:2]
SPLITS = ("Training", "PublicTest", "PrivateTest", "test")


# ----------------------------------------------------------------------------- inputs and outcomes
@dataclass(frozen=True)
class SeedFile:
    """A file's content: a copy of the target's seed file `name` (keeps inputs small and printable)."""

    name: str


@dataclass
class Case:
    """One input: files (relative path -> bytes, a SeedFile, or None for an empty folder) and options."""

    files: dict[str, bytes | SeedFile | None]
    opts: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = {
            k: (f"<{len(v)} bytes>" if isinstance(v, bytes) and len(v) > 200 else v)
            for k, v in self.files.items()
        }
        return f"Case({shown}, {self.opts})"


@dataclass
class Seeds:
    """A target's valid inputs: files in `folder` and what the target knows about them."""

    folder: Path
    info: dict[str, Any] = field(default_factory=dict)

    def bytes(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()


@dataclass
class Target:
    """A reader under fuzz: its seed inputs, the inputs derived from them, and the call that checks one."""

    name: str
    seeds: Callable[[Path], Seeds]
    cases: Callable[[Seeds], st.SearchStrategy[Case]]
    run: Callable[[Path, dict[str, Any], Seeds], None]  # read work/; raise Invalid for a wrong result


class Invalid(AssertionError):
    """A result that breaks the reader's contract (shape, range, a row that is not the file's)."""


class Failure(Exception):
    """Anything but a valid result or a one-line FerkitError; `detail` holds the traceback."""

    def __init__(self, why: str, detail: str = "") -> None:
        super().__init__(why)
        self.detail = detail


class Timeout(BaseException):
    """Raised by the alarm: a BaseException, so a reader's `except Exception` cannot swallow it."""


def expect(ok: bool, why: str) -> None:
    if not ok:
        raise Invalid(why)


# ----------------------------------------------------------------------------- byte mutations
MAGIC = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff" * 8, b"-1",
         b"99999999999999999999", b"nan", b"\n", b"\r\n", b",", b'"', b"\\", b"/../", b"\x1f\x8b",
         b"PK\x03\x04", b"\xef\xbb\xbf", b"\xc3\x28")  # fmt: skip
EDIT_OPS = ("flip", "set", "insert", "delete", "truncate", "repeat", "magic")


def apply_edits(data: bytes, edits: list[tuple[str, int, int, bytes]]) -> bytes:
    """`data` with byte edits applied in turn: (op, position, amount, blob); positions wrap around."""
    buf = bytearray(data)
    for op, pos, amount, blob in edits:
        p = pos % (len(buf) + 1)
        if op == "flip" and p < len(buf):
            buf[p] ^= 1 << (amount % 8)
        elif op == "set" and p < len(buf):
            buf[p] = amount % 256
        elif op == "insert":
            buf[p:p] = blob
        elif op == "delete":
            del buf[p : p + 1 + amount % 64]
        elif op == "truncate":
            del buf[p:]
        elif op == "repeat":
            buf[p:p] = bytes(buf[p : p + 1 + amount % 64]) * (1 + amount % 5)
        elif op == "magic":
            m = MAGIC[amount % len(MAGIC)]
            buf[p : p + len(m)] = m
    return bytes(buf)


def byte_edits(max_edits: int = 4) -> st.SearchStrategy[list[tuple[str, int, int, bytes]]]:
    edit = st.tuples(
        st.sampled_from(EDIT_OPS),
        st.one_of(st.integers(0, 64), st.integers(0, 2**31)),  # near the header, or anywhere
        st.integers(0, 2**16),
        st.binary(max_size=16),
    )
    return st.lists(edit, min_size=1, max_size=max_edits)


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed with 1-4 byte edits."""
    return byte_edits().map(lambda edits: apply_edits(seed, edits))


# ----------------------------------------------------------------------------- structure-aware mutations
NASTY_STRINGS = ("", " ", "\x00", "\n", "../../etc/passwd", "/etc/passwd", "/", ".", "..", "C:\\x", "nan",
                 "inf", "-1", "1e400", "99999999999999999999", "ferkit-fer2013", "tiny_cnn.pth", "x.onnx",
                 "cnn", "flip", "tencrop", "\u202e", "é" * 3, "a" * 300)  # fmt: skip
DEEP = "\x00deep\x00"  # a JSON value replaced by nesting 100,000 deep once serialised
NASTY_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324]),
    st.text(max_size=12),
    st.sampled_from(NASTY_STRINGS),
)
NASTY = st.one_of(
    NASTY_SCALARS,
    st.lists(NASTY_SCALARS, max_size=4),
    st.dictionaries(st.text(max_size=6), NASTY_SCALARS, max_size=3),
)
JSON_ACTIONS = ("set", "delete", "wrap", "stringify", "empty", "duplicate", "deep")


def paths_of(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON-like object (the root is `()`)."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths_of(v, (*prefix, i))
    return out


def apply_json_edits(obj: Any, edits: list[tuple[tuple, str, Any]]) -> Any:
    """A deep copy of `obj` with (path, action, value) edits; a path that no longer exists is skipped."""
    obj = copy.deepcopy(obj)
    for path, action, value in edits:
        if not path:
            obj = {"set": value, "wrap": [obj], "empty": {}, "deep": DEEP}.get(action, obj)
            continue
        parent = obj
        try:
            for key in path[:-1]:
                parent = parent[key]
            key = path[-1]
            old = parent[key] if isinstance(parent, (dict, list)) else None
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(parent, (dict, list)):
            continue
        if action == "delete":
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(old))
        else:
            new = {"set": value, "wrap": [old], "stringify": str(old), "deep": DEEP}
            parent[key] = new.get(action, type(old)() if isinstance(old, (list, dict, str)) else None)
    return obj


def json_edits(obj: Any, values: st.SearchStrategy = NASTY) -> st.SearchStrategy[Any]:
    """`obj` with 1-3 structure-aware edits: values of the wrong type, missing keys, nesting."""
    edit = st.tuples(st.sampled_from(paths_of(obj)), st.sampled_from(JSON_ACTIONS), values)
    return st.lists(edit, min_size=1, max_size=3).map(lambda edits: apply_json_edits(obj, edits))


def json_bytes(obj: Any) -> bytes:
    text = json.dumps(obj, allow_nan=True, default=str)
    return text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000).encode()


def edited_json(obj: Any) -> st.SearchStrategy[bytes]:
    """JSON text of `obj` after structure-aware edits, or after byte edits of its text."""
    return st.one_of(json_edits(obj).map(json_bytes), mutated(json_bytes(obj)))


# CSV-aware edits: a field, a pixel, whole lines, separators, the header
NASTY_TOKENS = ("", " ", "256", "-1", "1.5", "0x1", "1e2", "+3", "007", "99999999999999999999", "nan", "é",
                "12abc", '"', '""', "\x00", "Training ", "training", "PublicTest", "7", "6", "-0", "Usage",
                "pixels", "emotion")  # fmt: skip
CSV_OPS = ("field", "pixel", "delete_line", "dup_line", "insert_line", "separator", "header", "blank")


def apply_csv_edits(data: bytes, edits: list[tuple[str, int, int, str]]) -> bytes:
    """CSV `data` with (op, line, column, token) edits; lines and columns wrap around."""
    lines = data.split(b"\n")
    for op, li, col, token in edits:
        i = li % len(lines)
        tok = token.encode("utf-8", "surrogatepass")
        fields = lines[i].split(b",")
        if op == "field":
            fields[col % len(fields)] = tok
            lines[i] = b",".join(fields)
        elif op == "pixel":
            j = max(range(len(fields)), key=lambda k: len(fields[k]))  # the longest field: the pixels
            pixels = fields[j].split(b" ")
            pixels[col % len(pixels)] = tok
            fields[j] = b" ".join(pixels)
            lines[i] = b",".join(fields)
        elif op == "delete_line":
            del lines[i]
            lines = lines or [b""]
        elif op == "dup_line":
            lines.insert(i, lines[i])
        elif op == "insert_line":
            lines.insert(i, tok)
        elif op == "separator":
            lines[i] = lines[i].replace(b",", tok or b";", 1 + col % 3)
        elif op == "header":
            fields = lines[0].split(b",")
            fields[col % len(fields)] = tok
            lines[0] = b",".join(fields)
        elif op == "blank":
            lines.insert(i, b" \r" if col % 2 else b"")
    return b"\n".join(lines)


def csv_edits(data: bytes) -> st.SearchStrategy[bytes]:
    token = st.one_of(st.sampled_from(NASTY_TOKENS), st.text(max_size=8))
    edit = st.tuples(st.sampled_from(CSV_OPS), st.integers(0, 2**16), st.integers(0, 2**16), token)
    return st.lists(edit, min_size=1, max_size=4).map(lambda edits: apply_csv_edits(data, edits))


def text_bytes() -> st.SearchStrategy[bytes]:
    """Generated content: text (UTF-8), or raw bytes."""
    return st.one_of(
        st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=200)
    )


# ----------------------------------------------------------------------------- result invariants
def check_dataset(ds: Any) -> None:
    """The FerDataset contract: uint8 48x48 faces, labels -1..6, known splits, soft labels that sum to 1."""
    n = len(ds)
    expect(n >= 1, "an empty dataset instead of an error")
    expect(ds.images.dtype == np.uint8 and ds.images.shape == (n, 48, 48), f"images {ds.images.shape}")
    expect(ds.labels.dtype == np.int64 and ds.labels.shape == (n,), f"labels {ds.labels.dtype}")
    expect(bool(((ds.labels >= -1) & (ds.labels < NUM_CLASSES)).all()), "a label outside -1..6")
    expect(set(ds.splits.tolist()) <= set(SPLITS), f"splits {sorted(set(ds.splits.tolist()))[:5]}")
    expect(ds.indices.dtype == np.int64 and bool((ds.indices >= 0).all()), "a negative row index")
    if ds.soft_labels is not None:
        soft = ds.soft_labels
        expect(soft.dtype == np.float32 and bool(np.isfinite(soft).all()), "soft labels not finite float32")
        expect(bool((soft >= 0).all()), "a negative soft label")
        sums = soft.sum(1)
        expect(bool((np.isclose(sums, 1, atol=1e-5) | (sums == 0)).all()), "soft labels that do not sum to 1")


def check_rows_match_csv(ds: Any, data: bytes) -> None:
    """Each row the CSV reader returns is the data row its index names: same pixels, label and Usage."""
    lines = [ln.rstrip(b"\r") for ln in data.removeprefix(b"\xef\xbb\xbf").split(b"\n")]
    header = [c.strip().strip('"').lower() for c in lines[0].decode("utf-8").strip("\r").split(",")]
    body = [ln for ln in lines[1:] if ln.strip()]
    for i, row in enumerate(ds.indices.tolist()):
        expect(row < len(body), f"row {row} of {len(body)}")
        fields = [f.strip().strip(b'"') for f in body[row].split(b",")]
        try:
            pixels = [int(t) for t in fields[header.index("pixels")].split()]
            label = int(fields[header.index("emotion")]) if "emotion" in header else -1
        except ValueError:
            raise Invalid(f"row {row}: a pixel or label that is not an integer was accepted") from None
        expect(pixels == ds.images[i].ravel().tolist(), f"row {row}: pixels differ from the file's")
        expect(label == ds.labels[i], f"row {row}: label {ds.labels[i]}, the file's is {label}")
        if "usage" in header:
            expect(fields[header.index("usage")] == ds.splits[i].encode(), f"row {row}: Usage differs")


def check_probs(probs: Any, n: int) -> None:
    """(n, 7) finite probabilities that sum to 1."""
    p = np.asarray(probs)
    expect(p.shape == (n, NUM_CLASSES), f"probabilities of shape {p.shape}")
    expect(bool(np.isfinite(p).all()), "probabilities that are not finite")
    expect(bool((p >= -1e-6).all()) and np.allclose(p.sum(1), 1, atol=1e-4), "probabilities not summing to 1")


def check_config(cfg: Any) -> None:
    """Every option of the right type, within its declared choices and bounds."""
    for name, f in FIELDS.items():
        value, meta = getattr(cfg, name), f.metadata
        kind = type(f.default) if f.default_factory is dataclasses.MISSING else list
        expect(isinstance(value, kind), f"option {name}: {type(value).__name__}, not {kind.__name__}")
        if kind is list:
            expect(all(isinstance(v, str) for v in value), f"option {name}: a non-string tag")
        if kind is float:
            expect(math.isfinite(value), f"option {name}: {value} accepted")
        if meta["choices"]:
            expect(value in meta["choices"], f"option {name}: {value!r}")
        if meta["minimum"] is not None:
            expect(value >= meta["minimum"], f"option {name}: {value} below its minimum")
        if meta["maximum"] is not None:
            expect(value <= meta["maximum"], f"option {name}: {value} above its maximum")
        if meta["below"] is not None:
            expect(value < meta["below"], f"option {name}: {value} not below its bound")


# ----------------------------------------------------------------------------- CSV, gzip, FER+
def csv_seeds(folder: Path) -> Seeds:
    """A tiny FER2013 CSV (8 random faces, every split) as conftest writes them, and its rows."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 48, 48), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 3], np.int64)
    splits = np.array(["Training"] * 4 + ["PublicTest"] * 2 + ["PrivateTest"] * 2)
    write_fer_csv(folder / "fer2013.csv", images, labels, splits)
    return Seeds(folder, {"images": images, "labels": labels, "splits": splits})


def equivalent_csv(seeds: Seeds) -> st.SearchStrategy[bytes]:
    """The seed rows written in another valid form (column order and case, CRLF, quotes, BOM)."""
    columns = st.permutations(["emotion", "pixels", "Usage"]).flatmap(
        lambda cols: st.tuples(*[st.sampled_from([c, c.upper(), f" {c} ", c.capitalize()]) for c in cols])
    )

    def write(form: tuple[tuple[str, ...], str, bool, bool]) -> bytes:
        cols, newline, quote, bom = form
        with tempfile.TemporaryDirectory() as tmp:
            path = write_fer_csv(
                Path(tmp) / "f.csv",
                seeds.info["images"],
                seeds.info["labels"],
                seeds.info["splits"],
                cols,
                newline=newline,
                quote_pixels=quote,
            )
            data = path.read_bytes()
        return b"\xef\xbb\xbf" + data if bom else data

    return st.tuples(columns, st.sampled_from(["\n", "\r\n"]), st.booleans(), st.booleans()).map(write)


def csv_contents(seeds: Seeds) -> st.SearchStrategy[tuple[bytes, bool]]:
    """(CSV bytes, whether they hold exactly the seed's rows)."""
    seed = seeds.bytes("fer2013.csv")
    return st.one_of(
        st.one_of(mutated(seed), csv_edits(seed), text_bytes()).map(lambda b: (b, False)),
        equivalent_csv(seeds).map(lambda b: (b, True)),
    )


def csv_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    return st.builds(
        lambda content, skip: Case({"fer2013.csv": content[0]}, {"skip_bad_rows": skip, "same": content[1]}),
        csv_contents(seeds),
        st.booleans(),
    )


# gzip bombs' unpacked sizes: the last is over the CSV reader's 1 GiB cap (the suite keeps to small ones)
BOMB_MIB = (1, 4, 16, 16, 64, 64, 256, 2048)


@functools.cache
def gzip_bomb(mib: int) -> bytes:
    """A gzip file of `mib` MiB of one repeated pixel value: `mib` copies of a 1 KB member (1 MiB each)."""
    return gzip.compress(b"0 " * (1 << 19), mtime=0) * mib


def gzip_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    """Compressed CSV inputs, damaged gzip streams, multi-member files, trailing junk and gzip bombs."""
    seed = seeds.bytes("fer2013.csv")
    packed = gzip.compress(seed, mtime=0)
    content = st.one_of(
        csv_contents(seeds).map(lambda c: (gzip.compress(c[0], mtime=0), c[1])),
        mutated(packed).map(lambda b: (b, False)),
        st.integers(0, len(seed)).map(
            lambda k: (gzip.compress(seed[:k], mtime=0) + gzip.compress(seed[k:], mtime=0), True)
        ),
        st.binary(min_size=1, max_size=64).map(lambda junk: (packed + junk, False)),
        st.sampled_from(BOMB_MIB).map(lambda mib: (gzip_bomb(mib), False)),
    )
    return st.builds(
        lambda c, skip: Case({"fer2013.csv.gz": c[0]}, {"skip_bad_rows": skip, "same": c[1]}),
        content,
        st.booleans(),
    )


def read_csv_target(name: str) -> Callable[[Path, dict[str, Any], Seeds], None]:
    """Load `work/name` as FER2013; every row must be the file's own, a valid form of the seed its rows."""

    def run(work: Path, opts: dict[str, Any], seeds: Seeds) -> None:
        path = work / name
        ds = load_dataset(path, skip_bad_rows=opts["skip_bad_rows"], cache=False)
        check_dataset(ds)
        if not is_archive(path):
            data = path.read_bytes()
            check_rows_match_csv(ds, gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        if opts["same"]:
            info = seeds.info
            same = all(np.array_equal(getattr(ds, k), info[k]) for k in ("images", "labels", "splits"))
            expect(same, "a valid form of the seed rows was read differently")

    return run


FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def ferplus_seeds(folder: Path) -> Seeds:
    """The tiny CSV and a fer2013new.csv for its rows: random votes, a row without votes, one of contempt."""
    seeds = csv_seeds(folder)
    votes = np.random.default_rng(1).integers(0, 6, (8, 10))
    votes[0] = 0
    votes[1] = [0, 0, 0, 0, 0, 0, 0, 10, 0, 0]
    lines = [FERPLUS_HEADER] + [
        f"{split},fer{i:07d}.png," + ",".join(map(str, v))
        for i, (split, v) in enumerate(zip(seeds.info["splits"], votes, strict=True))
    ]
    (folder / "fer2013new.csv").write_text("\n".join(lines) + "\n")
    return seeds


def ferplus_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    seed = seeds.bytes("fer2013new.csv")
    content = st.one_of(st.just(SeedFile("fer2013new.csv")), mutated(seed), csv_edits(seed), text_bytes())
    return st.builds(
        lambda c, mode: Case({"fer2013.csv": SeedFile("fer2013.csv"), "fer2013new.csv": c}, {"labels": mode}),
        content,
        st.sampled_from(["ferplus", "votes"]),
    )


def run_ferplus(work: Path, opts: dict[str, Any], seeds: Seeds) -> None:
    """FER+ labels (or vote distributions) for the seed rows: same faces, labels that are a majority."""
    ferplus = opts["labels"] == "ferplus"
    ds = load_dataset(
        work / "fer2013.csv",
        labels="ferplus" if ferplus else "fer2013",
        votes=not ferplus,
        ferplus=work / "fer2013new.csv",
        cache=False,
    )
    check_dataset(ds)
    expect(ds.soft_labels is not None and np.array_equal(ds.images, seeds.info["images"]), "faces changed")
    if ferplus:
        rows = np.flatnonzero(ds.labels >= 0)
        expect(bool((ds.soft_labels[rows, ds.labels[rows]] > 0.5).all()), "a FER+ label without a majority")
    else:
        expect(np.array_equal(ds.labels, seeds.info["labels"]), "votes=True changed the FER2013 labels")


# ----------------------------------------------------------------------------- images, image folders
IMAGE_FORMS = (("PNG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("PNG", "1"),
               ("PNG", "LA"), ("JPEG", "L"), ("JPEG", "RGB"), ("JPEG", "CMYK"), ("GIF", "P"), ("BMP", "RGB"),
               ("TIFF", "F"), ("TIFF", "I;16"), ("TIFF", "RGBA"), ("WEBP", "RGB"), ("WEBP", "RGBA"),
               ("PPM", "RGB"))  # fmt: skip
SUFFIX_OF = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp",
             "PPM": ".ppm"}  # fmt: skip


def encode_image(fmt: str, mode: str, w: int, h: int, seed: int, exif_orientation: int = 0) -> bytes:
    """A random image of `mode` and size, encoded as `fmt` (optionally with an EXIF orientation)."""
    rng = np.random.default_rng(seed)
    if mode == "F":
        im = Image.fromarray(rng.random((h, w), dtype=np.float32) * 2 - 0.5)
    elif mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    extra: dict[str, Any] = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        extra["exif"] = exif.tobytes()
    im.save(buf, fmt, **extra)
    return buf.getvalue()


def generated_images() -> st.SearchStrategy[tuple[bytes, str]]:
    """(encoded image, its suffix) of a random form and size."""
    return st.builds(
        lambda form, w, h, seed: (encode_image(*form, w, h, seed), SUFFIX_OF[form[0]]),
        st.sampled_from(IMAGE_FORMS),
        st.integers(1, 80),
        st.integers(1, 80),
        st.integers(0, 2**32 - 1),
    )


IMAGE_SEEDS = {"face.png": ("PNG", "L", 48, 48, 0), "photo.jpg": ("JPEG", "RGB", 64, 40, 1, 6),
               "alpha.png": ("PNG", "RGBA", 30, 50, 2), "palette.gif": ("GIF", "P", 20, 20, 3),
               "deep.png": ("PNG", "I;16", 16, 16, 4), "float.tif": ("TIFF", "F", 16, 16, 5),
               "photo.webp": ("WEBP", "RGB", 32, 32, 6), "photo.bmp": ("BMP", "RGB", 17, 9, 7)}  # fmt: skip


def image_seeds(folder: Path) -> Seeds:
    for name, form in IMAGE_SEEDS.items():
        (folder / name).write_bytes(encode_image(*form))
    return Seeds(folder)


def image_contents(seeds: Seeds) -> st.SearchStrategy[tuple[bytes | SeedFile, str]]:
    """(content, suffix): a seed image, a damaged one, a generated one, or text under an image suffix."""
    damaged = st.sampled_from(sorted(IMAGE_SEEDS)).flatmap(
        lambda n: st.tuples(st.one_of(st.just(SeedFile(n)), mutated(seeds.bytes(n))), st.just(Path(n).suffix))
    )
    junk = st.tuples(text_bytes(), st.sampled_from(sorted(SUFFIX_OF.values())))
    return st.one_of(damaged, generated_images(), junk)


def image_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    return image_contents(seeds).map(lambda c: Case({f"image{c[1]}": c[0]}))


def run_image(work: Path, opts: dict[str, Any], seeds: Seeds) -> None:
    """An upright RGB or L image of at least 1x1, and its gray array."""
    (path,) = work.iterdir()
    im = load_image(path)
    expect(im.mode in ("RGB", "L") and min(im.size) >= 1, f"image {im.mode} {im.size}")
    gray = to_gray(im)
    expect(gray.dtype == np.uint8 and gray.shape == (im.height, im.width), f"gray {gray.dtype} {gray.shape}")


NAME = st.text(st.characters(exclude_characters="/\x00", codec="utf-8"), min_size=1, max_size=10).filter(
    lambda s: s not in (".", "..")
)
SPLIT_DIRS = ("", "train", "Training", "test", "validation", "val", "PublicTest", "privatetest")
CLASS_DIRS = (*CLASS_SYNONYMS, "Happy", " happy ", "HAPPY", "7", "-1", "contempt")
FILE_PREFIXES = ("", "PublicTest_", "PrivateTest_", "Training_", "x_")
FILE_SUFFIXES = (*sorted(IMAGE_SUFFIXES), ".PNG", ".txt", "")


def folder_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    """`root/<split>/<class>/<file>` trees: known and unknown names, images good, damaged and foreign."""
    split = st.one_of(st.sampled_from(SPLIT_DIRS), NAME)
    klass = st.one_of(st.sampled_from(CLASS_DIRS), NAME)
    stem = st.text("abc012_", min_size=1, max_size=6)
    content = image_contents(seeds).map(lambda c: c[0])
    entry = st.tuples(
        split, klass, st.sampled_from(FILE_PREFIXES), stem, st.sampled_from(FILE_SUFFIXES), content
    )

    def tree(entries: list[tuple], empty: list[tuple[str, str]], skip: bool) -> Case:
        files: dict[str, bytes | SeedFile | None] = {}
        for sp, cl, prefix, name, suffix, data in entries:
            files["/".join(p for p in ("root", sp, cl, f"{prefix}{name}{suffix}") if p)] = data
        for sp, cl in empty:
            files["/".join(p for p in ("root", sp, cl) if p)] = None
        return Case(files, {"skip_bad_rows": skip})

    return st.builds(
        tree,
        st.lists(entry, min_size=1, max_size=6),
        st.lists(st.tuples(split, klass), max_size=2),
        st.booleans(),
    )


def run_folders(work: Path, opts: dict[str, Any], seeds: Seeds) -> None:
    """At most one face per image file, each 48x48, labelled by its class folder."""
    ds = load_dataset(work / "root", skip_bad_rows=opts["skip_bad_rows"], cache=False)
    check_dataset(ds)
    files = [p for p in (work / "root").rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    expect(len(ds) <= len(files), f"{len(ds)} faces from {len(files)} image files")


# ----------------------------------------------------------------------------- archives
MEMBER_NAMES = ("fer2013.csv", "fer2013/fer2013.csv", "train.csv", "test.csv", "icml_face_data.csv",
                "fer2013.csv.gz", "train/happy/a.png", "test/sad/b.png", "happy/c.png", "../evil.csv",
                "../../evil.png", "../../../evil.csv", "/abs/fer2013.csv", "C:/x.csv", "C:\\x.csv",
                "a\\..\\..\\evil.csv", "__MACOSX/._fer2013.csv", "._x.csv", "./fer2013.csv", "dir/", ".",
                "a/b/../../../evil.csv", "train/hap\npy/a.png", "fer2013.csv/x.png",
                "train/happy/")  # fmt: skip
MEMBER_KINDS = ("file", "file", "file", "dir", "symlink", "hardlink", "fifo", "device")
ARCHIVE_FORMS = ("zip", "tar", "tar.gz", "tgz", "tar.bz2", "tar.xz")
ZIP_MODES = {"file": 0o100644, "hardlink": 0o100644, "dir": 0o040755, "symlink": 0o120777, "fifo": 0o010644,
             "device": 0o020644}  # fmt: skip
TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "device": tarfile.CHRTYPE}  # fmt: skip


def build_archive(form: str, members: list[tuple[str, str, bytes]]) -> bytes:
    """A zip or tar (`form`) of (name, kind, content) members, links pointing out of the archive."""
    buf = io.BytesIO()
    if form == "zip":
        with warnings_off(), zipfile.ZipFile(buf, "w") as zf:  # duplicate names warn
            for name, kind, content in members:
                info = zipfile.ZipInfo(name or "_")
                info.external_attr = ZIP_MODES[kind] << 16
                zf.writestr(info, b"../../etc/passwd" if kind == "symlink" else content)
        return buf.getvalue()
    mode = {"tar": "w", "tar.gz": "w:gz", "tgz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}[form]
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            info.type = TAR_TYPES[kind]
            info.linkname = "../../etc/passwd" if kind == "symlink" else "fer2013.csv"
            if kind == "file":
                info.size = len(content)
            tf.addfile(info, io.BytesIO(content) if kind == "file" else None)
    return buf.getvalue()


@contextlib.contextmanager
def warnings_off() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def archive_seeds(folder: Path) -> Seeds:
    seeds = csv_seeds(folder)
    (folder / "fer2013.csv.gz").write_bytes(gzip.compress(seeds.bytes("fer2013.csv"), mtime=0))
    (folder / "face.png").write_bytes(encode_image(*IMAGE_SEEDS["face.png"]))
    return seeds


def archive_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    """Zips and tars of the seed CSV and faces under hostile names and kinds, maybe damaged after."""
    blobs = {n: seeds.bytes(n) for n in ("fer2013.csv", "fer2013.csv.gz", "face.png")}
    good = st.sampled_from(
        [("fer2013.csv", blobs["fer2013.csv"]), ("fer2013/fer2013.csv.gz", blobs["fer2013.csv.gz"]),
         ("train/happy/a.png", blobs["face.png"]), ("fer2013/test/sad/b.png", blobs["face.png"])]
    )  # fmt: skip
    content = st.one_of(st.sampled_from(sorted(blobs)).map(blobs.__getitem__), st.binary(max_size=64))
    name = st.one_of(st.sampled_from(MEMBER_NAMES), NAME)
    hostile = st.tuples(name, st.sampled_from(MEMBER_KINDS), content)

    def case(form: str, first: tuple[str, bytes], more: list, edits: list, skip: bool) -> Case:
        data = build_archive(form, [(first[0], "file", first[1]), *more])
        return Case({f"data.{form}": apply_edits(data, edits) if edits else data}, {"skip_bad_rows": skip})

    return st.builds(
        case,
        st.sampled_from(ARCHIVE_FORMS),
        good,
        st.lists(hostile, max_size=4),
        st.one_of(st.just([]), byte_edits()),
        st.booleans(),
    )


def run_archive(work: Path, opts: dict[str, Any], seeds: Seeds) -> None:
    (path,) = work.iterdir()
    check_dataset(load_dataset(path, skip_bad_rows=opts["skip_bad_rows"], cache=False))


# ----------------------------------------------------------------------------- YAML configs
def laughs(key: str, levels: int) -> str:
    """A 'billion laughs' YAML value: `levels` of anchors, each nine aliases of the one before."""
    items = ["&a0 lol"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return f"{key}: [{', '.join(items)}]\n"


YAML_DOCS = (laughs("tags", 9), laughs("model", 9), laughs("lr", 9), "[" * 5000 + "]" * 5000,
             "model: " + "[" * 5000 + "]" * 5000, "!!python/object/apply:os.system ['true']",
             "model: !!python/name:os.system", "--- \nmodel: cnn\n---\nmodel: vgg\n", "<<: {model: cnn}\n",
             "epochs: !!binary AAAA\n", "\tmodel: cnn\n", "model: cnn\nmodel: vgg\n", "? [a, b]\n: 1\n",
             "lr: .nan\n", "lr: .inf\n", "label_smoothing: .nan\n", "ema: -.inf\n", "epochs: 1.0e+400\n",
             "seed: 99999999999999999999999\n", "tags: {a: 1}\n", "tags: [[1, 2]]\n", "tags: cnn\n",
             "epochs: 0x10\n", "epochs: 10:20\n", "progress: yes\n", "progress: 'yes'\n", "batch_size: 2.0\n",
             "batch_size: 2.5\n", "epochs: true\n", "lr: false\n", "data: 2024-01-01\n", "model: [cnn]\n",
             "model: {arch: cnn}\n", "time_budget: 2001-12-14t21:59:43.10-05:00\n", "width: -0\n",
             "\ufeffmodel: cnn\n", "model: cnn\x00\n", "- model\n- cnn\n", "42\n", "~\n", "",
             "lr: 1" + "0" * 400, "seed: " + "9" * 5000)  # fmt: skip
CONFIG_SEEDS = ("cnn.yaml", "cpu60.yaml", "fast.yaml", "cpu60_ferplus.yaml", "sweep.yaml")  # 2 on cpu60


def config_seeds(folder: Path) -> Seeds:
    for name in CONFIG_SEEDS:
        shutil.copyfile(ROOT / "configs" / name, folder / name)
    return Seeds(folder)


def config_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    """Seed configs damaged, generated mappings of options to hostile values, hostile YAML documents."""
    options = sorted(FIELDS)
    name = st.one_of(
        st.sampled_from(options),
        st.sampled_from(options).map(lambda n: n.replace("_", "-")),
        st.text(max_size=8),
    )
    mapping = st.dictionaries(name, NASTY, max_size=4).map(lambda d: yaml.safe_dump(d).encode())
    content = st.one_of(
        st.sampled_from(CONFIG_SEEDS).flatmap(
            lambda n: st.one_of(mutated(seeds.bytes(n)), csv_edits(seeds.bytes(n)))
        ),
        mapping,
        st.sampled_from(YAML_DOCS).map(str.encode),
        text_bytes(),
    )
    return content.map(lambda c: Case({"config.yaml": c, "cpu60.yaml": seeds.bytes("cpu60.yaml")}))


def run_config(work: Path, opts: dict[str, Any], seeds: Seeds) -> None:
    """A TrainConfig whose options have their types, choices and bounds; none taken from a list or map."""
    cfg = resolve_config(str(work / "config.yaml"), {})
    check_config(cfg)
    given_options = yaml.safe_load((work / "config.yaml").read_text()) or {}
    for key, value in given_options.items():
        if key == "base":
            continue  # a file name, checked by reading that file
        kind = type(getattr(cfg, str(key).replace("-", "_")))
        if kind is not list:
            expect(not isinstance(value, (list, dict)), f"option {key}: a {type(value).__name__} accepted")
        if kind in (int, float):
            expect(not isinstance(value, bool), f"option {key}: {value} accepted as a number")


# ----------------------------------------------------------------------------- checkpoints, cards, ensembles
TENSOR_OPS = ("nan", "inf", "huge", "shape", "int", "half", "empty", "scalar", "delete", "extra", "list")


def apply_tensor_edits(state: dict[str, Any], edits: list[tuple[str, str]]) -> dict[str, Any]:
    """A state dict with (key, op) edits: NaN or huge values, wrong shapes and dtypes, missing keys."""
    new = dict(state)
    for key, op in edits:
        t = new.get(key)
        if not isinstance(t, torch.Tensor):
            continue
        values = {"nan": math.nan, "inf": math.inf, "huge": 3e38}
        if op in values:
            new[key] = torch.full(t.shape, values[op]) if t.is_floating_point() else t
        elif op == "shape":
            new[key] = torch.zeros([s + 1 for s in t.shape] or [2])
        elif op == "delete":
            del new[key]
        elif op == "extra":
            new[key + "_extra"] = torch.zeros(1)
        else:
            new[key] = {
                "int": t.long(),
                "half": t.half(),
                "empty": torch.zeros(0),
                "scalar": torch.tensor(1.0),
                "list": t.tolist(),
            }[op]
    return new


def torch_bytes(obj: Any, zip_format: bool = True) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


class _Runs:
    """Pickles a call of os.system: what a malicious checkpoint holds (never unpickled by the fuzzer)."""

    def __reduce__(self) -> tuple:
        return (os.system, ("true",))


def checkpoint_seeds(folder: Path) -> Seeds:
    shutil.copyfile(ROOT / "tests" / "fixtures" / "tiny_cnn.pth", folder / "model.pth")
    ckpt = torch.load(folder / "model.pth", weights_only=True)
    return Seeds(folder, {"ckpt": ckpt})


def checkpoint_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    """Damaged checkpoint files, and checkpoints with edited fields and tensors; legacy and code pickles."""
    ckpt = seeds.info["ckpt"]
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    tensor_edit = st.tuples(st.sampled_from(sorted(ckpt["model"])), st.sampled_from(TENSOR_OPS))

    def edited(m: Any, state: dict[str, Any]) -> bytes:
        return torch_bytes({**m, "model": state} if isinstance(m, dict) else m)

    pickles = [
        torch_bytes(ckpt, zip_format=False),
        pickle.dumps(ckpt, protocol=2),
        pickle.dumps(_Runs()),
        torch_bytes({"format": "ferkit-checkpoint", "x": _Runs()}),
    ]
    content = st.one_of(
        st.just(SeedFile("model.pth")),
        mutated(seeds.bytes("model.pth")),
        st.builds(
            edited,
            json_edits(meta),
            st.lists(tensor_edit, max_size=3).map(lambda e: apply_tensor_edits(ckpt["model"], e)),
        ),
        st.sampled_from(pickles),
        text_bytes().map(lambda b: b"PK" + b),
    )
    return content.map(lambda c: Case({"model.pth": c}, {"model": "model.pth"}))


def run_model(work: Path, opts: dict[str, Any], seeds: Seeds) -> None:
    """Load the model (checkpoint, card or ensemble) and predict two faces with its default TTA."""
    predictor, tta = load_predictor(work / opts["model"], "cpu")
    check_probs(predictor.predict(FACES, tta), len(FACES))


def card_seeds(folder: Path) -> Seeds:
    """Model cards of the fixture checkpoint (float16 and int8), written by `ferkit ship`'s own code."""
    csv_seeds(folder)
    ds = load_dataset(folder / "fer2013.csv", cache=False)
    fixture = str(ROOT / "tests" / "fixtures" / "tiny_cnn.pth")
    for card, dtype in (("card.json", "float16"), ("card8.json", "int8")):
        write_model_card(fixture, folder / card, ds, "flip", "fuzz seed", weights_dtype=dtype)
    return Seeds(folder)


def safetensors_header_edits(data: bytes) -> st.SearchStrategy[bytes]:
    """A safetensors file with its JSON header (names, dtypes, shapes, offsets) edited."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])

    def pack(h: Any) -> bytes:
        text = json_bytes(h)
        return struct.pack("<Q", len(text)) + text + data[8 + n :]

    return json_edits(header).map(pack)


def card_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    """Cards with edited fields (weights intact), or without a checksum and with damaged weights."""

    def variant(stem: str) -> st.SearchStrategy[Case]:
        card = json.loads(seeds.bytes(f"{stem}.json"))
        weights = seeds.bytes(f"{stem}.safetensors")
        unchecked = json_bytes({k: v for k, v in card.items() if k != "sha256"})
        pair = st.one_of(
            st.tuples(edited_json(card), st.just(SeedFile(f"{stem}.safetensors"))),
            st.tuples(st.just(unchecked), st.one_of(mutated(weights), safetensors_header_edits(weights))),
        )
        return pair.map(
            lambda p: Case({f"{stem}.json": p[0], f"{stem}.safetensors": p[1]}, {"model": f"{stem}.json"})
        )

    return st.one_of(variant("card"), variant("card8"))


def ensemble_seeds(folder: Path) -> Seeds:
    for name in ("tiny_cnn.pth", "tiny_ensemble.json"):
        shutil.copyfile(ROOT / "tests" / "fixtures" / name, folder / name)
    return Seeds(folder)


def ensemble_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    """Edited ensemble specs beside the fixture checkpoint, maybe with a second spec that names the first."""
    spec = json.loads(seeds.bytes("tiny_ensemble.json"))
    inner = {
        "format": "ferkit-ensemble",
        "members": [{"path": "ens.json"}, {"path": "tiny_cnn.pth", "weight": 2}],
    }

    def case(content: bytes, with_inner: bool) -> Case:
        files: dict[str, bytes | SeedFile | None] = {
            "ens.json": content,
            "tiny_cnn.pth": SeedFile("tiny_cnn.pth"),
        }
        if with_inner:
            files["inner.json"] = json_bytes(inner)
        return Case(files, {"model": "ens.json"})

    return st.builds(case, st.one_of(st.just(json_bytes(spec)), edited_json(spec)), st.booleans())


# ----------------------------------------------------------------------------- ONNX
ONNX_EDITS = ("input_dim", "output_dim", "elem_type", "rename_input", "drop_output", "class_names", "tta",
              "drop_metadata", "opset")  # fmt: skip
ONNX_TEXT = ('["a"]', "[1, 2", "null", '{"a": 1}', json.dumps(list(CLASS_NAMES)), "", "\x00", "tencrop",
             "bogus")  # fmt: skip


def onnx_seeds(folder: Path) -> Seeds:
    """The fixture checkpoint exported by `ferkit export`'s own code (checked against PyTorch)."""
    export_onnx(str(ROOT / "tests" / "fixtures" / "tiny_cnn.pth"), folder / "model.onnx")
    return Seeds(folder)


def apply_onnx_edits(data: bytes, edits: list[tuple[str, int, str]]) -> bytes:
    """The ONNX model with (edit, number, text) edits to its input/output types, metadata and opset."""
    import onnx

    m = onnx.ModelProto.FromString(data)
    for edit, number, text in edits:
        values = m.graph.output if edit == "output_dim" else m.graph.input
        io_type = values[0].type.tensor_type if values else None
        if edit in ("input_dim", "output_dim") and io_type is not None and io_type.shape.dim:
            io_type.shape.dim[number % len(io_type.shape.dim)].dim_value = number
        elif edit == "elem_type" and io_type is not None:
            io_type.elem_type = number % 17
        elif edit == "rename_input" and m.graph.input:
            m.graph.input[0].name = text
        elif edit == "drop_output" and m.graph.output:
            del m.graph.output[0]
        elif edit in ("class_names", "tta"):
            m.metadata_props.add(key=edit, value=text)
        elif edit == "drop_metadata":
            del m.metadata_props[:]
        elif edit == "opset":
            m.opset_import[0].version = number % 40
    return m.SerializeToString()


def onnx_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    seed = seeds.bytes("model.onnx")
    edit = st.tuples(st.sampled_from(ONNX_EDITS), st.integers(0, 2**40), st.sampled_from(ONNX_TEXT))
    content = st.one_of(
        mutated(seed),
        st.lists(edit, min_size=1, max_size=3).map(lambda e: apply_onnx_edits(seed, e)),
        text_bytes(),
    )
    return content.map(lambda c: Case({"model.onnx": c}))


def run_onnx(work: Path, opts: dict[str, Any], seeds: Seeds) -> None:
    predictor = OnnxPredictor(work / "model.onnx")
    check_probs(predictor.predict(FACES, predictor.default_tta), len(FACES))


# ----------------------------------------------------------------------------- videos
def video_seeds(folder: Path) -> Seeds:
    """Two seconds of noise at 6 fps, as MPEG-4 in .mp4 and as MJPEG in .avi (OpenCV's own writers)."""
    frames = np.random.default_rng(0).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
    for name, codec in (("clip.mp4", "mp4v"), ("clip.avi", "MJPG")):
        writer = cv2.VideoWriter(str(folder / name), cv2.VideoWriter_fourcc(*codec), 6.0, (64, 48))
        for frame in frames:
            writer.write(frame)
        writer.release()
    return Seeds(folder)


def video_cases(seeds: Seeds) -> st.SearchStrategy[Case]:
    def variant(name: str) -> st.SearchStrategy[Case]:
        content = st.one_of(st.just(SeedFile(name)), mutated(seeds.bytes(name)), text_bytes())
        return st.builds(
            lambda c, every: Case({name: c}, {"every": every}),
            content,
            st.sampled_from([None, 0.5, 1.0, 2.5]),
        )

    return st.one_of(variant("clip.mp4"), variant("clip.avi"))


def run_video(work: Path, opts: dict[str, Any], seeds: Seeds) -> None:
    """`read_frames` one frame every `every` seconds (None: every frame): at least one RGB frame; indices
    and times from 0, increasing; the k-th frame no earlier than k * every seconds (the first frame at or
    after each multiple of `every`)."""
    (path,) = work.iterdir()
    every = opts["every"]
    frames = list(read_frames(path, None if every is None else 1.0 / every))
    expect(len(frames) >= 1 and frames[0].time == 0 and frames[0].index == 0, "no first frame at 0 s")
    times = [f.time for f in frames]
    increasing = all(a.index < b.index and a.time <= b.time for a, b in zip(frames, frames[1:], strict=False))
    expect(increasing, f"frames {[(f.index, f.time) for f in frames][:6]}")
    if every is not None:
        expect(all(t >= k * every - 1e-3 for k, t in enumerate(times)), f"times {times[:6]} too early")
    for f in frames:
        expect(f.rgb.dtype == np.uint8 and f.rgb.ndim == 3 and f.rgb.shape[2] == 3, f"frame {f.rgb.shape}")


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("csv", csv_seeds, csv_cases, read_csv_target("fer2013.csv")),
        Target("gzip", csv_seeds, gzip_cases, read_csv_target("fer2013.csv.gz")),
        Target("ferplus", ferplus_seeds, ferplus_cases, run_ferplus),
        Target("folders", image_seeds, folder_cases, run_folders),
        Target("archive", archive_seeds, archive_cases, run_archive),
        Target("config", config_seeds, config_cases, run_config),
        Target("checkpoint", checkpoint_seeds, checkpoint_cases, run_model),
        Target("card", card_seeds, card_cases, run_model),
        Target("ensemble", ensemble_seeds, ensemble_cases, run_model),
        Target("onnx", onnx_seeds, onnx_cases, run_onnx),
        Target("image", image_seeds, image_cases, run_image),
        Target("video", video_seeds, video_cases, run_video),
    )
}


# ----------------------------------------------------------------------------- running one input
def materialise(case: Case, seeds: Seeds, sandbox: Path) -> Path:
    """A fresh `sandbox/work` with the case's files (a name clashing with an earlier one is left out)."""
    shutil.rmtree(sandbox, ignore_errors=True)
    work = sandbox / "work"
    work.mkdir(parents=True)
    for name, content in case.files.items():
        path = work / name
        try:
            if content is None:
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(seeds.bytes(content.name) if isinstance(content, SeedFile) else content)
        except OSError:
            continue
    return work


def check_sandbox(sandbox: Path) -> None:
    """Nothing written outside `work/` and the cache's unpack folders, and no link unpacked."""
    for dirpath, dirnames, filenames in os.walk(sandbox):
        rel = Path(dirpath).relative_to(sandbox)
        for name in dirnames + filenames:
            parts = (rel / name).parts
            if parts[0] == "work":
                continue
            expect(
                parts[0] == "cache" and (len(parts) < 3 or parts[1] == "unpacked"), f"wrote {'/'.join(parts)}"
            )
            expect(len(parts) >= 3 or name in dirnames, f"wrote {'/'.join(parts)} beside the unpack folders")
            expect(not os.path.islink(Path(dirpath, name)), f"unpacked a link {'/'.join(parts)}")


@contextlib.contextmanager
def time_limit(cpu_s: float, wall_s: float) -> Iterator[None]:
    """Raise Timeout in the main thread after `cpu_s` seconds of this process's CPU time (a hang that works;
    CPU time, so a machine busy with other work does not make a slow input of a fast one) or `wall_s` seconds
    of wall time (a hang that waits). C code is interrupted when it returns to Python."""

    def fire(signum: int, frame: Any) -> None:
        what = f"{cpu_s:g} s of CPU time" if signum == signal.SIGPROF else f"{wall_s:g} s"
        raise Timeout(f"no result after {what}")

    old = {sig: signal.signal(sig, fire) for sig in (signal.SIGPROF, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_PROF, cpu_s)
    signal.setitimer(signal.ITIMER_REAL, wall_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def attempt(target: Target, case: Case, seeds: Seeds, sandbox: Path) -> tuple[str, str]:
    """("valid", "") or ("error", the one-line message); Failure for anything else, Timeout for a hang."""
    work = materialise(case, seeds, sandbox)
    old_cache = os.environ.get("FERKIT_CACHE_DIR")
    os.environ["FERKIT_CACHE_DIR"] = str(sandbox / "cache")  # archives unpack here: checked below
    try:
        with time_limit(HANG_S, WAIT_S):
            target.run(work, case.opts, seeds)
        outcome = ("valid", "")
    except FerkitError as e:
        msg = str(e)
        if not msg.strip() or "\n" in msg or "\r" in msg:
            raise Failure(f"FerkitError not one line: {msg[:300]!r}", traceback.format_exc()) from None
        outcome = ("error", msg)
    except Invalid as e:
        raise Failure(f"wrong result: {e}", traceback.format_exc()) from None
    except Exception as e:
        raise Failure(f"{e.__class__.__name__}: {str(e)[:300]}", traceback.format_exc()) from None
    finally:
        if old_cache is None:
            os.environ.pop("FERKIT_CACHE_DIR", None)
        else:
            os.environ["FERKIT_CACHE_DIR"] = old_cache
    try:
        check_sandbox(sandbox)
    except Invalid as e:
        raise Failure(f"wrote outside its folders: {e}") from None
    return outcome


def build_seeds(target: Target, folder: Path) -> Seeds:
    folder.mkdir(parents=True, exist_ok=True)
    return target.seeds(folder)


# ----------------------------------------------------------------------------- one reader's run
@dataclass
class Stats:
    reader: str
    tried: int = 0
    valid: int = 0
    errors: int = 0
    failures: int = 0
    max_s: float = 0.0
    max_cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    first_failure: str = ""
    kinds: dict[str, int] = field(default_factory=dict)  # failures by signature (see `signature`)
    seconds: float = 0.0
    note: str = ""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def signature(why: str, detail: str) -> str:
    """A failure's kind: its first words and the innermost ferkit line of its traceback."""
    frames = [ln.strip() for ln in detail.splitlines() if ln.strip().startswith("File") and "/ferkit/" in ln]
    where = frames[-1].split("/ferkit/", 1)[1].replace('", line ', ":").split(",")[0] if frames else ""
    return f"{why.split(':')[0][:60]} at {where}" if where else why[:80]


def save_case(case: Case, folder: Path, reader: str, why: str = "", detail: str = "") -> None:
    """The case's options, reason and traceback as `case.json` (its files are in folder/work)."""
    meta = {"reader": reader, "opts": case.opts, "case": repr(case)[:2000], "why": why, "traceback": detail}
    (folder / "case.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def fuzz_reader(name: str, examples: int, seed: int, out: Path, rss_bound_mb: float) -> Stats:
    """Run `examples` Hypothesis inputs through one reader; count outcomes, save the first failure."""
    target = TARGETS[name]
    base = out / name
    shutil.rmtree(base, ignore_errors=True)
    sandbox = base / "sandbox"
    seeds = build_seeds(target, base / "seeds")
    stats = Stats(name)
    start = time.perf_counter()

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis_seed(seed)
    @given(target.cases(seeds))
    def one(case: Case) -> None:
        stats.tried += 1
        sandbox.mkdir(parents=True, exist_ok=True)
        faulthandler.dump_traceback_later(CRASH_S, exit=True)  # a hang inside C code ends the process
        t0, c0 = time.perf_counter(), time.process_time()
        why = detail = ""
        try:
            kind, _ = attempt(target, case, seeds, sandbox)
            stats.valid += kind == "valid"
            stats.errors += kind == "error"
        except Failure as f:
            why, detail = str(f), f.detail
        except Timeout as t:
            why, detail = f"hang: {t}", traceback.format_exc()
        finally:
            faulthandler.cancel_dump_traceback_later()
        stats.max_s = max(stats.max_s, time.perf_counter() - t0)
        stats.max_cpu_s = max(stats.max_cpu_s, time.process_time() - c0)
        if not why and peak_rss_mb() > rss_bound_mb and stats.peak_rss_mb <= rss_bound_mb:
            why = f"memory: peak RSS {peak_rss_mb():.0f} MB > {rss_bound_mb:.0f} MB"
        stats.peak_rss_mb = peak_rss_mb()
        if why:
            stats.failures += 1
            stats.first_failure = stats.first_failure or why
            sig = signature(why, detail)
            if sig not in stats.kinds and len(stats.kinds) < MAX_SAVED:  # the first input of each kind
                saved = base / "failures" / f"{len(stats.kinds):02d}"
                shutil.copytree(sandbox / "work", saved / "work", dirs_exist_ok=True)
                save_case(case, saved, name, why, detail)
            stats.kinds[sig] = stats.kinds.get(sig, 0) + 1
        if stats.tried % 500 == 0:
            print(f"{name}: {stats.tried} inputs, {stats.failures} failures", file=sys.stderr, flush=True)

    one()
    stats.seconds = time.perf_counter() - start
    stats.peak_rss_mb = peak_rss_mb()
    shutil.rmtree(sandbox, ignore_errors=True)
    return stats


# ----------------------------------------------------------------------------- replay, table, main
def replay(folder: Path) -> int:
    """Run a saved input (`case.json` + `work/`) again and print its outcome."""
    meta = json.loads((folder / "case.json").read_text())
    target = TARGETS[meta["reader"]]
    work = folder / "work"
    files = {
        str(p.relative_to(work)): (p.read_bytes() if p.is_file() else None) for p in sorted(work.rglob("*"))
    }
    case = Case(
        {k: v for k, v in files.items() if v is not None or not any(o.startswith(k + "/") for o in files)},
        meta["opts"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        seeds = build_seeds(target, Path(tmp) / "seeds")
        try:
            kind, msg = attempt(target, case, seeds, Path(tmp) / "sandbox")
        except Failure as f:
            print(f.detail or "", file=sys.stderr)
            print(f"{meta['reader']}: FAILURE: {f}")
            return 1
    print(f"{meta['reader']}: {kind}{': ' + msg if msg else ''}")
    return 0


def table(rows: list[Stats]) -> str:
    lines = [
        "| reader | inputs tried | valid results | one-line errors | failures | max s/input (CPU) "
        "| peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rows:
        fail = f"{s.failures}" + (f" ({s.first_failure[:60]})" if s.first_failure else "")
        cells = [s.reader, s.tried, s.valid, s.errors, fail, f"{s.max_s:.2f} ({s.max_cpu_s:.2f})"]
        lines.append(
            f"| {' | '.join(map(str, cells))} | {s.peak_rss_mb:.0f} |{' ' + s.note if s.note else ''}"
        )
    return "\n".join(lines)


def environment() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    python = platform.python_version()
    return f"commit {commit.stdout.strip() or 'unknown'}, {cpu}, {os.cpu_count()} CPUs, Python {python}"


def run_child(name: str, args: argparse.Namespace) -> Stats:
    """One reader in its own process: its peak RSS is its own, a crash loses only that reader."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--examples",
        str(args.examples),
        "--seed",
        str(args.seed),
        "--out",
        str(args.out),
        "--rss-bound-mb",
        str(args.rss_bound_mb),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    try:
        return Stats(**json.loads(proc.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError, TypeError):
        stats = Stats(name, failures=1, first_failure=f"crashed (exit {proc.returncode})")
        stats.note = f"input that was running: {args.out / name / 'sandbox'}"
        return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="inputs per reader")
    parser.add_argument(
        "--readers", default=",".join(TARGETS), help=f"comma-separated, of {','.join(TARGETS)}"
    )
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fuzz", help="failures and sandboxes")
    parser.add_argument("--rss-bound-mb", type=float, default=RSS_BOUND_MB, help="peak RSS bound per reader")
    parser.add_argument("--replay", type=Path, help="run a saved failure folder again")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if args.child:
        torch.set_num_threads(1)
        stats = fuzz_reader(args.child, args.examples, args.seed, args.out, args.rss_bound_mb)
        print(json.dumps(dataclasses.asdict(stats)))
        return 0
    names = [n.strip() for n in args.readers.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown readers {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    print(f"# fuzz: {args.examples} inputs per reader, seed {args.seed}; {environment()}", flush=True)
    rows = []
    for name in names:
        rows.append(run_child(name, args))
        s = rows[-1]
        print(
            f"{name}: {s.tried} inputs, {s.failures} failures, {s.seconds:.0f} s", file=sys.stderr, flush=True
        )
    print(table(rows))
    for s in rows:
        for sig, count in sorted(s.kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {s.reader}: {count} x {sig}")
    return 1 if any(s.failures for s in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
