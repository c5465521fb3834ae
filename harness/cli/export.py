"""`export RUN_DIR --format pytest-benchmark|csv|parquet --out FILE` (logic: harness.results.export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.errors import UsageError


def main(argv: list[str]) -> int:
    from harness.results.export import FORMATS, ExportError, export_run

    p = argparse.ArgumentParser(
        prog="run-bench export",
        description="Write a run in a format other tools read: pytest-benchmark JSON (for "
        "`pytest-benchmark compare` and github-action-benchmark), csv or parquet (params and info "
        "flattened into param.<name> and info.<key> columns).",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", type=Path, required=True, help="the file to write")
    args = p.parse_args(argv)
    try:
        print(export_run(args.run_dir, args.format, args.out))
    except ExportError as exc:
        raise UsageError(str(exc)) from exc
    except ModuleNotFoundError as exc:  # pytest-benchmark computes the stats: a named, one-line error
        raise UsageError(f"--format {args.format} needs {exc.name}: pip install 'attnbench[export]'") from exc
    except OSError as exc:
        raise UsageError(f"{args.out}: cannot write: {exc.strerror or exc}") from exc
    return 0
