"""Atomic file writes: a temporary file beside the target, then a rename, so a reader (or a process
killed mid-write) only ever sees the old complete file or the new complete one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ferkit.errors import FerkitError

# What a write raises when there is no room: a full disk, a quota, a file size limit (RLIMIT_FSIZE).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class NoRoomError(FerkitError, OSError):
    """A write that found no room for the file: a one-line FerkitError for the CLI, and still an OSError
    for callers to whom the file is optional (the data cache goes on without its entry)."""


def _no_room(exc: BaseException | None) -> OSError | None:
    """The out-of-room OSError behind `exc` (itself, or what it was raised while handling: torch.save and
    others wrap the file's OSError in their own exception), else None."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_ROOM:
            return exc
        exc = exc.__context__
    return None


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing (`mode` "w" or "wb"); on a clean exit it is
    flushed, synced and renamed over `path` (mode 644); on an error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if (cause := _no_room(e)) is None:
            raise
        err = NoRoomError(
            f"{path}: cannot write it: {os.strerror(cause.errno)} (a file already there is left as it was)"
        )
        err.errno = cause.errno
        raise err from None


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """JSON with two-space indents and a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_copy(src: str | Path, dest: str | Path) -> None:
    with open(src, "rb") as fin, atomic_write(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout)
