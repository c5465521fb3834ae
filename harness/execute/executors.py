"""Executors run planned case groups and hand each finished record to the run's single writer.

Executors are plugins (registry `EXECUTORS`, entry-point group ``attnbench.executors``). Built in:
`inline`, which runs every group in this process, one case after another. A worker's per-case
function never raises except KeyboardInterrupt: failures are statuses inside the record.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

from harness.config.sweep import Case
from harness.execute.plan import CaseGroup
from harness.plugins.registry import Registry
from harness.results.records import Record

RunCase = Callable[[Case], Record]
"""Runs one case to its record (the kernel pipeline, or a benchmark kind's own steps)."""


class RecordSink(abc.ABC):
    """Where an executor reports progress and finished records (the run directory's writer)."""

    @abc.abstractmethod
    def case_started(self, case: Case) -> None: ...

    @abc.abstractmethod
    def case_finished(self, case: Case, record: Record) -> None: ...


class Executor(abc.ABC):
    """Runs case groups; `run_case` measures one case, `sink` receives every record."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def execute(self, groups: list[CaseGroup], run_case: RunCase, sink: RecordSink) -> None: ...


class InlineExecutor(Executor):
    """Every group in this process, in plan order: the simplest executor, and the one to debug with."""

    name = "inline"
    description = "run every case in this process, one after another"

    def execute(self, groups: list[CaseGroup], run_case: RunCase, sink: RecordSink) -> None:
        for group in groups:
            for case in group.cases:
                sink.case_started(case)
                sink.case_finished(case, run_case(case))


EXECUTORS: Registry[type[Executor]] = Registry("executor", group="attnbench.executors", base=Executor)
EXECUTORS.register("inline", InlineExecutor)
