"""`history add|show|check|publish`: results across commits (the logic lives in harness.regress.history*)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.errors import UsageError

DEFAULT_STORE = Path("results/history")
DEFAULT_PLOTS = Path("history-plots")


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
    add.add_argument("--report-url", help="where the run's report is published (linked from `publish`)")
    show = sub.add_parser("show", help="print each case's series and plot them (PNG)")
    show.add_argument(
        "--out",
        "--plots",
        type=Path,
        default=DEFAULT_PLOTS,
        help=f"folder for the PNGs, outside the store (default ./{DEFAULT_PLOTS})",
    )
    check = sub.add_parser("check", help="change points per series; exit 1 when the latest commits regress")
    publish = sub.add_parser("publish", help="a static site: a chart per case and metric over commits")
    publish.add_argument("--out", type=Path, required=True, help="the site's folder (outside the store)")
    for s in (check, publish):
        s.add_argument("--threshold", type=float, default=0.05, help="relative change that matters")
        s.add_argument(
            "--recent", type=int, default=5, help="fail only on a step at most this many points old (>= 3)"
        )
    check.add_argument(
        "--metric", action="append", help="metric to check (repeatable; default every gated metric stored)"
    )
    for s in (add, show, check, publish):
        s.add_argument(
            "--store", type=Path, default=DEFAULT_STORE, help=f"the store (default {DEFAULT_STORE})"
        )
    for s in (show, check, publish):
        s.add_argument("--machine", help="only this machine's series")
    return p


def main(argv: list[str]) -> int:
    from harness.regress import history

    args = _parser().parse_args(argv)
    try:
        if args.action == "add":
            print(history.add_run(args.run_dir, args.store, args.commit, args.machine, args.report_url))
            return 0
        if args.action in ("show", "publish"):
            _outside_store(args.out, args.store)
        df = history.load_store(args.store, args.machine)
        if args.action == "show":
            from harness.regress.history_show import plot_history, table

            print(table(df))
            paths = plot_history(df, args.out)
            print(f"{len(paths)} plots in {args.out}")
            return 0
        if args.action == "publish":
            return _publish(df, args)
        return _check(df, args)
    except history.HistoryError as exc:
        raise UsageError(str(exc)) from exc


def _outside_store(out: Path, store: Path) -> None:
    """The store owns its folder: `show` and `publish` write elsewhere (one line, exit 2)."""
    o, s = out.resolve(), store.resolve()
    if o == s or s in o.parents:
        raise UsageError(f"--out {out}: inside the store {store}; the store holds only its own files")


def _run_check(df, args: argparse.Namespace, metrics: list[str] | None):
    from harness.regress.history_check import MIN_POINTS, check_history

    if not 0 < args.threshold < 10:
        raise UsageError(f"--threshold: expected a number in (0, 10), found {args.threshold}")
    if args.recent < MIN_POINTS:
        raise UsageError(f"--recent: expected an integer >= {MIN_POINTS}, found {args.recent}")
    unknown = [m for m in metrics or [] if m not in df.columns]
    if unknown:
        raise UsageError(f"--metric: {', '.join(unknown)} not in the store; it has {', '.join(df.columns)}")
    try:
        return check_history(df, args.threshold, metrics, args.recent)
    except ModuleNotFoundError as exc:  # ruptures finds the change points: a named, one-line error
        raise UsageError(f"history check needs {exc.name}: pip install 'attnbench[history]'") from exc


def _publish(df, args: argparse.Namespace) -> int:
    from harness.regress.history_publish import publish

    result = _run_check(df, args, None)
    try:
        pages = publish(df, result, args.out)
    except ModuleNotFoundError as exc:
        raise UsageError(f"history publish needs {exc.name}: pip install 'attnbench[history]'") from exc
    print(f"{len(pages)} pages in {args.out} (open {args.out / 'index.html'})")
    return 0


def _check(df, args: argparse.Namespace) -> int:
    from harness.regress.history_check import MIN_POINTS

    result = _run_check(df, args, args.metric)
    points = df["point"].nunique()
    print(
        f"history check: {result.series} series ({', '.join(result.metrics)}) over {points} points, "
        f"{len(result.steps)} confirmed steps "
        f"({result.too_short} series too short: fewer than {2 * MIN_POINTS} points)"
    )
    for step in result.steps:
        mark = "FAIL" if step in result.failing else step.verdict
        print(f"  {mark}: {step.describe()}")
    if result.failing:
        print(f"REGRESSED: {len(result.failing)} series start a confirmed regression at the latest commits")
        return 1
    print("no regression starts at the latest commits")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
