"""Progress for long sweeps: a rich bar (count, elapsed, ETA; the current case and the last result
on lines below it, so it reads at 80 columns) on a terminal, one line per case with the elapsed
time and ETA otherwise, nothing with --quiet.

Every line is cut to the terminal's width (`shutil.get_terminal_size`: the COLUMNS variable, else
stdout's terminal, else 80) with an ellipsis, never wrapped: a plain line gives up the inside of
the case's description first, so the count, the configuration, the input regime and the result
stay readable. The record keeps it all."""

from __future__ import annotations

import shutil
import sys
import time
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
from rich.text import Text

from harness.config.sweep import Case
from harness.inputs import SOURCES
from harness.plugins.kinds import installed_kind
from harness.results.records import Record


class Reporter(Protocol):
    def start(self, total: int, already_done: int) -> None: ...
    def case_started(self, case: Case) -> None: ...
    def case_finished(self, case: Case, record: Record) -> None: ...
    def stop(self) -> None: ...


def _summary(record: Record) -> str:
    if record.status != "ok":
        return f"{record.status}: {record.reason[:120]}"
    cls = installed_kind(record.kind)
    result = cls().progress(record) if cls is not None else ""  # the kind says what its result is
    return f"ok {result}".rstrip()


class QuietReporter:
    def start(self, total: int, already_done: int) -> None: ...
    def case_started(self, case: Case) -> None: ...
    def case_finished(self, case: Case, record: Record) -> None: ...
    def stop(self) -> None: ...


def what(case: Case) -> str:
    """The case in a few words, its input regime included (runs often sweep several), with the
    regime knobs the scenario sets (`captured[layer=3]`: one layer of several)."""
    given = dict(case.inputs.options)
    knobs = [f"{k}={given[k]}" for k in SOURCES.get(case.inputs.dist).regime_knobs if k in given]
    regime = case.inputs.dist + (f"[{','.join(knobs)}]" if knobs else "")
    return f"{case.describe()} {regime}"


ELLIPSIS = "…"


def cut(head: str, middle: str, tail: str, width: int) -> str:
    """`head + middle + tail` in at most `width` characters. `middle` (the case) gives way first:
    its inside is replaced by an ellipsis, keeping its start (the configuration) and its last word
    (the input regime); when that leaves too little of it, only its first word (the configuration)
    stays, and the line loses its end."""
    line = head + middle + tail
    if len(line) <= width:
        return line
    room = width - len(head) - len(tail) - len(ELLIPSIS)
    if room >= min(len(middle), 16):
        last = min(len(middle.rsplit(" ", 1)[-1]) + 1, room // 2)
        return head + middle[: room - last] + ELLIPSIS + middle[len(middle) - last :] + tail
    first = middle.split(" ", 1)[0]
    line = head + first + (ELLIPSIS if first != middle else "") + tail
    return line if len(line) <= width else line[: max(width - len(ELLIPSIS), 0)] + ELLIPSIS


def line_width() -> int:
    """Columns a progress line may take: the terminal's width, at least 20."""
    return max(shutil.get_terminal_size().columns, 20)


def clock(seconds: float) -> str:
    """0:07, 12:34 or 1:02:03: elapsed times and ETAs in one short form."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class PlainReporter:
    """One line per finished case, for logs and pipes: count, run elapsed, ETA, the case, its result
    and its own elapsed time, e.g. `[12/80 1:23 eta 4:56] linear N=512 ...: ok 3.1 ms (0.8 s)`.

    The ETA is the mean time per case finished in this run times the cases left."""

    def __init__(self, stream=None, now=time.monotonic) -> None:
        self.stream = stream or sys.stdout
        self.now = now
        self.done = self.total = self.resumed = 0
        self.t0 = now()
        self.started: dict[str, float] = {}

    def start(self, total: int, already_done: int) -> None:
        self.total, self.done, self.resumed, self.t0 = total, already_done, already_done, self.now()
        if already_done:
            print(f"resuming: {already_done} of {total} cases already recorded", file=self.stream, flush=True)

    def case_started(self, case: Case) -> None:
        self.started[case.case_id] = self.now()

    def eta(self) -> float | None:
        ran = self.done - self.resumed
        return (self.now() - self.t0) / ran * (self.total - self.done) if ran > 0 else None

    def case_finished(self, case: Case, record: Record) -> None:
        self.done += 1
        now = self.now()
        began = self.started.pop(case.case_id, None)
        own = f" ({now - began:.1f} s)" if began is not None else ""
        eta = self.eta()
        when = f"{clock(now - self.t0)} eta {clock(eta) if eta is not None else '?'}"
        line = cut(
            f"[{self.done}/{self.total} {when}] ", what(case), f": {_summary(record)}{own}", line_width()
        )
        print(line, file=self.stream, flush=True)

    def stop(self) -> None: ...


class _CaseLines(Progress):
    """Rich progress whose bar row (count, elapsed, ETA) stays short enough for 80 columns, with the
    current and the last case on lines of their own below it, each cut to the terminal's width."""

    lines: tuple[tuple[str, str], ...] = ()  # (text, style)

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for line, style in self.lines:  # plain text: labels hold brackets, never markup
            yield Text(line, style=style, overflow="ellipsis", no_wrap=True)


class RichReporter:
    """A live progress bar: count, elapsed, ETA; the current case and the last result below it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = _CaseLines(
            TextColumn("[bold]cases"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = None
        self.current = ""
        self.last = ""

    def _show(self) -> None:
        now = [(f"now:  {self.current}", "")] if self.current else []
        self.progress.lines = (*now, *([(f"last: {self.last}", "dim")] if self.last else []))

    def start(self, total: int, already_done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("cases", total=total, completed=already_done)

    def case_started(self, case: Case) -> None:
        self.current = what(case)
        self._show()
        self.progress.refresh()

    def case_finished(self, case: Case, record: Record) -> None:
        regime = what(case).rsplit(" ", 1)[1]
        self.last = f"{case.label} N={case.problem.seq_len} {regime}: {_summary(record)}"
        if record.status not in ("ok", "skipped"):  # kept above the bar: one line, cut, never wrapped
            failed = Text(
                f"{what(case)}: {_summary(record)}", style="yellow", no_wrap=True, overflow="ellipsis"
            )
            self.progress.console.print(failed)
        self._show()
        self.progress.update(self.task, advance=1)

    def stop(self) -> None:
        self.progress.lines = ()
        self.progress.stop()


def make_reporter(quiet: bool) -> Reporter:
    if quiet:
        return QuietReporter()
    return RichReporter() if sys.stdout.isatty() else PlainReporter()
