"""What a run found, at a glance: the table printed at the end of `run-bench` in the terminal.

One row per configuration (variant, impl and params: the record's `label`) and input regime, at
the longest sequence length it completed ok, in one slice of the problem so the rows compare:
non-causal when the run has it, the most common dtype, and the forward pass when it ran (else the
first pass recorded). Columns: N, median time, peak memory and skill (1 - rel_err / the uniform
floor), each only when some row has it. The best of each column is marked, among the rows at the
table's longest N: the least time, the least memory, and the highest skill of an approximation
(exact configurations have skill 1 by construction, so they are not candidates). A row at or
below the uniform floor (skill <= 0: no more accurate than uniform attention) is no candidate for
the least time or memory.
Labels and input regimes (`captured[layer=3]`, shown as `captured layer=3`) are plain text, never
read as rich markup.
"""

from __future__ import annotations

import pandas as pd
from rich.table import Table
from rich.text import Text

from harness.plugins.metrics import metric
from harness.results.digest import shown_regime

BEST = "*"
MODES = ("fwd", "fwd_bwd", "bwd")


def _slice(ok: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The comparable slice of the ok records and its description."""
    if "causal" in ok and ok["causal"].eq(False).any():
        ok = ok[ok["causal"].eq(False)]
    dtype = ok["dtype"].mode().iloc[0]
    ok = ok[ok["dtype"] == dtype]
    mode = next((m for m in MODES if ok["mode"].eq(m).any()), ok["mode"].iloc[0])
    ok = ok[ok["mode"] == mode]
    causal = "causal" if ok["causal"].eq(True).all() else "non-causal"
    return ok, f"{dtype}, {causal}, {mode}"


def digest(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(rows, slice description); rows: label, input_dist, seq_len, time, peak, skill, exact and
    best_time, best_peak, best_skill flags. Empty rows when nothing finished ok."""
    cols = ["label", "input_dist", "seq_len", "time", "peak", "skill", "exact"]
    if not len(df) or not df["status"].eq("ok").any():
        return pd.DataFrame(columns=cols), ""
    ok, where = _slice(df[df["status"] == "ok"])
    ok = ok.assign(
        time=pd.to_numeric(ok.get("time_ms_median"), errors="coerce"),
        peak=pd.to_numeric(ok.get("peak_mem_bytes"), errors="coerce"),
        skill=pd.to_numeric(ok.get("skill"), errors="coerce"),
        exact=ok["exact"].eq(True),
        seq_len=ok["seq_len"].astype(int),
    )
    longest = ok.sort_values("seq_len").groupby(["label", "input_dist"], sort=False).tail(1)
    rows = longest.sort_index()[cols].reset_index(drop=True)
    top = rows["seq_len"] == rows["seq_len"].max()
    usable = ~rows["skill"].le(0.0)  # better than the uniform floor, or no skill measured
    for col, best in (("time", "min"), ("peak", "min"), ("skill", "max")):
        candidates = rows[col].where(top & (~rows["exact"] if col == "skill" else usable))
        flag = candidates == getattr(candidates, best)()
        rows[f"best_{col}"] = flag & candidates.notna()
    return rows, where


def digest_table(rows: pd.DataFrame, where: str) -> Table:
    """The rich table of `digest`'s rows; the best of each column in bold green with `*`."""
    shown = {"time": metric("time_ms_median"), "peak": metric("peak_mem_bytes"), "skill": metric("skill")}
    shown = {col: m for col, m in shown.items() if rows[col].notna().any()}  # memory: false has no peak
    table = Table(title=f"At the longest length each configuration completed ({where})", title_justify="left")
    table.add_column("configuration", overflow="fold")
    table.add_column("inputs", overflow="fold")
    table.add_column("N", justify="right")
    for col, m in shown.items():  # short headers, so the table fits 80 columns
        unit = f" ({m.shown_unit})" if m.shown_unit else ""
        table.add_column(f"{col}{unit}", justify="right", no_wrap=True)
    for r in rows.itertuples():
        cells = []
        for col, m in shown.items():
            text = m.format(getattr(r, col))
            best = bool(getattr(r, f"best_{col}"))
            cells.append(f"[bold green]{text} {BEST}[/bold green]" if best else text)
        table.add_row(Text(str(r.label)), shown_regime(r.input_dist), str(r.seq_len), *cells)
    table.caption = (
        f"{BEST} best of the column at the longest N (skill: among approximations; the others: "
        "among configurations above the uniform floor, skill > 0)"
    )
    return table
