"""Submitit executors: the same supervised child workers, inside submitit jobs.

    submitit-local   jobs on this machine through submitit's local executor (`--workers N` jobs,
                     each a share of the groups); the code path CI tests on CPU
    slurm            one job per case group on a Slurm cluster (`--partition`, `--time-min`,
                     `--gpus-per-task`, `--max-jobs` jobs at once); the run directory must be on a
                     file system the nodes share

submitit (a maintained engine; attnbench writes no scheduler) pickles a `GroupJob` per job. Inside
its job a `GroupJob` runs its groups through `ChildWorker`, so a crashing case costs one case, not
the job, and appends to its own `records.job<i>.jsonl`. A preempted or timed-out job is requeued
by submitit (`checkpoint`) and continues where its records end, as `--resume` does. The submitting
process follows the job files for progress and waits for every job.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.execute.executors import EXECUTORS, Execution, Executor, ExecutorError, ExecutorOptions
from harness.execute.supervise import ChildWorker
from harness.execute.worker import failure_record_factory
from harness.results.run_records import Follower, worker_records_path

FOLLOW_S = 1.0  # how often the submitting process reads the jobs' record files


@dataclass
class GroupJob:
    """What one submitit job runs: groups of case ids of one run, under one worker id."""

    run_dir: str
    device: str
    worker: str
    groups: list[list[str]]
    timeout_s: float

    def __call__(self) -> int:
        """Run every group (skipping cases already recorded); returns how many cases have records."""
        factory = failure_record_factory(Path(self.run_dir), self.device, self.worker)
        child = ChildWorker(
            Path(self.run_dir), self.device, self.worker, {}, self.timeout_s, factory, _ignore
        )
        try:
            for group in self.groups:  # a requeued job skips what its earlier attempt recorded
                child.run_group([c for c in group if c not in child.seen.history])
        finally:
            child.close()
        return len(child.seen.recorded | child.seen.history)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue this job as it is: it resumes from its record file (submitit's preemption hook)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _ignore(case_id: str, row: dict) -> None:
    """Jobs report nothing live: the submitting process follows their files."""


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
    while True:
        finished = all(job.done() for job in jobs)
        for follower in files:
            for row in follower.read():
                run.on_row(row["case_id"], row)
        if finished:
            break
        time.sleep(FOLLOW_S)
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
        tasks = [
            GroupJob(str(run.run_dir), run.device, w, share, run.timeout_s)
            for w, share in zip(workers, shares, strict=True)
        ]
        _follow(run, workers, lambda: [executor.submit(task) for task in tasks])


class SlurmExecutor(Executor):
    name = "slurm"
    runs_here = False  # jobs run on the cluster's nodes: --workers is not bounded by this machine
    description = (
        "one submitit job per case group on Slurm (--partition, --time-min, --gpus-per-task, --max-jobs)"
    )

    @classmethod
    def preflight(cls, options: ExecutorOptions) -> None:
        _need_submitit(cls.name)
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise ExecutorError(
                "--executor slurm: no Slurm here (sbatch/srun not on PATH); run on a cluster login node, "
                "or use submitit-local to try the same code path on this machine"
            )

    def execute(self, run: Execution) -> None:
        import submitit

        opts = run.options
        executor = submitit.AutoExecutor(folder=run.run_dir / "submitit", cluster="slurm")
        params: dict[str, Any] = {
            "timeout_min": opts.time_min,
            "slurm_array_parallelism": opts.max_jobs or opts.workers,
            "gpus_per_node": opts.gpus_per_task,
        }
        if opts.partition:
            params["slurm_partition"] = opts.partition
        executor.update_parameters(**params)
        workers = [f"job{i}" for i in range(len(run.groups))]
        tasks = [
            GroupJob(str(run.run_dir), run.device, w, [[c.case_id for c in g.cases]], run.timeout_s)
            for w, g in zip(workers, run.groups, strict=True)
        ]
        _follow(run, workers, lambda: executor.submit_array(tasks) if tasks else [])


EXECUTORS.register("submitit-local", SubmititLocalExecutor)
EXECUTORS.register("slurm", SlurmExecutor)
