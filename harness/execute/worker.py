"""A worker: runs planned cases of one run directory and appends their records to its own file.

In process (the `inline` executor) or as a child process (`python -m harness.execute.worker`,
started by the `subprocess`, `gpus` and submitit executors). A child reads groups of case ids as
JSON lines on stdin, runs each group in order and answers `done` on stdout; it exits at the end
of stdin. Before a case runs its start is marked (`started.<worker>.jsonl`), after it its record
is appended (`records.<worker>.jsonl`), both fsynced: a case that kills the process is known to
have started, and the supervising parent records it as `crashed`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from harness.common.files import read_json_file
from harness.config.scenario import Scenario, scenario_from_dict
from harness.config.sweep import Case, expand
from harness.execute.context import CaseContext
from harness.execute.devicelock import device_key, device_lock
from harness.execute.lifecycle import run_case
from harness.execute.rundir import hold_run
from harness.execute.supervise import FailureRecord
from harness.measure import env as env_mod
from harness.measure.canary import CanaryClock
from harness.measure.hygiene import apply_threads
from harness.measure.roofline import Roofline
from harness.plugins.kinds import KINDS
from harness.results.case_record import new_record
from harness.results.records import Record
from harness.results.run_records import add_record, mark_aborted, mark_started, read_run_records

OnRecord = Callable[[Case, Record], None]


def now() -> str:
    """UTC time with microseconds: orders start markers and records of one run."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def oom_lengths(done: Iterable[dict]) -> dict[str, int]:
    """config_key -> the shortest seq_len that ran out of memory (the OOM rule), from records."""
    oom_at: dict[str, int] = {}
    for r in done:
        if r.get("status") == "oom":
            key = r["config_key"]
            oom_at[key] = min(oom_at.get(key, r["seq_len"]), r["seq_len"])
    return oom_at


def load_run(run_dir: Path) -> tuple[Scenario, dict]:
    """The run's validated scenario (from scenario.json) and its run.json."""
    run_dir = Path(run_dir)
    meta = read_json_file(run_dir / "run.json")  # a FIFO or device planted here is refused, not read
    raw = read_json_file(run_dir / "scenario.json")
    return scenario_from_dict(raw, meta.get("scenario_path") or str(run_dir / "scenario.json")), meta


def make_context(run_dir: Path, device: str, worker: str, scenario: Scenario, meta: dict) -> CaseContext:
    """The context every case of this worker shares: run identity, provenance, roofline."""
    ctx = CaseContext(scenario, meta["run_id"], meta.get("git_sha", ""), meta.get("scenario_arg", ""), device)
    ctx.set_provenance(worker, env_mod.write_env(Path(run_dir), env_mod.collect_env()))
    roofline = Path(run_dir) / "roofline.json"
    if scenario.measure.roofline and roofline.exists():
        ctx.roofline = Roofline.from_dict(read_json_file(roofline))
    return ctx


class Worker:
    """Runs cases of one run directory under one worker id (records.<worker>.jsonl)."""

    def __init__(self, run_dir: Path, device: str, worker: str, supervised: bool = False) -> None:
        self.run_dir, self.device, self.worker = Path(run_dir), device, worker
        self.supervised = supervised  # a parent process watches this worker (subprocess, gpus, jobs)
        self.scenario, meta = load_run(self.run_dir)
        apply_threads(self.scenario.measure, device)
        self.ctx = make_context(self.run_dir, device, worker, self.scenario, meta)
        key = device_key(device, self.ctx.device_uuid, self.ctx.visible_devices)
        self.ctx.measure_lock = lambda: device_lock(self.run_dir, key)
        self.cases = {c.case_id: c for c in expand(self.scenario, device)}
        self.kind = KINDS.get(self.scenario.kind)()
        self.canary = CanaryClock(self.run_dir, worker, device)  # drift evidence for `compare`

    def run(
        self,
        case_ids: list[str],
        on_record: OnRecord | None = None,
        on_start: Callable[[Case], None] | None = None,
    ) -> None:
        """Run `case_ids` in order (one group, or several); the OOM rule sees the run's records."""
        oom_at = oom_lengths(read_run_records(self.run_dir))
        for case_id in case_ids:
            case = self.cases[case_id]
            if self.canary.due():  # between cases, never during one's timing (same device lock)
                with self.ctx.measure_lock():
                    self.canary.tick()
            mark_started(self.run_dir, self.worker, case_id, now(), self.supervised)
            if on_start is not None:
                on_start(case)
            try:
                record = run_case(self.kind, case, self.ctx, oom_at)
            except (KeyboardInterrupt, Exception) as exc:
                if isinstance(exc, KeyboardInterrupt) or self.ctx.raise_errors:  # Ctrl-C or --raise:
                    mark_aborted(self.run_dir, self.worker, case_id)  # not a crash (sys.exit is one)
                raise
            try:
                add_record(self.run_dir, self.worker, record)
            except OSError:  # disk full or a file-size limit: not recorded, so it runs again on --resume
                with contextlib.suppress(OSError):
                    mark_aborted(self.run_dir, self.worker, case_id)
                raise
            if on_record is not None:
                on_record(case, record)


def failure_records(ctx: CaseContext, cases: dict[str, Case]) -> FailureRecord:
    """Builds the record of a case whose child was killed or died: its identity and provenance
    from `ctx`, the status and reason given, and `info` (exit code, stderr tail)."""

    def make(case_id: str, status: str, reason: str, info: dict) -> Record:
        rec = new_record(cases[case_id], ctx)
        rec.status, rec.reason = status, reason
        rec.info.update(info)
        return rec

    return make


def failure_record_factory(run_dir: Path, device: str, worker: str) -> FailureRecord:
    """`failure_records` for a supervising process outside the runner (a submitit job)."""
    scenario, meta = load_run(run_dir)
    ctx = make_context(run_dir, device, worker, scenario, meta)
    return failure_records(ctx, {c.case_id: c for c in expand(scenario, device)})


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when its supervising parent dies, so a killed
    run leaves no orphan measuring in the background (elsewhere the worker ends at end of stdin)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() == 1:  # the parent is already gone
            os._exit(1)


def main() -> int:
    """`python -m harness.execute.worker`: the first stdin line names the run
    ({"run_dir", "device", "worker"}), each further line is a group ({"case_ids": [...]}) answered
    with `done` on stdout. It may be started before its run exists (execute/warm.py)."""
    _die_with_parent()
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit a write fails (EFBIG), not the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    first = sys.stdin.readline()
    if not first.strip():
        return 0  # a warm child nobody needed
    job = json.loads(first)
    if os.environ.get("ATTNBENCH_WORKER_IGNORE_SIGTERM"):  # in a scheduler's job: see execute/job.py
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    hold_run(Path(job["run_dir"]))  # the run's writer lock is not taken over while this worker lives
    runner = Worker(Path(job["run_dir"]), job["device"], job["worker"], supervised=True)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            runner.run(json.loads(line)["case_ids"])
            print("done", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
