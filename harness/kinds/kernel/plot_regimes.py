"""Error vs sequence length, one PNG per input regime: does an approximation hold its error as N grows?

For each input regime (`input_dist`) and each (dtype, causal) slice, x = the sequence length N
(log2 axis), y = rel_err against exact softmax (log axis when the values span a factor >= 3), one
line per approximate configuration, and the uniform-attention floor (the error of attending to
every visible key equally, the median `uniform_rel_err` at each N) as a dashed black line: a line
at or above it has no skill. Exact configurations (`capabilities.exact`, error ~1e-7) are the
reference and are not drawn; configurations are in label order (the same colour in
every plot) and one with no ok point is listed in the legend with its
statuses. Accuracy does not depend on the pass, so each (configuration, N) point is the first ok
record of any mode. Files are `error_vs_n_{regime}_{slice}.png`; `regime_plots` returns
{"regime:{regime}:{slice}": path} and `regime_lines` the report's lines showing them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: a caller's backend is never switched
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from harness.common.files import atomic_path, ensure_dir
from harness.common.numbers import finite
from harness.plugins.metrics import metric

DPI = 120
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
FLOOR_LABEL = "uniform floor"  # the error of uniform attention: no skill at or above it
PREFIX = "regime:"
Row = dict[str, Any]


def _len_label(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _colour(i: int) -> tuple:
    """20 distinct colours: tab20's ten dark shades, then its ten light ones."""
    return colormaps["tab20"]((2 * i + (i // 10) % 2) % 20)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


def _slices(df) -> list[tuple[str, str, str, list[Row]]]:
    """[(regime, slice slug, slice title, rows)] per input regime and (dtype, causal), sorted."""
    out: dict[tuple[str, str, bool], list[Row]] = {}
    for row in df.to_dict("records"):
        out.setdefault((str(row["input_dist"]), str(row["dtype"]), bool(row["causal"])), []).append(row)
    found = []
    for (dist, dtype, causal), rows in sorted(out.items()):
        mask, masking = ("causal", "causal") if causal else ("full", "non-causal")
        found.append((dist, f"{dtype}_{mask}", f"{dtype} · {masking}", rows))
    return found


def _series(rows: list[Row]) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[str]]]:
    """({label: [(N, rel_err)]} of approximate configurations, {label: statuses} of those without
    a single ok point); labels sorted."""
    points: dict[str, dict[int, float]] = {}
    statuses: dict[str, set[str]] = {}
    for r in rows:
        if r.get("exact") is True:
            continue
        label = str(r["label"])
        points.setdefault(label, {})
        err = finite(r.get("rel_err"))
        if r["status"] == "ok" and err is not None and err > 0:
            points[label].setdefault(int(r["seq_len"]), err)  # the first ok record (any mode) of that N
        elif r["status"] != "ok":
            statuses.setdefault(label, set()).add(str(r["status"]))
    points = dict(sorted(points.items()))  # by label: the same colours in every regime's plot
    drawn = {label: sorted(pts.items()) for label, pts in points.items() if pts}
    missing = {
        label: sorted(statuses.get(label, {"no error measured"})) for label, pts in points.items() if not pts
    }
    return drawn, missing


def _floor(rows: list[Row]) -> list[tuple[int, float]]:
    """[(N, median uniform_rel_err at N)]: the no-skill line."""
    per_n: dict[int, list[float]] = {}
    for r in rows:
        if (u := finite(r.get("uniform_rel_err"))) is not None and u > 0:
            per_n.setdefault(int(r["seq_len"]), []).append(u)
    return [(n, sorted(us)[len(us) // 2]) for n, us in sorted(per_n.items())]


def _log_y(ax, values: list[float]) -> None:
    """Log y with plain 1-2-5 tick labels when the values span a factor >= 3; else linear."""
    lo, hi = min(values), max(values)
    if hi / lo < 3.0:
        return
    ax.set_yscale("log")
    ax.set_ylim(lo / 1.3, hi * 1.3)
    lo, hi = ax.get_ylim()
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = [m * 10.0**e for e in decades for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    if len(ticks) >= 2:
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def regime_figure(rows: list[Row], title: str) -> Figure | None:
    """The error-vs-N figure of one regime's rows (record dicts); None when no approximate
    configuration has an ok error. One line per configuration, plus the floor line."""
    drawn, missing = _series(rows)
    if not drawn:
        return None
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    values: list[float] = []
    for i, (label, pts) in enumerate(drawn.items()):
        style = {"color": _colour(i), "marker": MARKERS[(i // 10 + i) % len(MARKERS)]}
        ax.plot([n for n, _ in pts], [e for _, e in pts], label=label, linewidth=1.4, markersize=5, **style)
        values += [e for _, e in pts]
    floor = _floor(rows)
    if floor:
        ax.plot([n for n, _ in floor], [u for _, u in floor], color="black", linestyle="--", linewidth=1.6,
                label=FLOOR_LABEL)  # fmt: skip
        values += [u for _, u in floor]
    for label, statuses in missing.items():
        ax.plot([], [], linestyle="none", label=f"{label}: not plotted ({', '.join(statuses)})")
    lengths = sorted({n for pts in drawn.values() for n, _ in pts} | {n for n, _ in floor})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([_len_label(n) for n in lengths])
    ax.set_xlim(lengths[0] / 1.25, lengths[-1] * 1.25)
    _log_y(ax, values)
    ax.set_xlabel("sequence length N (tokens)")
    ax.set_ylabel(metric("rel_err").axis_label() + " vs exact softmax")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def regime_plots(df, out_dir: Path) -> dict[str, Path]:
    """Write one error-vs-N PNG per input regime and (dtype, causal) slice of the records `df`
    under `out_dir`; return {"regime:{regime}:{slice}": path} of the files written."""
    made: dict[str, Path] = {}
    if len(df) == 0 or "rel_err" not in df:
        return made
    for dist, slug, title, rows in _slices(df):
        fig = regime_figure(rows, f"inputs: {dist} · {title}: error vs N (lower is better)")
        if fig is None:
            continue
        path = ensure_dir(Path(out_dir)) / f"error_vs_n_{_slug(dist)}_{slug}.png"
        with atomic_path(path) as tmp:  # a full disk never leaves a torn PNG
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
        made[f"{PREFIX}{dist}:{slug}"] = path
    return made


def regime_lines(plot_files: dict[str, str]) -> list[str]:
    """The report's section showing the error-vs-N plots (paths relative to the run directory)."""
    keys = sorted(k for k in plot_files if k.startswith(PREFIX))
    if not keys:
        return []
    lines = [
        "",
        "## Error vs N per input regime",
        "",
        "_One line per approximate configuration; dashed black: the uniform floor (the error of "
        "uniform attention; no skill at or above it). Flat lines hold their error as N grows._",
    ]
    for key in keys:
        dist, slug = key[len(PREFIX) :].rsplit(":", 1)
        lines += ["", f"![error vs N, inputs {dist}, {slug}]({plot_files[key]})"]
    return lines
