"""What a run found, at a glance: the tables printed at the end of `run-bench` in the terminal.

One table per benchmark kind in the run: the kind's own (`BenchmarkKind.digest`), or the generic
one: per configuration (label), input regime and task point, at the longest sequence length it
completed ok, the kind's `headline` metrics.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table

from harness.plugins.kinds import BenchmarkKind, installed_kind
from harness.plugins.metrics import METRICS
from harness.results.record_check import record_problem
from harness.results.record_lines import read_records
from harness.results.records import to_dataframe


def headline_table(df: pd.DataFrame, kind: BenchmarkKind) -> Table | None:
    """The generic end-of-run table of one kind's records; None when none finished ok."""
    ok = df[df["status"] == "ok"]
    if not len(ok):
        return None
    names = [n for n in kind.headline if n in ok and ok[n].notna().any()]
    points = [c for c in ok.columns if str(c).startswith("task.") and ok[c].astype(str).nunique() > 1]
    keys = ["label", "input_dist", *points]
    longest = ok.sort_values("seq_len").groupby(keys, sort=False, dropna=False).tail(1).sort_index()
    title = f"{kind.name}: at the longest length each configuration completed"
    table = Table(title=title, title_justify="left")
    for col in ("configuration", "inputs", *(p.removeprefix("task.") for p in points), "N"):
        table.add_column(col, overflow="ellipsis", no_wrap=col == "N")
    for name in names:
        m = METRICS.get(name)
        unit = f" ({m.shown_unit})" if m.shown_unit else ""
        table.add_column(f"{m.title or name}{unit}", justify="right", no_wrap=True)
    for _, r in longest.iterrows():
        cells = [str(r["label"]), str(r["input_dist"]), *(str(r[p]) for p in points), str(r["seq_len"])]
        table.add_row(*cells, *(METRICS.get(n).format(r[n]) for n in names))
    return table


def run_digest(run_dir: Path) -> list[Table]:
    """The end-of-run tables of the run in `run_dir` (its records.jsonl), one per kind with an ok case."""
    path = Path(run_dir) / "records.jsonl"
    if not path.exists():
        return []
    df = to_dataframe(read_records(path, record_problem))
    tables = []
    for name in dict.fromkeys(str(k) for k in df["kind"]) if len(df) else []:
        cls = installed_kind(name)
        if cls is None:
            continue
        kind = cls()
        rows = df[df["kind"] == name]
        table = kind.digest(rows)
        table = table if table is not None else headline_table(rows, kind)
        tables += [table] if table is not None else []
    return tables
