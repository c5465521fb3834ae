"""Writing inside a run directory: never through a planted symlink, never a torn file.

Every file a run writes goes through here. Appends (records and start markers, one JSON line
each) open with `O_NOFOLLOW`, so a symlink planted under a record file's name is refused instead
of followed. Whole files (records.jsonl, records.parquet, report.md, plots, run.json, ...) are
written to a fresh temporary name in the same folder (`O_EXCL`: never an existing file or link),
fsynced and renamed over the target; a rename replaces a planted link itself rather than writing
through it, and a crash or a full disk leaves the previous file (or none), never a torn one.
Folders a run creates (plots/, logs/, envs/, locks/) are refused when they are symlinks.

Only regular files are written or read: a target that is a device, FIFO, socket or folder is
refused before anything is written (`UnsafePathError`), and a temporary file is never renamed over
one (a copy of /dev/full or /dev/stdout stays what it is). A symlink is refused unless it resolves
to a regular file the user can write; inside a run directory the link itself is then replaced,
while a path the user named (`export --out`) is written through (`follow=True`). Readers open
without blocking (a FIFO never hangs them) and refuse anything but a regular file.

File-system failures are plain `OSError`s carrying the path; the command line turns any of them
(and `UnsafePathError`, a `UserError`) into one line naming the path and the cause, exit 2.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from harness.common.errors import UserError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
MAX_JSON_BYTES = 16 << 20  # a run's JSON side files (env.json, run.json, ...) are a few KiB


class UnsafePathError(UserError):
    """A path the harness will not write or read: not a regular file (device, FIFO, socket,
    folder), or a symlink that does not resolve to a regular file the user can write."""


def kind_of(mode: int) -> str:
    """'a directory', 'a FIFO', ... for a file mode that is not a regular file's."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def writable_target(path: Path, follow: bool = False) -> Path:
    """The path to replace when writing the whole of `path`: `path` itself when it is absent or a
    regular file; for a symlink to a regular file the user can write, the resolved file (`follow`)
    or the link itself (a run directory's own files: the link is replaced, never followed).
    Anything else raises UnsafePathError naming what is there."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISREG(st.st_mode):
        return path
    if not stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path}: is {kind_of(st.st_mode)}, not a regular file; refusing to write it")
    resolved = Path(os.path.realpath(path))
    try:
        real = os.stat(path)
    except OSError:
        raise UnsafePathError(
            f"{path}: is a symbolic link to {resolved}, which does not exist; refusing to write through it"
        ) from None
    if not stat.S_ISREG(real.st_mode):
        raise UnsafePathError(
            f"{path}: is a symbolic link to {resolved}, {kind_of(real.st_mode)}; refusing to write it"
        )
    if not os.access(resolved, os.W_OK):
        raise UnsafePathError(f"{path}: is a symbolic link to {resolved}, which you cannot write")
    return resolved if follow else path


def _refuse_special(fd: int, path: Path) -> None:
    """Close `fd` and raise UnsafePathError unless it is a regular file."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafePathError(f"{path}: is {kind_of(mode)}, not a regular file")


def open_regular(path: Path) -> IO[bytes]:
    """`path` opened for reading in binary; a FIFO, device, socket or folder raises
    UnsafePathError at once (opened without blocking, so a FIFO nobody writes never hangs)."""
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    _refuse_special(fd, Path(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_json_file(path: Path, limit: int = MAX_JSON_BYTES) -> object:
    """The JSON value in regular file `path` (at most `limit` bytes). OSError when it cannot be
    read, ValueError when it is not JSON, UnsafePathError when it is no regular file or too big."""
    with open_regular(path) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafePathError(f"{path}: larger than {limit >> 20} MiB; not a file attnbench wrote")
    return json.loads(data.decode("utf-8"))


def ensure_dir(path: Path) -> Path:
    """Create folder `path` (and its parents) unless it exists; refuse a symlink or a non-folder."""
    path = Path(path)
    if not os.path.lexists(path):
        path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "is a symbolic link; a run directory's folders must be real", str(path))
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path}: is {kind_of(st.st_mode)}, not a folder")
    return path


def open_append(path: Path) -> IO[str]:
    """`path` opened for appending text, created when absent; a symlink there raises OSError, a
    FIFO, device, socket or folder UnsafePathError (opened without blocking: a FIFO never hangs)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, "is a symbolic link; refusing to write through it", str(path)
            ) from None
        if err.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO nobody reads; a folder
            mode = os.lstat(path).st_mode
            raise UnsafePathError(f"{path}: is {kind_of(mode)}, not a regular file") from None
        raise
    _refuse_special(fd, Path(path))
    os.set_blocking(fd, True)
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
def atomic_path(path: Path, follow: bool = False) -> Iterator[Path]:
    """A fresh temporary path next to `path` to write the whole file to (for writers that take a
    file name: parquet, savefig); renamed over `path` when the block ends, removed on any error.
    `path` must be absent, a regular file or a link to one (`writable_target`; `follow`: a path
    the user named, whose link is written through); it is checked again just before the rename."""
    path = writable_target(Path(path), follow)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # as a plain open() would leave it (mkstemp makes 0600)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:  # durable before it replaces the previous version
            os.fsync(fh.fileno())
        writable_target(path)  # a device or FIFO put there meanwhile is refused, not replaced
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _named(err, path) from err
        raise


def write_atomic(path: Path, data: str | bytes, follow: bool = False) -> None:
    """Write the whole of `path` (text is UTF-8) through a temporary file renamed over it."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, follow) as tmp, open(tmp, "wb") as fh:
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
