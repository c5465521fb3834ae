"""`history show`: each case's median time, memory and error across commits, as a table and PNGs.

The table has one row per (machine, case): the number of points, the first and latest median
time, their ratio, and the latest peak memory and rel_err. The plots: one PNG per (machine,
problem) group (`history_<machine>_<problem>.png`), three panels (median time with its p20-p80
band, peak memory, rel_err) against the stored points in commit order, one line per configuration;
x ticks name the commits (12 characters).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: a caller's backend is never switched

from harness.common.files import atomic_path, ensure_dir
from harness.regress.history import slug
from harness.regress.history_check import series_name

PANELS = (
    ("time_ms_median", "median time (ms)"),
    ("peak_mem_bytes", "peak memory (MiB)"),
    ("rel_err", "rel_err"),
)
PROBLEM = ("seq_len", "dtype", "causal", "mode")


def table(df: pd.DataFrame) -> str:
    """A plain-text table of every (machine, case) series (ok points only)."""
    from tabulate import tabulate

    ok = df[df["status"] == "ok"]
    rows_out = []
    for (machine, _), rows in ok.groupby(["machine", "case_id"], sort=True):
        rows = rows.sort_values("point")
        t = rows["time_ms_median"].dropna()
        first, last = (t.iloc[0], t.iloc[-1]) if len(t) else (float("nan"), float("nan"))
        mem, err = rows["peak_mem_bytes"].iloc[-1], rows["rel_err"].iloc[-1]
        name = series_name(rows.iloc[0])
        rows_out.append([machine, name, len(rows), first, last, f"{last / first:.3f}×", mem / 2**20, err])
    head = ["machine", "case", "points", "first ms", "latest ms", "latest/first", "peak MiB", "rel_err"]
    return tabulate(rows_out, headers=head, floatfmt=".4g")


def _commit_ticks(ax: Axes, rows: pd.DataFrame) -> None:
    points = rows.drop_duplicates("point").sort_values("point")
    ax.set_xticks(list(points["point"]))
    ax.set_xticklabels([c[:12] or "?" for c in points["commit"]], rotation=60, ha="right", fontsize=7)


def plot_history(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per (machine, problem group); returns the paths written."""
    out_dir = ensure_dir(Path(out_dir))
    written = []
    ok = df[df["status"] == "ok"]
    for (machine, *problem), rows in ok.groupby(["machine", *PROBLEM], sort=True):
        fig = Figure(figsize=(15, 4.2))
        axes = fig.subplots(1, 3)
        for label, series in rows.groupby("label", sort=True):
            series = series.sort_values("point")
            for ax, (col, _) in zip(axes, PANELS, strict=True):
                scale = 2**-20 if col == "peak_mem_bytes" else 1.0
                y = series[col] * scale
                if y.notna().any():
                    ax.plot(series["point"], y, marker="o", ms=3, label=str(label))
            if series["time_ms_p20"].notna().any():
                axes[0].fill_between(
                    series["point"], series["time_ms_p20"], series["time_ms_p80"], alpha=0.15
                )
        n, dtype, causal, mode = problem
        title = f"{machine}: N={n} · {dtype} · {'causal' if causal else 'non-causal'} · {mode}"
        for ax, (_, name) in zip(axes, PANELS, strict=True):
            ax.set_ylabel(name)
            ax.set_xlabel("commit")
            ax.grid(alpha=0.3)
            _commit_ticks(ax, rows)
        axes[0].set_yscale("log")  # the p20-p80 band of a loaded machine spans decades
        axes[0].legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        path = out_dir / f"history_{slug(str(machine))}_{slug(f'{n}-{dtype}-{causal}-{mode}')}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        written.append(path)
    return written
