"""The run's one-slide picture: skill against time per configuration, one panel per input regime.

At the longest length in the digest's slice (`digest.digest`: non-causal when the run has it, the
most common dtype, the forward pass), each configuration is a point: x its median time (log),
y its skill = 1 - rel_err / the uniform floor (1: exact; 0: no better than uniform attention; a
dotted line labelled "uniform floor" marks 0). Side by side, the regimes show what the Gaussian
default hides: on near-uniform attention every approximation sits at 0, on structured attention
(e.g. `local`) they separate. Skills below
`FLOOR` are drawn at `FLOOR` with a down-pointing marker and their value.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: a caller's backend is never switched
from matplotlib.lines import Line2D

from harness.common.files import atomic_path, ensure_dir
from harness.kinds.kernel.digest import digest
from harness.plugins.metrics import metric

FLOOR = -0.5
DPI = 150


def slide_plot(df: pd.DataFrame, out_dir: Path) -> Path | None:
    """Write `out_dir/slide.png` from the records `df`; None when fewer than two points have both
    a time and a skill at the longest length."""
    rows, where = digest(df)
    rows = rows[(rows["seq_len"] == rows["seq_len"].max()) & rows["time"].gt(0) & rows["skill"].notna()]
    if len(rows) < 2:
        return None
    regimes = list(dict.fromkeys(rows["input_dist"]))
    labels = list(dict.fromkeys(rows["label"]))
    colour = {label: colormaps["tab20"](i % 20) for i, label in enumerate(labels)}
    fig = Figure(figsize=(4.6 * len(regimes) + 2.4, 4.4))
    axes = fig.subplots(1, len(regimes), sharey=True, sharex=True, squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        for r in rows[rows["input_dist"] == regime].itertuples():
            below = r.skill < FLOOR
            y = FLOOR if below else r.skill
            ax.scatter(
                [r.time], [y], s=60, zorder=3, color=colour[r.label], edgecolors="black", linewidths=0.5,
                marker="v" if below else ("s" if r.exact else "o"),
            )  # fmt: skip
            if below:
                where_ = {"xytext": (5, 2), "textcoords": "offset points", "fontsize": 8}
                ax.annotate(f"{r.skill:.1f}", (r.time, y), **where_)
        ax.axhline(0.0, color="0.4", linewidth=0.9, linestyle=":")  # skill 0: the uniform floor
        ax.annotate(
            "uniform floor", (1.0, 0.0), xycoords=("axes fraction", "data"), xytext=(-3, 3),
            textcoords="offset points", ha="right", va="bottom", fontsize=8, color="0.3",
        )  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(f"inputs: {regime}", fontsize=10)
        ax.set_xlabel(metric("time_ms_median").axis_label())
        ax.grid(True, which="major", alpha=0.3)
    exact = dict(zip(rows["label"], rows["exact"], strict=True))
    handles = [
        Line2D([], [], linestyle="", marker="s" if exact[label] else "o", markersize=7, color=colour[label],
               markeredgecolor="black", markeredgewidth=0.5)
        for label in labels
    ]  # fmt: skip
    axes[0][-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    axes[0][0].set_ylabel("skill (1 = exact, 0 = uniform attention)")
    axes[0][0].set_ylim(FLOOR - 0.08, 1.1)
    n = int(rows["seq_len"].iloc[0])
    title = f"Accuracy vs speed at N={n} ({where}): up and left is better; squares are exact"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = ensure_dir(Path(out_dir)) / "slide.png"
    with atomic_path(path) as tmp:  # a full disk never leaves a torn PNG
        fig.savefig(tmp, dpi=DPI, format="png")
    return path
