"""Submitit executors: the same supervised child workers, inside submitit jobs.

    submitit-local   jobs on this machine through submitit's local executor (`--workers N` jobs,
                     each a share of the groups); the code path CI tests on CPU. Its jobs die with
                     the submitting process (a watchdog in each job), so a killed run leaves none.
    slurm            case groups packed into jobs of about `--cases-per-job` cases (never splitting
                     a group), a job array on a Slurm cluster (`--partition`, `--time-min`,
                     `--gpus-per-task`, `--max-jobs` at once, `--slurm-param KEY=VALUE` for any
                     other sbatch option); the run directory must be on a file system the nodes share

submitit (a maintained engine; attnbench writes no scheduler) pickles a `GroupJob` per job
(harness/execute/job.py). Inside
its job a `GroupJob` runs its groups through `ChildWorker`, so a crashing case costs one case, not
the job, and appends to its own `records.job<i>.jsonl`. A preempted or timed-out job is requeued
by submitit (`checkpoint`) and continues where its records end, as `--resume` does; a job the
scheduler ends (scancel, requeue, time limit) records nothing for the case it was running. The
submitting process follows the job files for progress and the job states (harness/execute/slurm.py)
until every job has ended; the case a cancelled or failed job was running is recorded `crashed`
with the job's state and log path, its cases not yet started are left to `--resume`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from harness.execute import slurm
from harness.execute.executors import EXECUTORS, Execution, Executor, ExecutorError, ExecutorOptions
from harness.execute.job import GroupJob
from harness.execute.rundir import process_start_time
from harness.results.run_records import (
    Follower,
    add_record,
    read_run_records,
    started_path,
    worker_records_path,
)

FOLLOW_S = 1.0  # how often the submitting process reads the jobs' record files
SCHEDULER_POLL_S = 5.0  # how often it asks the scheduler for the jobs' states
MAX_TIMEOUT_REQUEUES = 10  # a job requeued past its time limit this often is not requeued again


def _need_submitit(name: str) -> None:
    if importlib.util.find_spec("submitit") is None:
        raise ExecutorError(
            f"--executor {name} needs submitit: pip install 'attnbench[cluster]' (or submitit)"
        )


def _chunks(groups: list[list[str]], n: int) -> list[list[list[str]]]:
    """`groups` dealt into `n` shares of about equal case counts (largest groups first)."""
    shares: list[list[list[str]]] = [[] for _ in range(max(1, min(n, len(groups))))]
    sizes = [0] * len(shares)
    for group in sorted(groups, key=len, reverse=True):
        i = sizes.index(min(sizes))
        shares[i].append(group)
        sizes[i] += len(group)
    return shares


def _follow(run: Execution, workers: list[str], submit: Callable[[], list[Any]]) -> None:
    """Submit the jobs, report every record they append until all have ended, re-raise a job's error.

    The job files are followed from their current end: records of an earlier run are not news."""
    files = [Follower(worker_records_path(run.run_dir, w), from_end=True) for w in workers]
    jobs = submit()
    try:
        while True:
            finished = all(job.done() for job in jobs)
            for follower in files:
                for row in follower.read():
                    run.on_row(row["case_id"], row)
            if finished:
                break
            time.sleep(FOLLOW_S)
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        raise
    for job in jobs:
        job.result()  # a job that failed outside any case (submitit error) surfaces here


class SubmititLocalExecutor(Executor):
    name = "submitit-local"
    description = "submitit jobs on this machine (--workers N at once): the cluster code path, locally"

    @classmethod
    def preflight(cls, options: ExecutorOptions) -> None:
        _need_submitit(cls.name)

    def execute(self, run: Execution) -> None:
        import submitit

        groups = [[c.case_id for c in g.cases] for g in run.groups]
        shares = _chunks(groups, run.options.workers)
        executor = submitit.AutoExecutor(folder=run.run_dir / "submitit", cluster="local")
        executor.update_parameters(timeout_min=run.options.time_min)
        workers = [f"job{i}" for i in range(len(shares))]
        me = (os.getpid(), process_start_time(os.getpid()))
        tasks = [
            GroupJob(str(run.run_dir), run.device, w, share, run.timeout_s, submitter=me)
            for w, share in zip(workers, shares, strict=True)
        ]
        _follow(run, workers, lambda: [executor.submit(task) for task in tasks])


class SlurmExecutor(Executor):
    name = "slurm"
    runs_here = False  # jobs run on the cluster's nodes: --workers is not bounded by this machine
    description = (
        "case groups packed into Slurm jobs (--cases-per-job, --partition, --time-min, --gpus-per-task, "
        "--max-jobs, --slurm-param KEY=VALUE)"
    )

    @classmethod
    def preflight(cls, options: ExecutorOptions) -> None:
        _need_submitit(cls.name)
        if shutil.which("sbatch") is None or shutil.which("squeue") is None:
            raise ExecutorError(
                "--executor slurm: no Slurm here (sbatch/squeue not on PATH); run on a cluster login node, "
                "or use submitit-local to try the same code path on this machine"
            )
        problem = slurm.controller_problem()
        if problem is not None:
            raise ExecutorError(
                f"--executor slurm: no Slurm controller answers here ({problem}); run on a cluster login "
                "node, start a local one (bench/slurm_local.sh start), or use submitit-local"
            )

    def execute(self, run: Execution) -> None:
        import submitit

        slurm.quiet_submitit()
        opts = run.options
        if not slurm.has_accounting():
            print(
                "slurm: this cluster keeps no accounting (sacct answers nothing); job states come from "
                "squeue and scontrol",
                file=sys.stderr,
            )
        # a requeued job skips what it recorded, so each requeue past the time limit makes progress
        executor = submitit.AutoExecutor(
            folder=run.run_dir / "submitit", cluster="slurm", slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES
        )
        params: dict[str, Any] = {
            "timeout_min": opts.time_min,
            "slurm_array_parallelism": opts.max_jobs or opts.workers,
            # submitit's checkpoint signal comes this long before the time limit (its default 90 s
            # would come at once for a short limit: half the limit, at most 90 s)
            "slurm_signal_delay_s": min(90, opts.time_min * 30),
        }
        if opts.gpus_per_task:
            params["gpus_per_node"] = opts.gpus_per_task
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.slurm_params:
            params["slurm_additional_parameters"] = dict(opts.slurm_params)
        executor.update_parameters(**params)
        groups = [[c.case_id for c in g.cases] for g in run.groups]
        shares = slurm.pack_groups(groups, opts.cases_per_job or slurm.DEFAULT_CASES_PER_JOB)
        workers = [f"job{i}" for i in range(len(shares))]
        tasks = [
            GroupJob(str(run.run_dir), run.device, w, share, run.timeout_s)
            for w, share in zip(workers, shares, strict=True)
        ]
        if not tasks:
            return
        jobs = executor.submit_array(tasks)
        _follow_slurm(run, list(zip(workers, shares, jobs, strict=True)))


def _follow_slurm(run: Execution, jobs: list[tuple[str, list[list[str]], Any]]) -> None:
    """Report the jobs' records as they come until every job has ended; a job that ended without
    its result (cancelled, failed, out of time) gets the case it was running recorded `crashed`.

    A job has ended when its result file exists, or when the controller lists it in a final
    state or no longer lists it (asked every SCHEDULER_POLL_S; not at all when squeue is silent)."""
    files = {w: Follower(worker_records_path(run.run_dir, w), from_end=True) for w, _, _ in jobs}
    starts = {w: Follower(started_path(run.run_dir, w), from_end=True) for w, _, _ in jobs}
    open_jobs = {w: (share, job) for w, share, job in jobs}

    def report(worker: str) -> None:
        for row in files[worker].read():
            run.on_row(row["case_id"], row)

    asked = 0.0
    try:
        while open_jobs:
            for w in files:
                report(w)
            for w in [w for w, (_, job) in open_jobs.items() if job.paths.result_pickle.exists()]:
                open_jobs.pop(w)
            if open_jobs and time.monotonic() - asked > SCHEDULER_POLL_S:
                asked = time.monotonic()
                states = slurm.queued(job.job_id for _, job in open_jobs.values())
                for w, (share, job) in list(open_jobs.items()) if states is not None else []:
                    state = states.get(job.job_id)
                    if state in slurm.ACTIVE or job.paths.result_pickle.exists():
                        continue  # still queued or running; or finished since the first look
                    final = slurm.JobState(job.job_id, state) if state else slurm.ended_state(job.job_id)
                    _record_lost_job(run, w, share, job, final, starts[w])
                    report(w)
                    open_jobs.pop(w)
            if open_jobs:
                time.sleep(FOLLOW_S)
    except KeyboardInterrupt:  # Ctrl-C: the jobs go too; nothing is recorded for their cases
        slurm.cancel(job.job_id for _, job in open_jobs.values())
        raise
    for w in files:
        report(w)
    for _, _, job in jobs:
        if job.paths.result_pickle.exists():
            job.result()  # a job that failed outside any case (submitit error) surfaces here


def _record_lost_job(
    run: Execution, worker: str, share: list[list[str]], job: Any, final: slurm.JobState, starts: Follower
) -> None:
    """A job ended without finishing: record the case it was running `crashed` (with the job's
    state and log), and say how many of its cases it never started (`--resume` runs them)."""
    running: dict[str, None] = {}  # started by this job (markers since submission), not ended
    for mark in starts.read():
        if mark.get("aborted"):
            running.pop(mark["case_id"], None)
        else:
            running[mark["case_id"]] = None
    recorded = {r["case_id"] for r in read_run_records(run.run_dir)}
    log = str(job.paths.stderr)
    array_id, _, task = job.job_id.partition("_")
    for case_id in [c for c in running if c not in recorded]:
        rec = run.failure_record(
            case_id,
            "crashed",
            f"Slurm job {job.job_id} ended {final.state} during the case, before recording it; "
            f"job log: {log}",
            {"slurm_state": final.state, "job_log": log},
        )
        rec.worker, rec.slurm_job_id, rec.slurm_array_task_id = worker, array_id, task
        add_record(run.run_dir, worker, rec)
        recorded.add(case_id)
    left = [c for group in share for c in group if c not in recorded]
    if left:
        print(
            f"slurm: job {job.job_id} ended {final.state} with {len(left)} of its cases not run; "
            f"continue with --resume (job log: {log})",
            file=sys.stderr,
        )


EXECUTORS.register("submitit-local", SubmititLocalExecutor)
EXECUTORS.register("slurm", SlurmExecutor)
