"""The report's tables, each a `pivot_table` of formatted cells rendered by `DataFrame.to_markdown`.

Every function takes the rows of one group of the frame `harness.kinds.kernel.frame.prepare` builds
and returns Markdown, or None when there is nothing to show. A cell of a case that did not
finish ok is its footnoted status, never a blank; `—` means the configuration did not run at
that length. Units, formats and the better direction come from the metric registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from harness.kinds.kernel.frame import labels_in_order, marks
from harness.kinds.kernel.rows import feature_dim_rows, fmt_x, num
from harness.measure import seeds
from harness.measure.stats import loglog_crossover
from harness.plugins.metrics import Metric, all_metrics, metric
from harness.results.markdown import md_cell

# metrics the fixed tables show; any other metric with `table=True` gets a table of its own
SHOWN = frozenset(
    "time_ms_median peak_mem_bytes extra_mem_bytes rel_err unfitted_rel_err skill uniform_rel_err "
    "softmax_entropy tflops tflops_exact gbps time_over_floor".split()
)


def md_table(frame: pd.DataFrame, index: str | None = None) -> str:
    """Text cells as a Markdown pipe table; the index (if named by `index`) is the first column."""
    if index is not None:
        frame = frame.set_axis([md_cell(x) for x in frame.index], axis=0).rename_axis(index).reset_index()
    align = ["left"] + ["right"] * (frame.shape[1] - 1)
    return frame.to_markdown(index=False, colalign=align, disable_numparse=True)


def grid(rows: pd.DataFrame, cell: Callable[[Any], str | None], always: bool = False) -> pd.DataFrame | None:
    """Configuration x N frame of `cell(row)` on ok rows ('n/a' when it gives None) and the
    footnoted status elsewhere. Configurations without an ok case are left out (the runtime table
    shows them, `always`); None when no ok case has data."""
    text = pd.Series([cell(r) if r.ok else None for r in rows.itertuples()], index=rows.index, dtype=object)
    if not always and not (rows["ok"] & text.notna()).any():
        return None
    shown = rows if always else rows[rows["label"].isin(rows.loc[rows["ok"], "label"])]
    cells = text.loc[shown.index].fillna("n/a").where(shown["ok"], shown["marker"])
    frame = shown.assign(cell=cells).pivot_table(
        index="label", columns="seq_len", values="cell", aggfunc="last", dropna=False
    )
    frame = frame.reindex(index=labels_in_order(shown), columns=sorted(frame.columns)).fillna("—")
    return frame.set_axis([f"N={n}" for n in frame.columns], axis=1)


def _render(frame: pd.DataFrame | None) -> str | None:
    return None if frame is None else md_table(frame, "configuration")


def _at_base(rows: pd.DataFrame, col: str) -> pd.Series:
    """`col` of the baseline case at each row's group and length."""
    base = rows[rows["label"] == rows["base_label"]].drop_duplicates(["perf", "seq_len"], keep="last")
    lookup = pd.to_numeric(base.set_index(["perf", "seq_len"])[col], errors="coerce")
    keys = pd.MultiIndex.from_frame(rows[["perf", "seq_len"]])
    return pd.Series(lookup.reindex(keys).to_numpy(), index=rows.index)


def runtime(rows: pd.DataFrame) -> str | None:
    """Median time, `(2.0x)` speedup against the baseline at that length, `(base)` on the baseline."""
    m = metric("time_ms_median")

    def cell(r: Any) -> str | None:
        if pd.isna(r.time):
            return None
        if r.label == r.base_label:
            return f"{m.format(r.time)} (base){marks((r.noisy,), (r.loaded,))}"
        ratio = f" ({fmt_x(r.speedup)})" if pd.notna(r.speedup) else ""
        return (
            m.format(r.time)
            + ratio
            + marks((r.noisy, ratio and r.base_noisy), (r.loaded, ratio and r.base_loaded))
        )

    return _render(grid(rows, cell, always=True))


def memory(rows: pd.DataFrame) -> str | None:
    """Peak / above-inputs memory, with above-inputs memory as a multiple of the baseline's."""
    peak, extra = metric("peak_mem_bytes"), metric("extra_mem_bytes")
    rows = rows.assign(base_extra=_at_base(rows, "extra_mem_bytes"))

    def cell(r: Any) -> str | None:
        p, e, b = num(r.peak_mem_bytes), num(r.extra_mem_bytes), num(r.base_extra)
        if p is None and e is None:
            return None
        ratio = f" ({fmt_x(e / b)} base)" if e is not None and b and r.label != r.base_label else ""
        return f"{peak.format(p)} / {extra.format(e)}{ratio}"

    return _render(grid(rows, cell))


def _one_per_case(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (configuration, N) across modes: an ok one first, in pipeline mode order."""
    rank = rows["mode"].map({"fwd": 0, "bwd": 1, "fwd_bwd": 2}).fillna(9)
    picked = rows.assign(_r=rank, _bad=~rows["ok"]).sort_values(["_bad", "_r"])
    return picked.drop_duplicates(["label", "seq_len"], keep="first").drop(columns=["_r", "_bad"])


def error(rows: pd.DataFrame) -> str | None:
    """rel_err (unfitted error; skill) per configuration and N, shown once across modes, with the
    uniform-attention floor and the input entropy as the last two rows."""
    err, skill, unfit = metric("rel_err"), metric("skill"), metric("unfitted_rel_err")
    rows = _one_per_case(rows)

    def cell(r: Any) -> str | None:
        if num(r.rel_err) is None:
            return None
        extras = [f"unfit {unfit.format(r.unfitted_rel_err)}"] if num(r.unfitted_rel_err) is not None else []
        extras += [f"skill {skill.format(r.skill)}"] if num(r.skill) is not None else []
        mean = seeds.with_spread(err.format(r.rel_err), r, "rel_err", err.format)  # ± sd over seeds
        return mean + (f" ({'; '.join(extras)})" if extras else "")

    frame = grid(rows, cell)
    if frame is None:
        return None
    extra = {}
    for name, title in (("uniform_rel_err", "uniform attention (floor)"), ("softmax_entropy", "")):
        med = pd.to_numeric(rows[name], errors="coerce").groupby(rows["seq_len"]).median()
        m = metric(name)
        extra[title or m.axis_label()] = {f"N={n}": m.format(v) for n, v in med.items()}
    frame = pd.concat([frame, pd.DataFrame.from_dict(extra, orient="index")]).fillna("n/a")
    return md_table(frame, "configuration")


def throughput(rows: pd.DataFrame) -> str | None:
    """Own-work and exact-equivalent TFLOP/s, GB/s and the time over the roofline floor."""
    own, exact, gbps, floor = (metric(n) for n in ("tflops", "tflops_exact", "gbps", "time_over_floor"))

    def cell(r: Any) -> str | None:
        parts = [
            f"own {own.format(r.tflops, unit=True)}" if num(r.tflops) is not None else "",
            f"exact {exact.format(r.tflops_exact, unit=True)}" if num(r.tflops_exact) is not None else "",
            gbps.format(r.gbps, unit=True) if num(r.gbps) is not None else "",
            f"{floor.format(r.time_over_floor)}× floor" if num(r.time_over_floor) is not None else "",
        ]
        return " · ".join(p for p in parts if p) or None

    return _render(grid(rows, cell))


def feature_dims(rows: pd.DataFrame) -> str | None:
    """Per approximate variant with several D: rel_err · median time per D at the longest length
    every D was measured at."""
    err, t = metric("rel_err"), metric("time_ms_median")
    families = feature_dim_rows(rows.to_dict("records"))
    fam = [fr for fr in families if any(r["ok"] for r in fr["cells"].values())]
    if not fam:
        return None

    def text(r: dict) -> str:
        return f"{err.format(r['rel_err'])} · {t.format(r['time'])} ms" if r["ok"] else str(r["marker"])

    keys = [
        (fr["variant"], fr["name"], str(fr["seq_len"]), d, text(r))
        for fr in fam
        for d, r in fr["cells"].items()
    ]
    cells = pd.DataFrame(keys, columns=["family", "variant", "N", "D", "cell"])
    tables = []
    for _, one in cells.groupby("family", sort=False):
        frame = one.pivot_table(index=["variant", "N"], columns="D", values="cell", aggfunc="last")
        frame = frame.reindex(list(dict.fromkeys(zip(one["variant"], one["N"], strict=True))))
        frame = frame.fillna("—").set_axis([f"D={d}" for d in frame.columns], axis=1).reset_index()
        tables.append(md_table(frame))
    return "\n\n".join(tables)


def efficiency(rows: pd.DataFrame) -> str | None:
    """The length from which each configuration is faster than the baseline (log-log interpolation)."""
    pts = rows[rows["time"].notna() & rows["base_time"].notna() & (rows["label"] != rows["base_label"])]
    if not len(pts):
        return None

    def length(g: pd.DataFrame) -> str:
        c = loglog_crossover(list(g["seq_len"]), list(g["time"] / g["base_time"]))
        mark = marks(tuple(g["noisy"] | g["base_noisy"]), tuple(g["loaded"] | g["base_loaded"]))
        if c.kind == "between":
            return f"≈ {round(c.length):,} (between {c.lo:,} and {c.hi:,}){mark}"
        if c.kind == "always":
            return f"faster at every measured length (from N={c.hi:,} or below){mark}"
        return f"never in range (still slower at N={c.lo:,}){mark}"

    text = {lab: length(pts[pts["label"] == lab].sort_values("seq_len")) for lab in labels_in_order(pts)}
    frame = pd.DataFrame({"faster than the baseline from N": text})
    return md_table(frame, "configuration")


def more_metrics(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(header, table) for every registered metric with `table=True` that no table above shows."""
    out = []
    for m in all_metrics():
        if m.table and m.name not in SHOWN and m.name in rows:

            def cell(r: Any, m: Metric = m) -> str | None:
                return None if num(getattr(r, m.name)) is None else m.format(getattr(r, m.name))

            table = _render(grid(rows, cell))
            if table:
                out.append((m.header(), table))
    return out
