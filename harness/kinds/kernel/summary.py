"""The report's opening: for each group and sequence length, the configuration to pick for speed,
for memory and for accuracy, and the error-vs-time Pareto front.

One table, one row per (group, N) (the group column only when the run has several groups):
the fastest configuration (with its speedup against the baseline), the one with the least peak
memory, the most accurate approximation (highest skill; exact configurations are only named when
nothing else ran) and the configurations no other beats on both error and time. A configuration
at or below the uniform floor (skill <= 0: no more accurate than uniform attention) is no
candidate for the fastest, the least memory or the front (`frame.below_floor`); a cell says how
many faster or smaller ones it left out for that, and the most accurate approximation says when
none beats the floor.
"""

from __future__ import annotations

import pandas as pd

from harness.config.blocks import ReportSpec
from harness.kinds.kernel.frame import below_floor, groups, load_legend, marks, noise_legend, pareto
from harness.kinds.kernel.rows import fmt_x
from harness.kinds.kernel.tables import md_table
from harness.plugins.metrics import metric
from harness.results.markdown import md_cell


def _left_out(better: pd.Series, what: str) -> str:
    """` (2 faster, below the uniform floor, left out)`: the picks a skill <= 0 would have made."""
    n = int(better.sum())
    return f" ({n} {what}, below the uniform floor, left out)" if n else ""


def _fastest(at: pd.DataFrame) -> str:
    usable = at[at["time"].notna() & ~below_floor(at)]
    below = at[at["time"].notna() & below_floor(at)]
    if not len(usable):
        return "n/a (every timed configuration is at or below the uniform floor)" if len(below) else "n/a"
    r = usable.loc[usable["time"].idxmin()]
    text = f"{md_cell(r['label'])} {metric('time_ms_median').format(r['time'], unit=True)}"
    if r["label"] == r["base_label"]:
        text += f" (the baseline){marks((r['noisy'],), (r['loaded'],))}"
    elif pd.isna(r["speedup"]):
        text += marks((r["noisy"],), (r["loaded"],))
    else:
        vs = f" ({fmt_x(r['speedup'])} vs {md_cell(r['base_label'])})"
        text += vs + marks((r["noisy"], r["base_noisy"]), (r["loaded"], r["base_loaded"]))
    return text + _left_out(below["time"] < r["time"], "faster")


def _least_memory(at: pd.DataFrame) -> str:
    peak = pd.to_numeric(at["peak_mem_bytes"], errors="coerce").where(at["ok"])
    usable = peak.where(~below_floor(at))
    if usable.isna().all():
        return (
            "n/a (every measured configuration is at or below the uniform floor)"
            if peak.notna().any()
            else "n/a"
        )
    r = at.loc[usable.idxmin()]
    text = f"{md_cell(r['label'])} {metric('peak_mem_bytes').format(r['peak_mem_bytes'], unit=True)}"
    return text + _left_out(peak.where(below_floor(at)) < usable.min(), "smaller")


def _most_accurate(at: pd.DataFrame) -> str:
    skill = pd.to_numeric(at["skill"], errors="coerce").where(at["ok"])
    approx = skill.where(~at["exact"])
    pick = approx if approx.notna().any() else skill
    if pick.isna().all():
        return "n/a"
    r = at.loc[pick.idxmax()]
    err = metric("rel_err").format(r["rel_err"])
    text = f"{md_cell(r['label'])} skill {metric('skill').format(r['skill'])} (rel_err {err})"
    return text if r["skill"] > 0 else f"none beats the uniform floor (best: {text})"


def _front(at: pd.DataFrame) -> str:
    front = pareto(at)
    if not len(front):
        return "n/a"
    t, e = metric("time_ms_median"), metric("rel_err")
    return " · ".join(
        f"{md_cell(r.label)} {t.format(r.time, unit=True)}, {e.format(r.err)}{marks((r.noisy,), (r.loaded,))}"
        for r in front.itertuples()
    )


def summary(df: pd.DataFrame, spec: ReportSpec) -> list[str]:
    """The `## Summary` section's lines."""
    rows = []
    for title, g in groups(df, "perf"):
        for n, at in g.groupby("seq_len", sort=True):
            rows.append(
                {
                    "group": title,
                    "N": f"{n:,}",
                    "fastest": _fastest(at),
                    "least peak memory": _least_memory(at),
                    "most accurate approximation": _most_accurate(at),
                    "error-vs-time Pareto front (fastest first)": _front(at),
                }
            )
    if not rows:
        return []
    table = pd.DataFrame(rows)
    if table["group"].nunique() == 1:
        table = table.drop(columns="group")
    if spec.baseline:
        fallback = "where it has no ok time, the fastest exact configuration"
        base = f"the scenario's baseline `{md_cell(spec.baseline)}` ({fallback})"
    else:
        base = "the fastest exact configuration at each length"
    if not df["base_time"].notna().any():
        base += " (none has an ok time in this run, so there are no speedups)"
    t, e, s = metric("time_ms_median"), metric("rel_err"), metric("skill")
    return [
        "## Summary",
        "",
        md_table(table),
        "",
        f"_Speedups are against {base}; times are {t.header()}, error is {e.header()} against exact "
        f"softmax attention, skill ({s.better}) = 1 − error / error of uniform attention. The Pareto front "
        "lists the configurations no other beats on both time and error. Only configurations better "
        "than the uniform floor (skill > 0) are candidates for the fastest, the least memory and the "
        "front: one at or below it is no more accurate than uniform attention, however fast or small "
        "(a cell names how many such faster or smaller ones it left out). "
        f"{'; '.join(x for x in (noise_legend(spec), load_legend(df)) if x)}._",
    ]
