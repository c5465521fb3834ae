"""Writing inside a run directory: never through a planted symlink, never a torn file.

Every file a run writes goes through here. Appends (records and start markers, one JSON line
each) open with `O_NOFOLLOW`, so a symlink planted under a record file's name is refused instead
of followed. Whole files (records.jsonl, records.parquet, report.md, plots, run.json, ...) are
written to a fresh temporary name in the same folder (`O_EXCL`: never an existing file or link),
fsynced and renamed over the target; a rename replaces a planted link itself rather than writing
through it, and a crash or a full disk leaves the previous file (or none), never a torn one.
Folders a run creates (plots/, logs/, envs/, locks/) are refused when they are symlinks.

Failures are plain `OSError`s carrying the path; the command line turns any of them into one
line naming the path and the cause, exit 2 (`harness.cli`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def ensure_dir(path: Path) -> Path:
    """Create folder `path` (and its parents) unless it exists; refuse a symlink or a non-folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "is a symbolic link; a run directory's folders must be real", str(path))
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    return path


def open_append(path: Path) -> IO[str]:
    """`path` opened for appending text, created when absent; a symlink there raises OSError."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, "is a symbolic link; refusing to write through it", str(path)
            ) from None
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


def _named(err: OSError, path: Path) -> OSError:
    """`err` naming `path` (a failed write or flush names no file)."""
    if err.filename is not None:
        return err
    return OSError(err.errno, err.strerror or " ".join(str(err).split()) or type(err).__name__, str(path))


def append_line(path: Path, line: str) -> None:
    """Append `line` (ending in a newline) and make it durable before returning."""
    try:
        with open_append(path) as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise _named(err, path) from err


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temporary path next to `path` to write the whole file to (for writers that take a
    file name: parquet, savefig); renamed over `path` when the block ends, removed on any error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # as a plain open() would leave it (mkstemp makes 0600)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:  # durable before it replaces the previous version
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _named(err, path) from err
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write the whole of `path` (text is UTF-8) through a temporary file renamed over it."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(raw)


def describe_os_error(err: OSError) -> str:
    """One line: the path(s) and the cause, e.g. `runs/x/records.parquet: No space left on device`."""
    where = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    cause = err.strerror or " ".join(str(err).split()) or type(err).__name__
    hints = {
        errno.ENOSPC: " (the disk is full; free space, then continue with --resume)",
        errno.EFBIG: " (a file-size limit was hit; raise it, then continue with --resume)",
        errno.EROFS: " (choose a writable --out)",
        errno.ENAMETOOLONG: " (choose a shorter --out or scenario name)",
    }
    return f"{where or '(unknown path)'}: {cause}{hints.get(err.errno or 0, '')}"
