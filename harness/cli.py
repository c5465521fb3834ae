"""Command line: `run-bench [SCENARIO] [options]` and the subcommands validate, list, report, compare, ab.

Exit codes: 0 success; 1 a confirmed regression (compare/ab); 2 bad input (one line on stderr,
never a traceback); 130 interrupted (what finished is kept; continue with --resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

DEFAULT_SCENARIO = "scenarios/quick.yaml"
SUBCOMMANDS = ("run", "validate", "list", "report", "compare", "ab")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit 2."""


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_bench.py", description="Run an attention benchmark scenario.")
    p.add_argument(
        "scenario", nargs="?", default=DEFAULT_SCENARIO, help=f"scenario YAML (default {DEFAULT_SCENARIO})"
    )
    p.add_argument("--out", type=Path, help="run directory (default runs/<scenario>-<time>)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the scenario's device")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    p.add_argument("--case", action="append", metavar="CASE_ID", help="run only this case id (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots in the report")
    x = p.add_argument_group("execution (also settable in the scenario's `execute:` block)")
    x.add_argument(
        "--executor", help="how case groups run: subprocess (default), inline, gpus, submitit-local, slurm"
    )
    x.add_argument("--workers", type=int, help="child workers (subprocess) or jobs at once (submitit-local)")
    x.add_argument("--gpus", help="GPU ids for --executor gpus, e.g. 0,1 (default: every visible GPU)")
    x.add_argument("--retry-crashed", action="store_true", help="with --resume: run crashed cases again")
    x.add_argument("--partition", help="slurm partition")
    x.add_argument("--time-min", type=int, help="slurm/submitit job time limit in minutes (default 60)")
    x.add_argument("--gpus-per-task", type=int, help="slurm GPUs per job")
    x.add_argument("--max-jobs", type=int, help="slurm jobs running at once")
    return p


def _execution(args: argparse.Namespace, scenario) -> tuple[str, object]:
    """(executor name, ExecutorOptions): the command line over the scenario's `execute:` block."""
    from harness.execute.executors import EXECUTORS, ExecutorOptions

    block = scenario.execute
    name = args.executor or block.executor or "subprocess"
    EXECUTORS.get(name)  # unknown names fail with a did-you-mean before anything runs
    gpus = block.gpus
    if args.gpus is not None:
        gpus = tuple(g.strip() for g in args.gpus.split(",") if g.strip())
        if not gpus or not all(g.isdigit() for g in gpus):
            raise UsageError(f"--gpus: expected GPU ids like 0,1, found {args.gpus!r}")
    for flag in ("workers", "time_min", "max_jobs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')}: expected an int >= 1, found {value}")
    if args.gpus_per_task is not None and args.gpus_per_task < 0:
        raise UsageError(f"--gpus-per-task: expected an int >= 0, found {args.gpus_per_task}")

    def pick(flag: str, default):
        value = getattr(args, flag)
        value = getattr(block, flag) if value is None else value
        return default if value is None else value

    options = ExecutorOptions(
        workers=pick("workers", 1),
        gpus=list(gpus) if gpus is not None else None,
        partition=pick("partition", None),
        time_min=pick("time_min", 60),
        gpus_per_task=pick("gpus_per_task", 0),
        max_jobs=pick("max_jobs", None),
    )
    return name, options


def cmd_run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    if args.executor in (None, "subprocess"):  # the likely executor: start its children now, so
        from harness.execute import warm  # their imports overlap this process's own (warm.py)

        warm.prespawn(max(1, args.workers or 1))
    from harness.config.scenario import load_scenario
    from harness.execute.progress import make_reporter
    from harness.execute.runner import default_out_dir, resolve_device, run_scenario
    from harness.plugins.variants import VARIANTS

    scenario = load_scenario(args.scenario)
    for name in args.only or []:
        VARIANTS.get(name)  # unknown names fail with a did-you-mean
    executor, options = _execution(args, scenario)
    device = resolve_device(scenario, args.device)
    if args.retry_crashed and not args.resume:
        raise UsageError(
            "--retry-crashed needs --resume --out RUN_DIR (the run whose crashed cases to rerun)"
        )
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out RUN_DIR (the directory of the run to continue)")
    out_dir = args.out or default_out_dir(scenario)
    summary = run_scenario(
        scenario,
        out_dir,
        device,
        resume=args.resume,
        only=args.only,
        case_ids=args.case,
        reporter=make_reporter(args.quiet),
        scenario_arg=args.scenario,
        argv=[sys.argv[0], *argv],
        plots=not args.no_plots,
        executor=executor,
        options=options,
        retry_crashed=args.retry_crashed,
    )
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new"
    print(
        f"{summary.ran} cases run ({counts}); {summary.already_done} already recorded; results in {out_dir}"
    )
    if (out_dir / "report.md").exists():
        print(f"report: {out_dir / 'report.md'}")
    if summary.interrupted:
        print(f"interrupted: continue with  python run_bench.py {args.scenario} --out {out_dir} --resume")
        return 130
    return 0


def cmd_validate(argv: list[str]) -> int:
    from harness.config.scenario import load_scenario
    from harness.config.sweep import expand, static_skip_reasons
    from harness.execute.runner import resolve_device

    p = argparse.ArgumentParser(prog="run_bench.py validate", description="Check a scenario; run nothing.")
    p.add_argument("scenario")
    p.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), help="device to expand for (default: scenario's)"
    )
    args = p.parse_args(argv)
    scenario = load_scenario(args.scenario)
    wanted = args.device or scenario.device
    device = "cuda" if wanted == "cuda" else resolve_device(scenario, wanted)
    cases = expand(scenario, device)
    skipped = [(c, static_skip_reasons(c)) for c in cases]
    skipped = [(c, r) for c, r in skipped if r]
    print(f"{args.scenario}: valid; {len(cases)} cases on {device}, {len(skipped)} skipped before running")
    reasons = Counter("; ".join(r) for _, r in skipped)
    for reason, n in reasons.most_common():
        print(f"  {n:4d} skipped: {reason}")
    return 0


def cmd_list(argv: list[str]) -> int:
    from harness.execute.catalog import SECTIONS, describe

    p = argparse.ArgumentParser(
        prog="run_bench.py list", description="List what is installed: variants, input sources, metrics, ..."
    )
    p.add_argument(
        "what", nargs="?", default="all", choices=("all", *SECTIONS), help="one registry (default all)"
    )
    args = p.parse_args(argv)
    print("\n".join(describe(args.what)))
    return 0


def cmd_report(argv: list[str]) -> int:
    from harness.execute.runner import finish_run_dir

    p = argparse.ArgumentParser(
        prog="run_bench.py report", description="(Re)write report.md of a run directory."
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if not (args.run_dir / "records.jsonl").exists():
        raise UsageError(f"{args.run_dir}: not a run directory (no records.jsonl)")
    finish_run_dir(args.run_dir, plots=not args.no_plots)
    print(args.run_dir / "report.md")
    return 0


def cmd_compare(argv: list[str]) -> int:
    from harness.regress.ab import compare_main

    return compare_main(argv)


def cmd_ab(argv: list[str]) -> int:
    from harness.regress.ab import ab_main

    return ab_main(argv)


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "list": cmd_list,
    "report": cmd_report,
    "compare": cmd_compare,
    "ab": cmd_ab,
}


def main(argv: list[str] | None = None) -> int:
    from harness.config.scenario import ScenarioError
    from harness.execute.executors import ExecutorError
    from harness.execute.rundir import RunDirError
    from harness.plugins.registry import PluginLoadError, UnknownPluginError
    from harness.regress.ab import AbError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = "run"
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    bad_input = (
        ScenarioError,
        RunDirError,
        UsageError,
        UnknownPluginError,
        PluginLoadError,
        AbError,
        ExecutorError,
    )
    try:
        return COMMANDS[command](argv)
    except bad_input as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `run_bench.py list | head`: the reader left; nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
