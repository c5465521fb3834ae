"""Slurm, as the `slurm` executor sees it: options checked against sbatch's syntax, case groups
packed into jobs, the controller asked before anything is written, and job states read without
accounting.

The sbatch syntax checks live in harness/config/slurm_syntax.py (the scenario validator uses them).
Everything here calls Slurm's own commands (`sinfo`, `squeue`, `scontrol`, `sacct`) with short
timeouts; submitit (harness/execute/cluster.py) writes and submits the batch scripts. Nothing here
imports torch.

Why our own job states: submitit reads states with `sacct`, which a cluster without accounting
(`AccountingStorageType=accounting_storage/none`, the local CI cluster) cannot answer. submitit
then warns at every poll and never sees a cancelled job end (it waits for a result file that never
comes). `squeue` lists every job that has not ended on any cluster; `scontrol show job` keeps an
ended job's state for `MinJobAge` seconds; a job that `squeue` no longer lists has ended.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.config.slurm_syntax import (  # re-exported: the executor's options are checked with them
    SlurmSyntaxError,
    check_param,
    check_value,
    parse_cli_params,
)

__all__ = ["SlurmSyntaxError", "check_param", "check_value", "parse_cli_params"]

DEFAULT_CASES_PER_JOB = 25  # a 1,000-case sweep -> about 40 jobs: start-up and queue wait amortized
COMMAND_TIMEOUT_S = 10.0  # any one call of a Slurm command
PING_TIMEOUT_S = 5.0  # the preflight's question to the controller


def pack_groups(groups: Sequence[list[str]], cases_per_job: int) -> list[list[list[str]]]:
    """Case groups (in plan order) into jobs of about `cases_per_job` cases, never splitting a
    group (its cases share a fit and the OOM rule): a job takes groups until the next one would
    pass the target; a group larger than the target is a job of its own."""
    jobs: list[list[list[str]]] = []
    size = 0
    for group in groups:
        if not group:
            continue
        if not jobs or (size + len(group) > cases_per_job and size > 0):
            jobs.append([])
            size = 0
        jobs[-1].append(group)
        size += len(group)
    return jobs


# ----- asking the scheduler --------------------------------------------------------------------
def _run(cmd: list[str], timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess | None:
    """A Slurm command's result, or None when it is missing or does not answer in `timeout`."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def controller_problem(timeout: float = PING_TIMEOUT_S) -> str | None:
    """None when a Slurm controller answers `sinfo`, else why not (one line)."""
    res = _run(["sinfo", "-h", "-o", "%P"], timeout)
    if res is None:
        return f"no Slurm controller answered `sinfo` within {timeout:g} s"
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {res.returncode}"
        return f"`sinfo` failed: {last[:200]}"
    return None


def has_accounting() -> bool:
    """Whether `sacct` answers here (a cluster with accounting storage)."""
    res = _run(["sacct", "-n", "-X", "-o", "JobID", "-S", "now"])
    return res is not None and res.returncode == 0


ENDED_UNKNOWN = "ENDED"  # left the queue; its final state is no longer known to the controller


@dataclass
class JobState:
    job_id: str  # "12" or "12_3" (array task)
    state: str  # RUNNING, PENDING, COMPLETED, CANCELLED, TIMEOUT, FAILED, ... or ENDED
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
    "PREEMPTED",  # requeued or about to be
}


def queued(job_ids: Iterable[str]) -> dict[str, str] | None:
    """job id (`12` or `12_3`) -> state, of the given jobs (array ids expand to their tasks) that
    the controller still knows (`squeue -t all`: active ones, and ended ones for MinJobAge
    seconds); None when squeue does not answer (the caller asks again later)."""
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    if not ids:
        return {}
    res = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(ids)])
    if res is not None and res.returncode != 0 and "Invalid job id" in res.stderr:
        return {}  # every one of them has ended and been purged
    if res is None or res.returncode != 0:
        return None
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid:
            out[jid] = state.strip().upper()
    return out


def ended_state(job_id: str) -> JobState:
    """The final state of an ended job: `scontrol show job` (kept MinJobAge seconds), else sacct."""
    res = _run(["scontrol", "-o", "show", "job", job_id])
    if res is not None and res.returncode == 0:
        fields = dict(part.partition("=")[::2] for part in res.stdout.split())
        state = fields.get("JobState", "").upper()
        if state:
            return JobState(job_id, state, fields.get("Reason", ""))
    res = _run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id])
    if res is not None and res.returncode == 0 and res.stdout.strip():
        return JobState(job_id, res.stdout.split()[0].upper().split()[0])
    return JobState(job_id, ENDED_UNKNOWN)


def cancel(job_ids: Iterable[str]) -> None:
    """scancel these jobs (best effort: they may have ended)."""
    ids = sorted(set(job_ids))
    if ids:
        _run(["scancel", *ids])


# ----- submitit's noise ------------------------------------------------------------------------
class _NoSacctNoise(logging.Filter):
    """Drops submitit's per-poll "Bypassing sacct error" warning (we say it once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bypassing sacct error" not in record.getMessage()


def quiet_submitit() -> None:
    """Install the filter on submitit's logger (idempotent)."""
    log = logging.getLogger("submitit")
    if not any(isinstance(f, _NoSacctNoise) for f in log.filters):
        log.addFilter(_NoSacctNoise())


def slurm_provenance(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The record fields naming where a case ran on Slurm ("" off Slurm): the job id (the array's
    id for an array task, as squeue shows it before `_`), the array task id and the node."""
    env = os.environ if environ is None else environ
    return {
        "slurm_job_id": env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID", ""),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID", ""),
        "slurm_node": env.get("SLURMD_NODENAME", ""),
    }
