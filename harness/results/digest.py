"""What a run found, at a glance: the tables printed at the end of `run-bench` in the terminal.

One table per benchmark kind in the run: the kind's own (`BenchmarkKind.digest`), or the generic
one: per configuration (label), input regime and task point, at the longest sequence length it
completed ok, the kind's `headline` metrics.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table
from rich.text import Text

from harness.plugins.kinds import BenchmarkKind, installed_kind
from harness.plugins.metrics import METRICS
from harness.results.record_check import record_problem
from harness.results.record_lines import read_records
from harness.results.records import to_dataframe


def headline_table(df: pd.DataFrame, kind: BenchmarkKind) -> Table | None:
    """The generic end-of-run table of one kind's records; None when none finished ok.

    One row per configuration (in run order), input regime and task point (the `task.*` columns
    that vary), at its longest ok length; the inputs column only when the regimes vary
    (`captured[layer=3]` and `captured[layer=4]` are two, shown as `captured layer=3`: it wraps
    at the space). Labels and regimes are plain text,
    never read as rich markup (`[layer=3]` would be a style tag); metric titles wrap at their
    words, so the configuration keeps the room."""
    ok = df[df["status"] == "ok"]
    if not len(ok):
        return None
    names = [n for n in kind.headline if n in ok and ok[n].notna().any()]
    points = [c for c in ok.columns if str(c).startswith("task.") and ok[c].astype(str).nunique() > 1]
    keys = ["label", "input_dist", *points]
    longest = ok.sort_values("seq_len").groupby(keys, sort=False, dropna=False).tail(1)
    first = {label: i for i, label in enumerate(dict.fromkeys(ok["label"]))}  # run order of configurations
    longest = longest.sort_values(
        ["label", "input_dist", *points],
        key=lambda col: col.map(first) if col.name == "label" else _sortable(col),
        kind="stable",
    )
    regimes = longest["input_dist"].astype(str).nunique() > 1
    title = f"{kind.name}: at the longest length each configuration completed"
    table = Table(title=title, title_justify="left")
    table.add_column("configuration", overflow="fold")
    for col in (*(["inputs"] if regimes else []), *(p.removeprefix("task.") for p in points)):
        table.add_column(col, overflow="fold")
    table.add_column("N", justify="right", no_wrap=True)
    cells = {name: [METRICS.get(name).format(v) for v in longest[name]] for name in names}
    for name in names:
        m = METRICS.get(name)
        header = f"{m.title or name}" + (f" ({m.shown_unit})" if m.shown_unit else "")
        width = max(len(word) for word in [*header.split(), *cells[name]])  # the header wraps at words
        table.add_column(header, justify="right", width=width)
    for i, (_, r) in enumerate(longest.iterrows()):
        regime = [shown_regime(r["input_dist"])] if regimes else []
        what = [Text(str(r["label"])), *regime, *(Text(str(r[p])) for p in points)]
        table.add_row(*what, str(r["seq_len"]), *(cells[n][i] for n in names))
    return table


def shown_regime(name: str) -> Text:
    """An input regime as plain text that wraps at its words: `captured[layer=3]` -> `captured
    layer=3` (a narrow column breaks it after `captured`, never inside `layer=3`)."""
    dist, _, knobs = str(name).partition("[")
    return Text(" ".join([dist, *knobs.removesuffix("]").split(",")]).strip())


def _sortable(col: pd.Series) -> pd.Series:
    """`col` as numbers when every value is one (task points: 4 before 16), else as text."""
    as_num = pd.to_numeric(col, errors="coerce")
    return as_num if as_num.notna().all() else col.astype(str)


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
