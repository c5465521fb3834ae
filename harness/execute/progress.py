"""Progress for long sweeps: a rich bar (count, ETA, current case, last status) on a terminal,
plain one-line-per-case output otherwise, nothing with --quiet."""

from __future__ import annotations

import sys
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from harness.config.sweep import Case
from harness.results.records import Record


class Reporter(Protocol):
    def start(self, total: int, already_done: int) -> None: ...
    def case_started(self, case: Case) -> None: ...
    def case_finished(self, case: Case, record: Record) -> None: ...
    def stop(self) -> None: ...


def _summary(record: Record) -> str:
    if record.status == "ok":
        err = record.get("rel_err")
        err_text = f" rel_err={err:.3g}" if err is not None else ""
        return f"ok {record.get('time_ms_median'):.3g} ms{err_text}"
    return f"{record.status}: {record.reason[:120]}"


class QuietReporter:
    def start(self, total: int, already_done: int) -> None: ...
    def case_started(self, case: Case) -> None: ...
    def case_finished(self, case: Case, record: Record) -> None: ...
    def stop(self) -> None: ...


class PlainReporter:
    """One line per finished case: `[i/n] label ... status`."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.done = 0
        self.total = 0

    def start(self, total: int, already_done: int) -> None:
        self.total, self.done = total, already_done
        if already_done:
            print(f"resuming: {already_done} of {total} cases already recorded", file=self.stream, flush=True)

    def case_started(self, case: Case) -> None: ...

    def case_finished(self, case: Case, record: Record) -> None:
        self.done += 1
        print(
            f"[{self.done}/{self.total}] {case.describe()}: {_summary(record)}", file=self.stream, flush=True
        )

    def stop(self) -> None: ...


class RichReporter:
    """A live progress bar with case count, ETA, the current case and the last status."""

    def __init__(self) -> None:
        self.console = Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}"),
            console=self.console,
            transient=False,
        )
        self.task = None
        self.last = ""

    def start(self, total: int, already_done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("cases", total=total, completed=already_done, current="")

    def case_started(self, case: Case) -> None:
        self.progress.update(self.task, current=f"{case.describe()}  [dim]last: {self.last}[/dim]")

    def case_finished(self, case: Case, record: Record) -> None:
        self.last = f"{case.label} N={case.problem.seq_len}: {_summary(record)}"
        if record.status not in ("ok", "skipped"):
            self.progress.console.print(f"[yellow]{case.describe()}: {_summary(record)}")
        self.progress.update(self.task, advance=1)

    def stop(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool) -> Reporter:
    if quiet:
        return QuietReporter()
    return RichReporter() if sys.stdout.isatty() else PlainReporter()
