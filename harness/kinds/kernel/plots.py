"""PNG plots of one run: runtime and peak memory vs N, error vs D, and the error-vs-time frontier.

One file per (dtype, causal, mode) group and plot kind, named `{kind}_{group_slug}.png`; plots
that would be empty are not written. `make_plots` returns {"kind:group_slug": path}. Exact
configurations (`capabilities.exact`) come first in legends; axis labels come from the metric
registry.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: a caller's backend is never switched
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from harness.common.files import atomic_path, ensure_dir
from harness.kinds.kernel.rows import (
    Row,
    feature_dim_rows,
    group_slug,
    group_title,
    iter_groups,
    lengths_of,
    num,
    ordered_labels,
)
from harness.plugins.metrics import metric

DPI = 120
FLOOR_LABEL = "uniform floor"  # the error of uniform attention: a useful approximation is below it
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _len_label(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _style(i: int) -> dict:
    return {"color": colormaps["tab10"](i % 10), "marker": MARKERS[(i // 10 + i) % len(MARKERS)]}


def _log_ticks(ax, which: str) -> None:
    """Readable ticks on a log axis: plain numbers (0.02, 5, 300) from 1-2-5 (or finer) steps."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 4, 5, 7)):
        ticks = [m * 10.0**e for e in decades for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 3:
            break
    if len(ticks) < 2:  # a very narrow range: two rounded values inside it
        ticks = sorted({float(f"{lo * (hi / lo) ** q:.2g}") for q in (0.2, 0.8)})
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _value_axis(ax, which: str, values: list[float]) -> None:
    """Log scale with readable ticks when the values span a factor >= 3, else a linear scale."""
    lo, hi = min(values), max(values)
    if hi / lo >= 3.0:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        _log_ticks(ax, which)


def _finish(fig, ax, title: str, path: Path, legend: bool = True) -> Path:
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ensure_dir(path.parent)
    with atomic_path(path) as tmp:  # a full disk never leaves a torn PNG
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def _lines_vs_n(rows: list[Row], value, ylabel: str, title: str, path: Path, band=None) -> Path | None:
    """One log-log line per configuration: x = seq_len, y = value(record) (None = not plotted).

    `band(record)` -> (low, high) or None draws the spread as error bars (e.g. time p20-p80).
    Configurations without a single plotted point are listed in the legend with their status.
    """
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    ys: list[float] = []
    for i, label in enumerate(ordered_labels(rows)):
        ok = sorted(
            (int(r["seq_len"]), v, r)
            for r in rows
            if r["label"] == label and r["status"] == "ok" and (v := value(r)) is not None and v > 0
        )
        if not ok:
            statuses = sorted({str(r["status"]) for r in rows if r["label"] == label and r["status"] != "ok"})
            if statuses:
                ax.plot([], [], linestyle="none", label=f"{label}: not plotted ({', '.join(statuses)})")
            continue
        xs, vs = [n for n, _, _ in ok], [v for _, v, _ in ok]
        ax.plot(xs, vs, label=label, linewidth=1.4, markersize=5, **_style(i))
        ys += vs
        spread = [(n, v, b) for n, v, r in ok if band is not None and (b := band(r)) is not None]
        if spread:
            lo = [max(0.0, v - b[0]) for _, v, b in spread]
            hi = [max(0.0, b[1] - v) for _, v, b in spread]
            ax.errorbar(
                [n for n, _, _ in spread],
                [v for _, v, _ in spread],
                yerr=[lo, hi],
                fmt="none",
                ecolor=_style(i)["color"],
                elinewidth=0.9,
                capsize=3,
                alpha=0.7,
            )
    if not ys:
        return None
    ax.set_xscale("log", base=2)
    _value_axis(ax, "y", ys)
    lengths = lengths_of(rows)
    ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([_len_label(n) for n in lengths])
    ax.set_xlim(lengths[0] / 1.25, lengths[-1] * 1.25)
    ax.set_xlabel("sequence length N (tokens)")
    ax.set_ylabel(ylabel)
    return _finish(fig, ax, title, path)


def _error_vs_d(rows: list[Row], title: str, path: Path) -> Path | None:
    """rel_err vs D, one line per approximate variant family at its longest common length.

    A dotted line per length marks the error of uniform attention there (the uniform floor).
    """
    series = []
    for fr in feature_dim_rows(rows):
        pts = sorted(
            (d, e)
            for d, r in fr["cells"].items()
            if r["status"] == "ok" and (e := num(r["rel_err"])) is not None and e > 0
        )
        if len(pts) > 1:
            series.append((f"{fr['name']} (N={_len_label(fr['seq_len'])})", fr["seq_len"], pts))
    if not series:
        return None
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    values: list[float] = []
    for i, (label, _, pts) in enumerate(series):
        ax.plot(
            [d for d, _ in pts], [e for _, e in pts], label=label, linewidth=1.4, markersize=5, **_style(i)
        )
        values += [e for _, e in pts]
    for j, n in enumerate(sorted({n for _, n, _ in series})):
        floor = _floor_at(rows, n)
        if floor is not None:
            style = (0, (1, 2 + 2 * j))
            ax.axhline(
                floor,
                color="0.35",
                linewidth=1.0,
                linestyle=style,
                label=f"{FLOOR_LABEL}, N={_len_label(n)}",
            )
            values.append(floor)
    dims = sorted({d for _, _, pts in series for d, _ in pts})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(dims))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(d) for d in dims])
    _value_axis(ax, "y", values)
    ax.set_xlabel("feature dimension D")
    ax.set_ylabel(_error_label())
    return _finish(fig, ax, title, path)


def _frontier_points(rows: list[Row]) -> tuple[int, list[tuple[float, float, str]]] | None:
    """(N, [(time_ms, rel_err, label)]) at the longest length every configuration has both at.

    Exact configurations (the accuracy references, which may run out of memory first) are not
    required to be there; without such a length, the longest with at least two points.
    """

    def points(n: int) -> list[tuple[float, float, str]]:
        return sorted(
            (t, e, r["label"])
            for r in rows
            if int(r["seq_len"]) == n
            and r["status"] == "ok"
            and (t := num(r["time_ms_median"])) is not None
            and (e := num(r["rel_err"])) is not None
            and t > 0
            and e > 0
        )

    per_n = {n: points(n) for n in lengths_of(rows)}
    wanted = {lab for pts in per_n.values() for _, _, lab in pts} - {
        r["label"] for r in rows if r.get("exact")
    }
    common = [n for n, pts in per_n.items() if len(pts) >= 2 and wanted <= {lab for _, _, lab in pts}]
    enough = [n for n, pts in per_n.items() if len(pts) >= 2]
    n = max(common or enough, default=None)
    return None if n is None else (n, per_n[n])


def _floor_at(rows: list[Row], n: int) -> float | None:
    """The median uniform-attention error (`uniform_rel_err`) of the ok records at length `n`."""
    floors = sorted(
        v for r in rows if int(r["seq_len"]) == n and r["status"] == "ok" and (v := num(r["uniform_rel_err"]))
    )
    return floors[len(floors) // 2] if floors else None


def _frontier(rows: list[Row], title: str, path: Path) -> Path | None:
    """Error vs time at the longest common length (see `_frontier_points`), with the uniform floor as
    a horizontal line. The Pareto staircase joins only points below the floor (better than uniform
    attention); the others are drawn hollow."""
    found = _frontier_points(rows)
    if found is None:
        return None
    n, pts = found
    floor = _floor_at(rows, n)
    pareto, lowest = [], floor if floor is not None else float("inf")
    for t, e, _ in pts:  # ascending time: on the frontier if no faster point is at least as accurate
        if e < lowest:
            pareto.append((t, e))
            lowest = e
    colour = {label: i for i, label in enumerate(ordered_labels(rows))}
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    if pareto:
        ax.step(
            [t for t, _ in pareto],
            [e for _, e in pareto],
            where="post",
            color="0.5",
            linewidth=1.0,
            linestyle="--",
            label="Pareto frontier (below the floor)",
        )
    for t, e, label in sorted(pts, key=lambda p: colour[p[2]]):
        style = _style(colour[label])
        hollow = {"facecolors": "none", "edgecolors": style["color"], "linewidths": 1.2}
        filled = {"color": style["color"], "edgecolors": "black", "linewidths": 0.4}
        below = floor is None or e < floor
        ax.scatter(
            [t], [e], s=42, zorder=3, label=label, marker=style["marker"], **(filled if below else hollow)
        )
    errors = [e for _, e, _ in pts]
    if floor is not None:
        ax.axhline(floor, color="0.2", linewidth=1.0, linestyle=":", label=FLOOR_LABEL)
        errors.append(floor)
    _value_axis(ax, "x", [t for t, _, _ in pts])
    _value_axis(ax, "y", errors)
    ax.set_xlabel(metric("time_ms_median").axis_label())
    ax.set_ylabel(_error_label())
    return _finish(fig, ax, f"{title}: error vs time at N={_len_label(n)}", path)


def _error_label() -> str:
    return metric("rel_err").axis_label() + " vs exact softmax"


def _time_ms(r: Row) -> float | None:
    return num(r["time_ms_median"])


def _time_band(r: Row) -> tuple[float, float] | None:
    lo, hi = num(r["time_ms_p20"]), num(r["time_ms_p80"])
    return None if lo is None or hi is None else (lo, hi)


def _peak(r: Row) -> float | None:
    """Peak memory in the registry's display unit (MiB)."""
    peak = num(r["peak_mem_bytes"])
    return None if peak is None else peak * metric("peak_mem_bytes").scale


def make_plots(df, out_dir: Path) -> dict[str, Path]:
    """Write the PNGs of every group under `out_dir`; return {"kind:group_slug": path}."""
    out_dir = Path(out_dir)
    made: dict[str, Path] = {}
    for key, rows in iter_groups(df):
        slug, title = group_slug(key), group_title(key)
        drawn = {
            "runtime": _lines_vs_n(
                rows,
                _time_ms,
                metric("time_ms_median").axis_label(),
                f"{title}: runtime (median; bars p20-p80)",
                out_dir / f"runtime_{slug}.png",
                band=_time_band,
            ),
            "memory": _lines_vs_n(
                rows,
                _peak,
                metric("peak_mem_bytes").axis_label(),
                f"{title}: peak memory",
                out_dir / f"memory_{slug}.png",
            ),
            "error_vs_d": _error_vs_d(rows, f"{title}: error vs D", out_dir / f"error_vs_d_{slug}.png"),
            "frontier": _frontier(rows, title, out_dir / f"frontier_{slug}.png"),
        }
        made.update({f"{kind}:{slug}": path for kind, path in drawn.items() if path is not None})
    from harness.kinds.kernel.slide import slide_plot  # the run's one picture: skill vs time per regime

    slide = slide_plot(df, out_dir)
    made.update({"slide": slide} if slide is not None else {})
    return made
