"""Command line: `run-bench [SCENARIO] [options]` (same as `run-bench run ...`) and subcommands.

Subcommands are listed in `COMMANDS` (name -> one-line summary and a lazy "module:function"), so
`run-bench --help` and `run-bench help` list every one; a first argument close to a command's name
that is no scenario (`run-bench compair a b`) is a one-line did-you-mean, exit 2. Each module in
this package holds the argument parsing of its subcommands and nothing else (the logic lives in
the stages below).

Exit codes: 0 success; 1 a confirmed regression (compare/ab/history check); 2 bad input or an unusable file
system: a malformed scenario, a sweep over --max-cases, an unusable --out, a full disk or a
file-size limit, compare with nothing in common (one line on stderr naming the file and the
cause, never a traceback); 3 a run in which some case ended `error` or `crashed` (oom, skipped,
nan, timeout and leak are results, not failures); 130 interrupted (what finished is kept;
continue with --resume).
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from harness.cli.errors import UsageError
from harness.common.errors import UserError

__all__ = ["COMMANDS", "Command", "UsageError", "main"]


@dataclass(frozen=True)
class Command:
    summary: str
    target: str  # "module:function", function(argv: list[str]) -> exit code

    def load(self) -> Callable[[list[str]], int]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


COMMANDS: dict[str, Command] = {
    name: Command(summary, target)
    for name, summary, target in (
        ("run", "run a scenario (the default command)", "harness.cli.run:main"),
        ("validate", "check a scenario and count its cases; run nothing", "harness.cli.inspect:validate"),
        (
            "list",
            "list installed variants, inputs, metrics, executors, kinds",
            "harness.cli.inspect:list_plugins",
        ),
        ("report", "(re)write report.md and plots of a run directory", "harness.cli.inspect:report"),
        (
            "compare",
            "compare a run with a baseline run (exit 1 on a regression)",
            "harness.cli.regress:compare",
        ),
        ("ab", "interleaved A/B timing of two checkouts (exit 1 on a regression)", "harness.cli.regress:ab"),
        (
            "history",
            "add a run to a history store; show, check or publish it (exit 1 on a new step)",
            "harness.cli.history:main",
        ),
        ("export", "write a run as pytest-benchmark JSON, csv or parquet", "harness.cli.export:main"),
        ("help", "this overview, or `help COMMAND` for one command's options", "harness.cli:help_command"),
    )
}


def overview() -> str:
    """The text of `run-bench --help`: usage, every subcommand, exit codes."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: run-bench [SCENARIO] [run options]     (same as: run-bench run [SCENARIO] ...)",
        "       run-bench COMMAND [options]            (run-bench help COMMAND: its options)",
        "",
        "Benchmark efficient attention variants: runtime, memory and error against exact softmax.",
        "SCENARIO: a YAML file, or a shipped scenario's name from any directory (default: quick).",
        "",
        "commands:",
        *(f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()),
        "",
        "exit codes: 0 ok; 1 confirmed regression (compare, ab, history check); 2 bad input, nothing",
        "            compared or an unusable file system (one line on stderr); 3 some case ended error",
        "            or crashed (run); 130 interrupted (continue with --resume)",
    ]
    return "\n".join(lines)


def help_command(argv: list[str]) -> int:
    """`run-bench help [COMMAND]`."""
    if not argv:
        print(overview())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        from harness.common.names import suggest

        hint = suggest(name, list(COMMANDS))
        raise UsageError(f"help: unknown command {name!r}{hint}; expected one of {', '.join(COMMANDS)}")
    if name == "help":
        print(overview())
        return 0
    return COMMANDS[name].load()(["--help"])


def mistyped_command(word: str) -> str | None:
    """The one-line error for a first argument that reads as a misspelt subcommand (`compair`):
    a bare word, close to a command's name, and no scenario (neither an existing path nor a
    shipped scenario's name, which still run, however close to a command); else None."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", word):  # an option, a path, a .yaml: a scenario
        return None
    from harness.common.names import suggest

    hint = suggest(word, list(COMMANDS))
    if not hint:
        return None
    from harness.config.shipped import resolve_scenario
    from harness.config.validate import Invalid

    try:
        resolve_scenario(word)
    except Invalid:
        return (
            f"unknown command {word!r}{hint}; `run-bench --help` lists the commands, and a scenario "
            "is a YAML file or a shipped scenario's name"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "run"
    if argv and argv[0] not in COMMANDS and (mistyped := mistyped_command(argv[0])):
        print(f"error: {mistyped}", file=sys.stderr)
        return 2
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    elif argv and argv[0] in ("-h", "--help"):
        command, argv = "help", []
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit a write fails (EFBIG) instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        code = COMMANDS[command].load()(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `run_bench.py list | head`: the reader left; nothing is wrong
        _quiet_stdout()
        return 0
    except OSError as exc:  # read-only, not a directory, name too long, disk full, file too large
        from harness.common.files import describe_os_error

        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except UserError as exc:  # bad input, from any stage: one line, never a traceback
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2


def one_line(text: str) -> str:
    """`text` with its line breaks folded: an error is one line on stderr."""
    return " ".join(text.split())


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe stays silent."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
