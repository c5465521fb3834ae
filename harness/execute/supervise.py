"""The parent side of a child worker: feed it groups, enforce the case timeout, record its death.

The parent watches the child's start markers and records (the worker's own files). A case that
runs past its timeout plus a grace period gets its whole process group killed and is recorded
`timeout` by the parent; a child that dies during a case (a segfault, the OOM killer, `sys.exit`)
leaves a start marker without a record, which the parent records as `crashed` with the signal or
exit code and the tail of the child's stderr. A fresh child then takes the rest of the group.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.common.files import ensure_dir
from harness.execute import warm
from harness.results.records import Record
from harness.results.run_records import Follower, add_record, started_path, worker_records_path

GRACE_S = 5.0  # past the case timeout, before the parent kills the child
POLL_S = 0.1
FailureRecord = Callable[[str, str, str, dict], Record]  # (case_id, status, reason, info) -> Record
OnRow = Callable[[str, dict], None]  # (case_id, flat record) for progress


def describe_exit(code: int) -> str:
    """`exited with code 3` or `killed by signal 11 (SIGSEGV)` from a Popen return code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exited with code {code}"


def tail(path: Path, lines: int = 12, limit: int = 4000) -> str:
    """The last `lines` lines of a text file (at most `limit` bytes read), '' when absent."""
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - limit))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Seen:
    """What the parent has read of one worker's files."""

    recorded: set[str] = field(default_factory=set)  # by this supervisor's children
    history: set[str] = field(default_factory=set)  # recorded under this worker id before it started
    started: dict[str, float] = field(default_factory=dict)  # case_id -> parent time first seen


class ChildWorker:
    """One child process for one worker id (`w0`, `gpu1`), started on demand, reused across groups."""

    def __init__(
        self,
        run_dir: Path,
        device: str,
        worker: str,
        env: dict[str, str],
        timeout_s: float,
        failure_record: FailureRecord,
        on_row: OnRow,
        stop: threading.Event | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> None:
        self.run_dir, self.device, self.worker = Path(run_dir), device, worker
        self.env, self.timeout_s = env, timeout_s
        self.failure_record, self.on_row = failure_record, on_row
        self.on_start = on_start or (lambda case_id: None)  # progress: a case began in the child
        self.stop = stop or threading.Event()  # set (Ctrl-C): kill the child, record nothing
        self.proc: subprocess.Popen | None = None
        self.last_exit: int | None = None  # return code of the last child that ended
        self.seen = _Seen()
        self.stderr_path = self.run_dir / "logs" / f"{worker}.stderr.log"  # the current child's
        self.started_file = Follower(started_path(self.run_dir, self.worker))
        self.records_file = Follower(worker_records_path(self.run_dir, self.worker))
        self._poll_files(initial=True)  # what earlier runs of this worker id left: not news

    # ----- files ----------------------------------------------------------------------------
    def _poll_files(self, initial: bool = False) -> None:
        """Read new start markers and records. `initial`: earlier runs' files, taken as history
        (their records count as done, their markers are never in flight, nothing is reported)."""
        for mark in self.started_file.read():
            self.seen.started.pop(mark["case_id"], None)  # re-inserted last: the newest start
            if not initial and not mark.get("aborted"):
                self.seen.started[mark["case_id"]] = time.monotonic()
                self.on_start(mark["case_id"])
        for row in self.records_file.read():
            if initial:
                self.seen.history.add(row["case_id"])
            else:
                self.seen.recorded.add(row["case_id"])
                self.on_row(row["case_id"], row)

    def _in_flight(self) -> str | None:
        pending = [c for c in self.seen.started if c not in self.seen.recorded]
        return pending[-1] if pending else None

    def _record_failure(self, case_id: str, status: str, reason: str, info: dict) -> None:
        add_record(self.run_dir, self.worker, self.failure_record(case_id, status, reason, info))
        self._poll_files()

    # ----- the child ------------------------------------------------------------------------
    def _start(self) -> None:
        """Adopt a warm child (execute/warm.py) or start one, and tell it which run it works on."""
        logs = ensure_dir(self.run_dir / "logs")
        child = warm.take(self.env)
        if child is None:
            child = warm.spawn(self.env, str(logs / f"{self.worker}.stderr.log"))
        else:  # move its log beside the run's (same file system: the open file follows the name)
            with contextlib.suppress(OSError):
                target = logs / f"{self.worker}.{child.proc.pid}.stderr.log"
                os.replace(child.stderr_path, target)
                child.stderr_path = str(target)
        self.proc, self.stderr_path = child.proc, Path(child.stderr_path)
        header = {"run_dir": str(self.run_dir), "device": self.device, "worker": self.worker}
        self.proc.stdin.write(json.dumps(header) + "\n")
        self.proc.stdin.flush()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.last_exit = self.proc.wait()
            self.proc = None

    def kill(self) -> None:
        """End the child now (its process group), recording nothing for the case it runs."""
        self._kill()

    def close(self) -> None:
        """End the child: close its stdin (it exits after its group), then make sure it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None

    def run_group(self, case_ids: list[str]) -> None:
        """Run `case_ids` in a child (again, if recorded before: `--retry-crashed`); every one ends
        with a record, whatever the child does."""
        self._poll_files()
        remaining = [c for c in case_ids if c not in self.seen.recorded]
        while remaining and not self.stop.is_set():
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                self.proc.stdin.write(json.dumps({"case_ids": remaining}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:  # it died since its last group: the wait below records how
                pass
            progressed = self._wait()
            if self.stop.is_set():
                return
            before = len(remaining)
            remaining = [c for c in remaining if c not in self.seen.recorded]
            if remaining and not progressed and len(remaining) == before:
                why = f"the worker process {describe_exit(self.last_exit or 0)} before running it"
                info = {"exit": self.last_exit, "stderr_tail": tail(self.stderr_path)}
                for case_id in remaining:  # it cannot even start: give up on this group, loudly
                    self._record_failure(case_id, "crashed", why, info)
                remaining = []

    def _wait(self) -> bool:
        """Until the child says `done`, dies or is killed for a timeout. True when it said done."""
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                if sel.select(timeout=POLL_S):
                    line = self.proc.stdout.readline()
                    if line.strip() == "done":
                        self._poll_files()
                        return True
                    if line == "":  # end of output: the child is gone
                        self.proc.wait()
                        break
                    continue  # "ready"
                self._poll_files()
                if self.stop.is_set():
                    self._kill()
                    return False
                case_id = self._in_flight()
                if case_id and time.monotonic() - self.seen.started[case_id] > self.timeout_s + GRACE_S:
                    self._kill()
                    self._poll_files()
                    if self._in_flight() == case_id:
                        reason = (
                            f"case exceeded its {self.timeout_s:g} s limit and did not stop: its worker "
                            f"process was killed after {self.timeout_s + GRACE_S:g} s"
                        )
                        self._record_failure(case_id, "timeout", reason, {"killed": True})
                    return False
        finally:
            sel.close()
        self._poll_files()
        self.last_exit = code = self.proc.returncode
        self.proc = None
        case_id = self._in_flight()
        if case_id is not None:
            err = tail(self.stderr_path)
            last = err.splitlines()[-1] if err else "no stderr"
            reason = f"worker process {describe_exit(code)} during the case; stderr: {last[:200]}"
            self._record_failure(case_id, "crashed", reason, {"exit": code, "stderr_tail": err})
        return False
