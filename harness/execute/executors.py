"""Executors run planned case groups in workers; every worker appends to its own record file.

Executors are plugins (registry `EXECUTORS`, entry-point group ``attnbench.executors``):

    inline          every case in this process (debugging; a crash ends the run, and `--resume`
                    then records the case that was running as `crashed`)
    subprocess      case groups in child processes (`--workers N`, default 1): the parent kills a
                    child past the case timeout and records a dead child's case as `crashed`
    gpus            one child per visible GPU (`--gpus 0,1`, default all), pinned through
                    CUDA_VISIBLE_DEVICES, one group at a time per GPU
    submitit-local  the same children inside submitit jobs on this machine (harness.execute.cluster)
    slurm           submitit jobs on a Slurm cluster (harness.execute.cluster)

Workers that share a device never time two cases at once (a per-device lock around the timed and
memory passes, harness.execute.devicelock); fitting, accuracy and other untimed work overlap.
"""

from __future__ import annotations

import abc
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from harness.common.errors import UserError
from harness.execute.plan import CaseGroup
from harness.execute.supervise import ChildWorker, FailureRecord, OnRow
from harness.plugins.registry import Registry


class ExecutorError(UserError, ValueError):
    """Executor options that cannot work here (no GPU for `gpus`, submitit missing): one line."""


# One child worker holds about 225 MiB once torch and the harness are imported (measured on CPU);
# the estimate leaves room for a small case's tensors. `--workers` above max_workers() is refused.
WORKER_MEMORY_BYTES = 512 << 20
WORKERS_PER_CORE = 4


def _memory_bytes() -> int:
    """Physical memory, or the cgroup's limit when lower (a container)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as fh:
                limit = fh.read(64).strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def max_workers() -> tuple[int, str]:
    """(the most workers this machine runs at once, why): min(4 x cores, memory / 512 MiB)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    memory = _memory_bytes()
    by_cores, by_memory = WORKERS_PER_CORE * cores, max(1, memory // WORKER_MEMORY_BYTES)
    why = (
        f"{WORKERS_PER_CORE} x {cores} cores = {by_cores}; {memory / 2**30:.1f} GiB memory / "
        f"{WORKER_MEMORY_BYTES >> 20} MiB per worker = {by_memory}"
    )
    return max(1, min(by_cores, by_memory)), why


MAX_TIME_MIN = 365 * 24 * 60


@dataclass
class ExecutorOptions:
    """What the command line (or a scenario's `execute:` block) says about how to run."""

    workers: int = 1
    gpus: list[str] | None = None  # CUDA device ids for `gpus`; None = every visible GPU
    partition: str | None = None  # slurm
    time_min: int = 60  # slurm / submitit job time limit, minutes
    gpus_per_task: int = 0  # slurm
    max_jobs: int | None = None  # slurm: jobs running at once (default: workers)
    cases_per_job: int | None = None  # slurm: cases packed into one job (default slurm.DEFAULT_CASES_PER_JOB)
    slurm_params: dict[str, str | bool] = field(default_factory=dict)  # slurm: more sbatch options, checked
    raise_errors: bool = False  # `--raise` (inline only): the first failing case re-raises

    def check(self, runs_here: bool = True) -> None:
        """Raise ExecutorError (one line) for options no executor can use; run before any worker,
        job or warm child starts. `runs_here`: the workers run on this machine (not on a cluster's
        nodes), so their number is bounded by its cores and memory."""
        most, why = max_workers() if runs_here else (10_000, "jobs at once")
        if not 1 <= self.workers <= most:
            raise ExecutorError(f"--workers {self.workers}: expected 1 to {most} on this machine ({why})")
        if self.max_jobs is not None and self.max_jobs < 1:
            raise ExecutorError(f"--max-jobs {self.max_jobs}: expected an int >= 1")
        if not 1 <= self.time_min <= MAX_TIME_MIN:
            raise ExecutorError(f"--time-min {self.time_min}: expected 1 to {MAX_TIME_MIN} minutes (a year)")
        if self.gpus_per_task < 0:
            raise ExecutorError(f"--gpus-per-task {self.gpus_per_task}: expected an int >= 0")
        if self.gpus is not None and len(set(self.gpus)) != len(self.gpus):
            raise ExecutorError(f"--gpus {','.join(self.gpus)}: a GPU id is listed twice")


@dataclass
class Execution:
    """One run's planned groups and how to report on them."""

    run_dir: Path
    device: str
    groups: list[CaseGroup]
    timeout_s: float
    options: ExecutorOptions
    failure_record: FailureRecord  # builds the parent's record for a killed or dead case
    on_row: OnRow  # progress: called once per finished case with its flat record
    on_start: Callable[[str], None] = field(default=lambda case_id: None)


class Executor(abc.ABC):
    """Runs every group of an `Execution` to records (in the run directory's worker files)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    runs_here: ClassVar[bool] = True  # its workers run on this machine (--workers is bounded by it)

    @classmethod
    def preflight(cls, options: ExecutorOptions) -> None:
        """Raise ExecutorError (one line) when this executor cannot run here, before anything is written."""
        return None

    @abc.abstractmethod
    def execute(self, run: Execution) -> None: ...


class InlineExecutor(Executor):
    name = "inline"
    description = "every case in this process, one after another (for debugging)"

    def execute(self, run: Execution) -> None:
        from harness.execute.worker import Worker

        worker = Worker(run.run_dir, run.device, "main")
        worker.ctx.raise_errors = run.options.raise_errors
        ids = [c.case_id for g in run.groups for c in g.cases]
        worker.run(
            ids,
            on_record=lambda case, rec: run.on_row(case.case_id, rec.flat()),
            on_start=lambda case: run.on_start(case.case_id),
        )


def run_in_children(run: Execution, slots: list[tuple[str, dict[str, str]]]) -> None:
    """Groups to child workers, one child per slot (worker id, extra environment), as each frees up.

    A slot takes the next group when its previous one is done, so one slot never runs two
    groups at once; each slot's child lives across groups (one start-up per slot, not per case).
    """
    todo: queue.Queue[CaseGroup] = queue.Queue()
    for group in run.groups:
        todo.put(group)
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def on_row(case_id: str, row: dict) -> None:
        with lock:
            run.on_row(case_id, row)

    def on_start(case_id: str) -> None:
        with lock:
            run.on_start(case_id)

    def serve(worker: str, env: dict[str, str]) -> None:
        child = ChildWorker(
            run.run_dir, run.device, worker, env, run.timeout_s, run.failure_record, on_row, stop, on_start
        )
        try:
            while not stop.is_set():
                try:
                    group = todo.get_nowait()
                except queue.Empty:
                    return
                child.run_group([c.case_id for c in group.cases])
        except BaseException as exc:  # re-raised in the caller's thread after the others stop
            errors.append(exc)
        finally:
            child.close()

    threads = [threading.Thread(target=serve, args=slot, daemon=True) for slot in slots]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.2)  # a short wait, so Ctrl-C reaches this thread
    except KeyboardInterrupt:
        stop.set()  # every slot kills its child; nothing is recorded for the interrupted cases
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]


class SubprocessExecutor(Executor):
    name = "subprocess"
    description = "case groups in child processes (--workers N): a crash or hang costs one case"

    def execute(self, run: Execution) -> None:
        workers = max(1, run.options.workers)
        run_in_children(run, [(f"w{i}", {}) for i in range(workers)])


def visible_gpus() -> list[str]:
    """Ids of the CUDA devices this process sees ('0', '1', ...); [] without CUDA."""
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


class GpusExecutor(Executor):
    name = "gpus"
    description = "one child per GPU (--gpus 0,1; default all), pinned by CUDA_VISIBLE_DEVICES"

    @classmethod
    def preflight(cls, options: ExecutorOptions) -> None:
        if options.gpus is None and not visible_gpus():
            raise ExecutorError(
                "--executor gpus: no CUDA device is visible here; pass --gpus 0,1,... or use subprocess"
            )

    def execute(self, run: Execution) -> None:
        gpus = run.options.gpus if run.options.gpus is not None else visible_gpus()
        run_in_children(run, [(f"gpu{g}", {"CUDA_VISIBLE_DEVICES": g}) for g in gpus])


EXECUTORS: Registry[type[Executor]] = Registry(
    "executor", group="attnbench.executors", builtins="harness.execute.cluster", base=Executor
)
EXECUTORS.register("inline", InlineExecutor)
EXECUTORS.register("subprocess", SubprocessExecutor)
EXECUTORS.register("gpus", GpusExecutor)
