"""FER2013 inside an archive: Kaggle's fer2013.tar.gz, any .tar(.gz/.bz2/.xz)/.tgz, or a .zip of the CSV or
of image folders. The archive is unpacked once, safely, into the cache (keyed by its content), then read by
the ordinary readers; the dataset, its notes and its errors name the archive, never the cache folder."""

from __future__ import annotations

import contextlib
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ferkit.data.cache import cache_dir, source_key
from ferkit.data.csv_reader import FOLDER_CSVS
from ferkit.data.dataset import FerDataset
from ferkit.data.folder_reader import IMAGE_SUFFIXES, SPLIT_FOLDERS, class_index
from ferkit.errors import FerkitError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tbz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")  # a member, an empty zip, a spanned zip
CSV_SUFFIXES = (".csv", ".csv.gz")
MAX_BYTES = 4 << 30  # unpacked size cap: FER2013 is 0.3 GB as CSV; anything far larger is not it (or a bomb)
MAX_MEMBERS = 200_000  # member cap: the image-folder form holds ~36k files
UNPACKED = "unpacked"  # cache subfolder: one folder per archive digest
STALE_PARTIAL_S = 24 * 3600  # a partial unpack folder this old belongs to a killed process
JUNK_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}  # and AppleDouble `._*` files


def is_archive(path: Path) -> bool:
    """True for a zip or tar file, by name or by content; a gzipped CSV is not one."""
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return True
    try:
        with path.open("rb") as fh:
            if fh.read(4) in ZIP_MAGIC:
                return True
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError):
        return False


def read_archive(archive: Path, read: Callable[[Path], FerDataset]) -> FerDataset:
    """`read` (the loader's reader of a file or folder) applied to the FER2013 data inside `archive`.

    Paths of the unpacked copy in the result's source, notes and errors are replaced by the archive's path
    (a member reads as `ARCHIVE/member`), so messages name the file the user gave.
    """
    with unpacked(archive) as base:
        target = find_data(archive, base)
        try:
            ds = read(target)
        except FerkitError as e:
            raise FerkitError(str(e).replace(str(base), str(archive))) from None
    ds.source = str(archive)
    ds.notes = [n.replace(str(base), str(archive)) for n in ds.notes]
    return ds


@contextlib.contextmanager
def unpacked(archive: Path) -> Iterator[Path]:
    """The archive's content as a folder: the cache's copy, or (cache not writable) a temporary one."""
    try:
        folder = unpack(archive)
    except OSError:  # an unwritable cache only costs speed: unpack for this read alone
        folder = None
    if folder is not None:
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="ferkit-unpack-") as tmp:
        extract(archive, Path(tmp))
        yield Path(tmp)


def unpack(archive: Path) -> Path:
    """`cache_dir()/unpacked/<digest of the archive's bytes>`, unpacked on first use.

    The content goes to a temporary sibling folder that is renamed into place only when complete, so a
    killed unpack never leaves a folder that a later load trusts. OSError: the cache is not writable.
    """
    parent = cache_dir() / UNPACKED
    folder = parent / source_key(archive, "unpacked")
    if folder.is_dir():
        return folder
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(parent)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        extract(archive, tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process unpacked the same bytes first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _remove_stale_partials(parent: Path) -> None:
    """Delete partial unpack folders left by killed processes (old enough not to be in progress)."""
    for old in parent.glob(".*.partial"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(old)


def extract(archive: Path, dest: Path) -> None:
    """Unpack `archive` into the empty folder `dest`: regular files and folders only, names inside `dest`,
    at most MAX_MEMBERS members and MAX_BYTES bytes; any problem is a one-line FerkitError naming it."""
    budget = _Budget(archive)
    try:
        with archive.open("rb") as fh:
            is_zip = fh.read(4) in ZIP_MAGIC
        if is_zip:
            _extract_zip(archive, dest, budget)
        else:
            _extract_tar(archive, dest, budget)
    except FerkitError:
        raise
    except OSError as e:
        if e.errno is not None:  # writing failed (disk full, permissions), not the archive
            raise FerkitError(f"{archive}: cannot unpack into {dest.parent}: {e.strerror}") from None
        raise FerkitError(f"{archive}: truncated or corrupt archive ({_one_line(e)})") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as e:
        raise FerkitError(f"{archive}: truncated or corrupt archive ({_one_line(e)})") from None
    except (NotImplementedError, RuntimeError) as e:  # zip: unsupported compression, encrypted member
        raise FerkitError(f"{archive}: cannot unpack ({_one_line(e)})") from None
    if budget.files == 0:
        raise FerkitError(f"{archive}: empty archive (no files inside)")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or e.__class__.__name__


class _Budget:
    """Counts members and unpacked bytes against the caps, and turns member names into safe paths."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.members = self.files = self.bytes = 0

    def admit(self, name: str) -> list[str] | None:
        """The member's path parts below the destination, None to skip it (macOS/Windows clutter)."""
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise FerkitError(f"{self.archive}: more than {MAX_MEMBERS} members, refusing to unpack")
        norm = name.replace("\\", "/")
        if norm.startswith("/") or re.match(r"[A-Za-z]:", norm):
            raise FerkitError(f"{self.archive}: refusing member {name!r}: absolute path")
        parts = [p for p in norm.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise FerkitError(f"{self.archive}: refusing member {name!r}: '..' in its path")
        if not parts or any(p in JUNK_NAMES or p.startswith("._") for p in parts):
            return None
        return parts

    def check_room(self, size: int) -> None:
        """Refuse before writing when `size` more bytes would pass MAX_BYTES."""
        if self.bytes + size > MAX_BYTES:
            raise FerkitError(
                f"{self.archive}: unpacks to more than {MAX_BYTES >> 20} MiB, refusing to unpack"
            )

    def write(self, src: IO[bytes], dest: Path, parts: list[str]) -> None:
        """Copy one member's bytes to `dest/parts`, counting what is really written (sizes can lie)."""
        path = dest.joinpath(*parts)
        self.files += 1
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            out = path.open("wb")
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise FerkitError(
                f"{self.archive}: member {'/'.join(parts)!r} clashes with another member"
            ) from None
        with out:
            while chunk := src.read(1 << 20):
                self.check_room(len(chunk))
                self.bytes += len(chunk)
                out.write(chunk)


def _refuse_kind(archive: Path, name: str, kind: str) -> FerkitError:
    return FerkitError(f"{archive}: refusing member {name!r}: {kind} (only files and folders are unpacked)")


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    """Stream the tar's members (one decompression pass), checking each before writing it."""
    data_filter = getattr(tarfile, "data_filter", None)  # Python 3.11.4+, 3.12
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:
            if not (m.isreg() or m.isdir()):
                kind = "symlink" if m.issym() else "hard link" if m.islnk() else "device or special file"
                raise _refuse_kind(archive, m.name, kind)
            parts = budget.admit(m.name)
            if parts is None:
                continue
            budget.check_room(m.size if m.isreg() else 0)
            if data_filter is not None:
                try:
                    data_filter(m, str(dest))
                except tarfile.FilterError as e:
                    raise FerkitError(f"{archive}: refusing member {m.name!r}: {_one_line(e)}") from None
            if m.isdir():
                dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(m)
            assert src is not None  # a regular file always has content
            with src:
                budget.write(src, dest, parts)


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    """Check every name, type and the declared total first, then unpack member by member."""
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise FerkitError(f"{archive}: more than {MAX_MEMBERS} members, refusing to unpack")
        budget.check_room(sum(i.file_size for i in infos))  # declared sizes; written bytes are counted too
        for info in infos:
            mode = info.external_attr >> 16  # Unix mode where the zip was made on Unix, else 0
            if stat.S_ISLNK(mode):
                raise _refuse_kind(archive, info.filename, "symlink")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise _refuse_kind(archive, info.filename, "device or special file")
        for info in infos:
            parts = budget.admit(info.filename)
            if parts is None:
                continue
            if info.is_dir() or info.filename.endswith("\\"):  # old Windows tools write `dir\`
                dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                budget.write(src, dest, parts)


def find_data(archive: Path, base: Path) -> Path:
    """The file or folder to read inside the unpacked `base`: one CSV, a folder of CSVs, or image folders.

    Single wrapping folders (`fer2013/...`) are stepped into, unless named like a split or a class.
    """
    root = base
    while True:
        entries = list(root.iterdir())
        dirs = [p for p in entries if p.is_dir()]
        data_files = [p for p in entries if p.is_file() and _is_data_file(p)]
        if len(dirs) != 1 or data_files or _names_data(dirs[0].name):
            break
        root = dirs[0]
    csvs = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(CSV_SUFFIXES))
    if len(csvs) == 1:
        return csvs[0]
    if csvs:
        if any(p.name in FOLDER_CSVS for p in csvs):
            return root  # a Kaggle folder: the loader picks its fer2013.csv, icml_face_data.csv or train.csv
        names = ", ".join(p.name for p in csvs[:5])
        raise FerkitError(
            f"{archive}: {len(csvs)} CSV files inside ({names}) and none is one of {', '.join(FOLDER_CSVS)}"
        )
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*") if p.is_file()):
        return root
    held = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    more = f", ... ({len(held)} files)" if len(held) > 5 else ""
    raise FerkitError(
        f"{archive}: no FER2013 data inside (no CSV file, no images; it holds {', '.join(held[:5])}{more})"
    )


def _is_data_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(CSV_SUFFIXES) or path.suffix.lower() in IMAGE_SUFFIXES


def _names_data(name: str) -> bool:
    """A folder named like a split (`train`) or a class (`happy`) is data, not a wrapper to step into."""
    return name.lower() in SPLIT_FOLDERS or class_index(name) is not None
