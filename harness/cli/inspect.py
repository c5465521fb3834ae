"""`validate`, `list` and `report`: look at a scenario, the installed plugins, or a run directory."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from harness.cli.errors import UsageError, max_cases_option


def validate(argv: list[str]) -> int:
    from harness.config.scenario import load_scenario
    from harness.config.sweep import expand, static_skip_reasons
    from harness.execute.runner import resolve_device

    p = argparse.ArgumentParser(prog="run-bench validate", description="Check a scenario; run nothing.")
    p.add_argument("scenario")
    p.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), help="device to expand for (default: scenario's)"
    )
    max_cases_option(p)
    p.add_argument("--cases", action="store_true", help="also list every case: its id and what it runs")
    args = p.parse_args(argv)
    scenario = load_scenario(args.scenario, max_cases=args.max_cases)
    wanted = args.device or scenario.device
    device = "cuda" if wanted == "cuda" else resolve_device(scenario, wanted)
    cases = expand(scenario, device)
    from harness.plugins.kinds import KINDS

    kind = KINDS.get(scenario.kind)
    skipped = [(c, r if (r := kind.skip_reasons(c)) is not None else static_skip_reasons(c)) for c in cases]
    skipped = [(c, r) for c, r in skipped if r]
    print(f"{args.scenario}: valid; {len(cases)} cases on {device}, {len(skipped)} skipped before running")
    if args.cases:
        for c in cases:
            print(f"  {c.case_id}  {c.describe()} inputs={c.inputs.dist}")
    reasons = Counter("; ".join(r) for _, r in skipped)
    for reason, n in reasons.most_common():
        print(f"  {n:4d} skipped: {reason}")
    return 0


def list_plugins(argv: list[str]) -> int:
    from harness.execute.catalog import SECTIONS, describe

    p = argparse.ArgumentParser(
        prog="run-bench list", description="List what is installed: variants, input sources, metrics, ..."
    )
    p.add_argument(
        "what", nargs="?", default="all", choices=("all", *SECTIONS), help="one registry (default all)"
    )
    args = p.parse_args(argv)
    print("\n".join(describe(args.what)))
    return 0


def report(argv: list[str]) -> int:
    from harness.execute.runner import finish_run_dir

    p = argparse.ArgumentParser(
        prog="run-bench report", description="(Re)write report.md of a run directory."
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if not (args.run_dir / "records.jsonl").exists():
        raise UsageError(f"{args.run_dir}: not a run directory (no records.jsonl)")
    from harness.results.run_records import read_run_records

    if not read_run_records(args.run_dir):  # empty, or every line corrupt (each named above)
        raise UsageError(f"{args.run_dir}: no complete record in its record files; nothing to report")
    finish_run_dir(args.run_dir, plots=not args.no_plots)
    print(args.run_dir / "report.md")
    return 0
