"""What one submitit job runs (`GroupJob`), in a module that imports nothing heavy.

submitit unpickles the job in a fresh Python on the node, which imports this module; the job then
starts its child worker first (`execute/warm.py`) and imports the harness (torch) while the child
imports its own, so a job pays about one start-up, not two in a row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.execute import warm

WATCHDOG_S = 0.5  # how often a submitit-local job checks that its submitting process lives
IGNORE_SIGTERM = "ATTNBENCH_WORKER_IGNORE_SIGTERM"  # set for a job's worker: see GroupJob
WORKER_ENV = {IGNORE_SIGTERM: "1"}


@dataclass
class GroupJob:
    """What one submitit job runs: groups of case ids of one run, under one worker id.

    A scheduler ends a job (scancel, requeue, the time limit) with SIGTERM to every process of it.
    The job's worker ignores SIGTERM (it dies with the job: PR_SET_PDEATHSIG); the job kills it
    and exits without recording the case it was running, and without a result, so the scheduler's
    decision stands: a requeued job runs that case again, a cancelled one leaves it to the
    submitting process. `submitter` (pid, start time) makes a local job end when that process is gone.
    """

    run_dir: str
    device: str
    worker: str
    groups: list[list[str]]
    timeout_s: float
    submitter: tuple[int, float] | None = None

    def __call__(self) -> int:
        """Run every group (skipping cases already recorded); returns how many cases have records."""
        warm.prespawn(1, WORKER_ENV)  # its imports overlap this process's own (below)
        from harness.execute.rundir import hold_run
        from harness.execute.supervise import ChildWorker
        from harness.execute.worker import failure_record_factory

        hold_run(Path(self.run_dir))  # the run's writer lock is not taken over while this job lives
        stop = threading.Event()
        ended_by: list[str] = []

        def on_term(signum: int, frame: Any) -> None:
            ended_by.append("SIGTERM from the scheduler")
            stop.set()

        signal.signal(signal.SIGTERM, on_term)
        if self.submitter is not None:
            _start_watchdog(self.submitter, stop, ended_by)
        factory = _naming_log(failure_record_factory(Path(self.run_dir), self.device, self.worker))
        child = ChildWorker(
            Path(self.run_dir), self.device, self.worker, WORKER_ENV, self.timeout_s,
            factory, _ignore, stop,
        )  # fmt: skip
        try:
            for group in self.groups:  # a requeued job skips what its earlier attempt recorded
                if stop.is_set():
                    break
                child.run_group([c for c in group if c not in child.seen.history])
        except BaseException as exc:  # submitit's checkpoint exits (SystemExit) mid-case: record nothing
            child.kill()
            if stop.is_set() or _requeue_cut_short(exc):  # the scheduler is ending the job: no result
                raise SystemExit(143) from None
            raise
        if stop.is_set():
            child.kill()
            print(f"attnbench job {self.worker}: ended by {ended_by[0]}; nothing recorded for the "
                  "case it was running", file=sys.stderr, flush=True)  # fmt: skip
            raise SystemExit(143)  # no result file: the job did not finish its groups
        child.close()
        return len(child.seen.recorded | child.seen.history)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue this job as it is: it resumes from its record file (submitit's preemption hook)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _requeue_cut_short(exc: BaseException) -> bool:
    """submitit's `scontrol requeue` killed by the SIGTERM its own requeue sends to every process of
    the job: the requeue happened (an error result here would end the job for the submitter)."""
    cmd = getattr(exc, "cmd", None)
    return (
        isinstance(exc, subprocess.CalledProcessError)
        and isinstance(cmd, list)
        and cmd[:2] == ["scontrol", "requeue"]
        and exc.returncode < 0
    )


def _naming_log(factory: Any) -> Any:
    """`factory` whose records also name this job's log (submitit's stderr file of the job)."""
    import submitit

    try:
        log = str(submitit.JobEnvironment().paths.stderr)
    except RuntimeError:  # not inside a submitit job (a test calling the job directly)
        return factory

    def make(case_id: str, status: str, reason: str, info: dict) -> Any:
        return factory(case_id, status, f"{reason}; job log: {log}", {**info, "job_log": log})

    return make


def _start_watchdog(submitter: tuple[int, float], stop: threading.Event, ended_by: list[str]) -> None:
    """Set `stop` and end the job when the submitting process is gone (pid reused counts as gone)."""
    from harness.execute.rundir import process_start_time

    pid, started = submitter

    def watch() -> None:
        while not stop.wait(WATCHDOG_S):
            if process_start_time(pid) != started:
                ended_by.append(f"the death of its submitting process {pid}")
                stop.set()  # the main thread kills the worker and exits
                time.sleep(10)  # in case the main thread is stuck outside the supervisor's loop
                os._exit(143)

    threading.Thread(target=watch, daemon=True, name="attnbench-watchdog").start()


def _ignore(case_id: str, row: dict) -> None:
    """Jobs report nothing live: the submitting process follows their files."""
