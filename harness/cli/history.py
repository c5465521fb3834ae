"""`history add|show|check`: results across commits (the logic lives in harness.regress.history*)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.errors import UsageError

DEFAULT_STORE = Path("results/history")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run-bench history",
        description="Track each case's median time, memory and error across commits.",
    )
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="append a run's records (commit, machine, time) to the store")
    add.add_argument("run_dir", type=Path)
    add.add_argument("--commit", help="the commit the run measured (default: the run's git_sha)")
    add.add_argument("--machine", help="the machine name (default: GPU or CPU model and threads)")
    show = sub.add_parser("show", help="print each case's series and plot them (PNG)")
    show.add_argument("--plots", type=Path, help="folder for the PNGs (default: STORE/plots)")
    check = sub.add_parser("check", help="change points per series; exit 1 when the latest commits regress")
    check.add_argument("--threshold", type=float, default=0.05, help="relative change that matters")
    check.add_argument(
        "--metric", action="append", help="metric to check (repeatable; default time_ms_median)"
    )
    check.add_argument(
        "--recent", type=int, default=5, help="fail only on a step at most this many points old (>= 3)"
    )
    for s in (add, show, check):
        s.add_argument(
            "--store", type=Path, default=DEFAULT_STORE, help=f"the store (default {DEFAULT_STORE})"
        )
    for s in (show, check):
        s.add_argument("--machine", help="only this machine's series")
    return p


def main(argv: list[str]) -> int:
    from harness.regress import history

    args = _parser().parse_args(argv)
    try:
        if args.action == "add":
            print(history.add_run(args.run_dir, args.store, args.commit, args.machine))
            return 0
        df = history.load_store(args.store, args.machine)
        if args.action == "show":
            from harness.regress.history_show import plot_history, table

            print(table(df))
            paths = plot_history(df, args.plots or args.store / "plots")
            print(f"{len(paths)} plots in {args.plots or args.store / 'plots'}")
            return 0
        return _check(df, args)
    except history.HistoryError as exc:
        raise UsageError(str(exc)) from exc


def _check(df, args: argparse.Namespace) -> int:
    from harness.regress.history_check import MIN_POINTS, check_history

    if not 0 < args.threshold < 10:
        raise UsageError(f"--threshold: expected a number in (0, 10), found {args.threshold}")
    if args.recent < MIN_POINTS:
        raise UsageError(f"--recent: expected an integer >= {MIN_POINTS}, found {args.recent}")
    metrics = args.metric or ["time_ms_median"]
    unknown = [m for m in metrics if m not in df.columns]
    if unknown:
        raise UsageError(f"--metric: {', '.join(unknown)} not in the store; it has {', '.join(df.columns)}")
    try:
        result = check_history(df, args.threshold, metrics, args.recent)
    except ModuleNotFoundError as exc:  # ruptures finds the change points: a named, one-line error
        raise UsageError(f"history check needs {exc.name}: pip install 'attnbench[history]'") from exc
    points = df["point"].nunique()
    print(
        f"history check: {result.series} series over {points} points, {len(result.steps)} confirmed steps "
        f"({result.too_short} series too short: fewer than {2 * MIN_POINTS} points)"
    )
    for step in result.steps:
        mark = "FAIL" if step in result.failing else step.verdict
        print(f"  {mark}: {step.describe()}")
    if result.failing:
        print(f"REGRESSED: {len(result.failing)} series start a confirmed slowdown at the latest commits")
        return 1
    print("no regression starts at the latest commits")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
