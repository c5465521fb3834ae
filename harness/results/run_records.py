"""A run directory's records: one file per worker, merged into `records.jsonl`, each case once.

Every worker (the in-process one too) appends its records to `records.<worker>.jsonl` and, just
before a case runs, a start marker to `started.<worker>.jsonl`, each line fsynced. A worker file
has one writer, so workers on other processes, GPUs or cluster nodes never interleave writes.
`merge_run` rewrites `records.jsonl` atomically from all of them (finalize does it), so readers of a
finished run see one file; `read_run_records` merges on the fly for a run still in flight or
killed before finalizing.

A case recorded twice (a crashed case run again with `--retry-crashed`) keeps one record: a
non-crashed record wins over a crashed one, then the later start time, then the later file line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.common.files import append_line, atomic_path
from harness.results.records import (
    append_record,
    corrupt_case_ids,
    parse_line,
    read_records,
    repair_torn_tail,
)

MERGED = "records.jsonl"


def worker_records_path(run_dir: Path, worker: str) -> Path:
    return Path(run_dir) / f"records.{worker}.jsonl"


def started_path(run_dir: Path, worker: str) -> Path:
    return Path(run_dir) / f"started.{worker}.jsonl"


def _files(run_dir: Path, prefix: str) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob(f"{prefix}.*.jsonl") if p.name != MERGED)


def mark_started(run_dir: Path, worker: str, case_id: str, at: str, supervised: bool) -> None:
    """Append (fsynced) that `case_id` is about to run in `worker`: a case that kills its process
    is then known to have started, and is not run again blindly on resume. `supervised`: a parent
    watches this worker and records its death itself (so a marker left without a record means
    the whole run was killed, and the case is run again on resume)."""
    mark = {"case_id": case_id, "worker": worker, "pid": os.getpid(), "at": at, "supervised": supervised}
    _append(started_path(run_dir, worker), mark)


def mark_aborted(run_dir: Path, worker: str, case_id: str) -> None:
    """Cancel the start marker of a case interrupted by the user (Ctrl-C): it is not a crash."""
    _append(started_path(run_dir, worker), {"case_id": case_id, "worker": worker, "aborted": True})


def _append(path: Path, row: dict[str, Any]) -> None:
    append_line(path, json.dumps(row) + "\n")  # O_NOFOLLOW, fsynced


def add_record(run_dir: Path, worker: str, record: Any) -> None:
    """Append one record to the worker's file (durable before returning)."""
    append_record(worker_records_path(run_dir, worker), record)


class Follower:
    """The complete JSON lines appended to one file since the last `read` (a line still being
    written is left for the next read). `from_end`: start after what the file holds now."""

    def __init__(self, path: Path, from_end: bool = False) -> None:
        self.path = Path(path)
        self.offset = self.path.stat().st_size if from_end and self.path.exists() else 0

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        rows = [parse_line(line, self.path, -1) for line in data[:end].splitlines()]
        return [row for row in rows if row is not None]


def _rank(row: dict[str, Any], index: int) -> tuple[bool, str, int]:
    return (row.get("status") != "crashed", str(row.get("started_at") or ""), index)


def merge_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per case_id (see the module note for which), in order of first appearance."""
    best: dict[str, tuple[tuple[bool, str, int], dict[str, Any]]] = {}
    order: list[str] = []
    for i, row in enumerate(rows):
        cid = str(row.get("case_id"))
        if cid not in best:
            order.append(cid)
        rank = _rank(row, i)
        if cid not in best or rank > best[cid][0]:
            best[cid] = (rank, row)
    return [best[cid][1] for cid in order]


def read_run_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every case's record in `run_dir`: `records.jsonl` plus every worker file, merged."""
    rows = read_records(Path(run_dir) / MERGED)
    for path in _files(run_dir, "records"):
        rows += read_records(path)
    return merge_records(rows)


def corrupt_record_ids(run_dir: Path) -> set[str]:
    """Case ids legible in corrupt lines of the run's record files (none of their records is read)."""
    found: set[str] = set()
    for path in [Path(run_dir) / MERGED, *_files(run_dir, "records")]:
        found |= corrupt_case_ids(path)
    return found


def started_case_ids(run_dir: Path) -> dict[str, dict[str, Any]]:
    """case_id -> its last start marker, over every worker of the run (aborted starts left out)."""
    marks: dict[str, dict[str, Any]] = {}
    for path in _files(run_dir, "started"):
        for row in read_records(path):
            if row.get("aborted"):
                marks.pop(str(row["case_id"]), None)
            else:
                marks[str(row["case_id"])] = row
    return marks


def repair_run(run_dir: Path) -> None:
    """Cut torn last lines of every record and marker file (a worker killed mid-write)."""
    for path in [Path(run_dir) / MERGED, *_files(run_dir, "records"), *_files(run_dir, "started")]:
        repair_torn_tail(path)


def merge_run(run_dir: Path) -> list[dict[str, Any]]:
    """Rewrite `records.jsonl` from every record file (atomic: a temp file renamed over it)."""
    rows = read_run_records(run_dir)
    with atomic_path(Path(run_dir) / MERGED) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, allow_nan=False, default=str) + "\n")
    return rows
