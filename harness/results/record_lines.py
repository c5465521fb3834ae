"""Reading JSON-lines files of a run directory (records, start markers) without trusting them.

Only a regular file is read (a FIFO or device planted under a record file's name is refused at
once, never waited on). A line is a record when it is a complete JSON object that passes the
caller's `check`; anything else is skipped with one warning naming the file, the line and why
(at most `MAX_WARNINGS` per file, then one line saying how many more), and `--resume` runs its
case again when its `case_id` is still legible. A line longer than `MAX_LINE` bytes is skipped
without being held in memory; a torn last line (a run killed mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from harness.common.files import open_append, open_regular

Check = Callable[[dict[str, Any]], str]  # '' for a usable row, else what is wrong (names the field)
MAX_LINE = 64 << 20  # a record is a few KiB; its time samples at most a few MiB
MAX_WARNINGS = 5  # per file: a binary file dropped in place of records must not flood the terminal
UNATTRIBUTED = ""  # in `corrupt_case_ids`: some corrupt line names no legible case
_WARNED: dict[str, set[int]] = {}  # file -> lines already reported (readers run often)


def warn_line(path: Path, number: int, what: str) -> None:
    """Report once that line `number` of `path` was skipped, and why (`what`)."""
    seen = _WARNED.setdefault(str(path), set())
    if number in seen and number > 0:
        return
    seen.add(number)
    where = f"line {number}" if number > 0 else "a line"
    if len(seen) <= MAX_WARNINGS:
        print(f"warning: {path}: {where}: {what}", file=sys.stderr)
    elif len(seen) == MAX_WARNINGS + 1:
        print(f"warning: {path}: more lines skipped; not listed one by one", file=sys.stderr)


def parse_line(raw: bytes, path: Path, number: int, check: Check | None = None) -> dict[str, Any] | None:
    """One JSON-lines record, or None for a blank line or a corrupt one (not UTF-8, not JSON, not
    an object, or refused by `check`), which is reported once on stderr naming the file and line."""
    text = raw.strip()
    if not text:
        return None
    try:
        row = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        what = "corrupt record skipped (" + " ".join(str(err).split())[:80] + ")"
    else:
        problem = "" if not isinstance(row, dict) else check(row) if check is not None else ""
        if isinstance(row, dict) and not problem:
            return row
        what = (
            f"malformed record skipped ({problem})"
            if problem
            else f"corrupt record skipped (a JSON {type(row).__name__}, not a record)"
        )
    warn_line(path, number, what)
    return None


def numbered_lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, its bytes) for every line, the last one possibly without its newline;
    None in place of a line longer than MAX_LINE (read past in chunks, never held whole)."""
    number = 0
    while line := fh.readline(MAX_LINE):
        number += 1
        if len(line) == MAX_LINE and not line.endswith(b"\n"):
            while (more := fh.readline(MAX_LINE)) and not more.endswith(b"\n"):
                pass
            yield number, None if more else line  # at the end of the file: a torn line
            continue
        yield number, line


def _complete_lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    if not os.path.exists(path):  # absent (or a dangling link: its writer refuses it)
        return
    with open_regular(path) as fh:
        for number, line in numbered_lines(fh):
            if line is not None and not line.endswith(b"\n"):
                return  # torn write from a killed run
            if line is None:
                warn_line(path, number, f"longer than {MAX_LINE >> 20} MiB; skipped")
            yield number, line


def read_records(path: Path, check: Check | None = None) -> list[dict[str, Any]]:
    """All complete records in `path` as flat dicts. A torn last line (killed mid-write) is ignored;
    a corrupt line elsewhere (or one `check` refuses) is skipped with a warning naming its line
    (`--resume` reruns its case)."""
    out: list[dict[str, Any]] = []
    for number, line in _complete_lines(Path(path)):
        row = parse_line(line, path, number, check) if line is not None else None
        if row is not None:
            out.append(row)
    return out


def corrupt_case_ids(path: Path, check: Check | None = None) -> set[str]:
    """The case ids still legible in the corrupt lines of `path` (their cases run again on resume);
    UNATTRIBUTED among them when some corrupt line names no legible case."""
    found: set[str] = set()
    for number, line in _complete_lines(Path(path)):
        if line is None or (line.strip() and parse_line(line, path, number, check) is None):
            match = re.search(rb'"case_id"\s*:\s*"([0-9a-zA-Z_-]+)"', line or b"")
            found.add(match.group(1).decode() if match else UNATTRIBUTED)
    return found


def repair_torn_tail(path: Path) -> None:
    """Cut a partial last line so appends start on a fresh line (used by --resume); reads only
    the tail of the file."""
    path = Path(path)
    if not os.path.exists(path):
        return
    with open_regular(path) as fh:
        end = pos = fh.seek(0, os.SEEK_END)
        while pos > 0:
            step = min(pos, 1 << 20)
            fh.seek(pos - step)
            chunk = fh.read(step)
            if pos == end and chunk.endswith(b"\n"):
                return
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                pos = pos - step + newline + 1
                break
            pos -= step
    if pos < end:
        with open_append(path) as out:  # never truncates through a planted symlink
            out.buffer.truncate(pos)
