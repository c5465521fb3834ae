"""`run-bench run [SCENARIO] [options]` (also `run-bench [SCENARIO] [options]`): run a scenario."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from harness.cli.errors import UsageError, max_cases_option

DEFAULT_SCENARIO = "quick"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run-bench run",
        description="Run an attention benchmark scenario (`run-bench --help` lists the other commands).",
    )
    p.add_argument(
        "scenario",
        nargs="?",
        default=DEFAULT_SCENARIO,
        help=f"a scenario YAML, or a shipped one by name from any directory (quick, smoke, long, ...; "
        f"`run-bench validate NAME`); default {DEFAULT_SCENARIO}",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="run directory (default ./runs/<scenario>-<time>, under the current directory)",
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the scenario's device")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    p.add_argument("--case", action="append", metavar="CASE_ID", help="run only this case id (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots in the report")
    max_cases_option(p)
    p.add_argument(
        "--raise",
        dest="raise_errors",
        action="store_true",
        help="debug a failing variant: run in this process (inline) and re-raise the first failure "
        "with its full traceback instead of recording it (use with --case ID)",
    )
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
    x.add_argument(
        "--cases-per-job",
        type=int,
        metavar="N",
        help="slurm: pack case groups into jobs of about N cases, never splitting a group (default 25)",
    )
    x.add_argument(
        "--slurm-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="slurm: any other sbatch option, e.g. account=proj qos=high constraint=a100 mem=64G "
        "cpus_per_task=8 (repeatable; KEY alone is a flag, e.g. exclusive)",
    )
    return p


def _execution(args: argparse.Namespace, scenario) -> tuple[str, object]:
    """(executor name, ExecutorOptions): the command line over the scenario's `execute:` block."""
    from harness.execute.executors import EXECUTORS, ExecutorOptions
    from harness.execute.slurm import SlurmSyntaxError, check_value, parse_cli_params

    block = scenario.execute
    name = args.executor or block.executor or "subprocess"
    if args.raise_errors:  # the failure must surface in this process
        if args.executor not in (None, "inline"):
            raise UsageError(f"--raise runs the cases in this process; not with --executor {name}")
        name = "inline"
    executor_cls = EXECUTORS.get(name)  # unknown names fail with a did-you-mean before anything runs
    gpus = block.gpus
    if args.gpus is not None:
        gpus = tuple(g.strip() for g in args.gpus.split(",") if g.strip())
        if not gpus or not all(g.isdigit() for g in gpus):
            raise UsageError(f"--gpus: expected GPU ids like 0,1, found {args.gpus!r}")
    for flag in ("workers", "time_min", "max_jobs", "cases_per_job"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')}: expected an int >= 1, found {value}")
    if args.gpus_per_task is not None and args.gpus_per_task < 0:
        raise UsageError(f"--gpus-per-task: expected an int >= 0, found {args.gpus_per_task}")

    def pick(flag: str, default):
        value = getattr(args, flag)
        value = getattr(block, flag) if value is None else value
        return default if value is None else value

    try:  # what reaches a batch script keeps to sbatch's syntax (the block is checked on loading)
        if args.partition is not None:
            check_value("--partition", args.partition)
        cli_params = parse_cli_params(args.slurm_param)
    except SlurmSyntaxError as err:
        raise UsageError(str(err)) from None
    options = ExecutorOptions(
        workers=pick("workers", 1),
        gpus=list(gpus) if gpus is not None else None,
        partition=pick("partition", None),
        time_min=pick("time_min", 60),
        gpus_per_task=pick("gpus_per_task", 0),
        max_jobs=pick("max_jobs", None),
        cases_per_job=pick("cases_per_job", None),
        slurm_params={**dict(block.slurm_params or ()), **cli_params},
        raise_errors=args.raise_errors,
    )
    options.check(executor_cls.runs_here)  # bounds (--workers by cores and memory), before any worker
    executor_cls.preflight(options)  # a missing GPU, submitit or Slurm: before any worker or job
    return name, options


def _check_selection(scenario, device: str, args: argparse.Namespace) -> None:
    """A filter (`--only`, `--case`) that selects no case is bad input: name what exists."""
    from harness.config.sweep import expand
    from harness.execute.plan import select_cases

    if not (args.only or args.case) or select_cases(scenario, device, args.only, args.case):
        return
    if args.only and not expand(scenario, device, only=args.only):
        present = ", ".join(dict.fromkeys(e.name for e in scenario.variants))
        raise UsageError(
            f"--only {' '.join(args.only)}: no such variant in {args.scenario}; its variants: {present}"
        )
    ids = [c.case_id for c in expand(scenario, device, only=args.only)]
    within = f" among the {len(ids)} cases of --only {' '.join(args.only)}" if args.only else ""
    raise UsageError(
        f"--case {' '.join(args.case)}: no case of {args.scenario} on {device} has this id{within}; "
        f"ids look like {', '.join(ids[:3])}; list them with `run-bench validate {args.scenario} --cases`"
    )


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from harness.config.scenario import load_scenario
    from harness.execute.progress import make_reporter
    from harness.execute.runner import default_out_dir, resolve_device, run_scenario
    from harness.plugins.variants import VARIANTS

    scenario = load_scenario(args.scenario, max_cases=args.max_cases)
    for name in args.only or []:
        VARIANTS.get(name)  # unknown names fail with a did-you-mean
    _check_selection(scenario, resolve_device(scenario, args.device), args)
    executor, options = _execution(args, scenario)
    device = resolve_device(scenario, args.device)
    if args.retry_crashed and not args.resume:
        raise UsageError(
            "--retry-crashed needs --resume --out RUN_DIR (the run whose crashed cases to rerun)"
        )
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out RUN_DIR (the directory of the run to continue)")
    out_dir = args.out or default_out_dir(scenario)
    check_run_dir(out_dir)
    if executor == "subprocess":  # everything is checked: start its children now, so their imports
        from harness.execute import warm  # overlap this process's own start of the run

        warm.prespawn(options.workers)
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
    if not args.quiet:  # what the run found, at a glance (results/digest.py)
        from rich.console import Console

        from harness.results.digest import run_digest

        for table in run_digest(out_dir):
            Console().print(table)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new"
    print(
        f"{summary.ran} cases run ({counts}); {summary.already_done} already recorded; results in {out_dir}"
    )
    if (out_dir / "report.md").exists():
        print(f"report: {out_dir / 'report.md'}")
    if summary.interrupted:
        print(f"interrupted: continue with  python run_bench.py {args.scenario} --out {out_dir} --resume")
        return 130
    return failed_exit(out_dir)


def check_run_dir(out_dir: Path) -> None:
    """`--out` must be absent or a folder (a symlink to one is the user's choice): a file, FIFO or
    device there is refused in one line before anything is written."""
    from harness.common.files import kind_of

    try:
        mode = os.stat(out_dir).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        kind = "a file" if stat.S_ISREG(mode) else kind_of(mode)
        raise UsageError(f"--out {out_dir}: is {kind}, not a run directory; choose a folder")


def failed_exit(out_dir: Path) -> int:
    """3 when a case of the run ended `error` or `crashed` (a failure of the harness or the variant,
    not a measured result like oom, skipped, nan, timeout or leak), naming how many; else 0."""
    from harness.results.run_records import read_run_records

    failed = [r for r in read_run_records(out_dir) if r.get("status") in ("error", "crashed")]
    if not failed:
        return 0
    print(
        f"{len(failed)} case(s) ended error or crashed (see the footnotes of the report); exit 3",
        file=sys.stderr,
    )
    return 3
