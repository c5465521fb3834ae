"""The report's MQAR section (records of `kind: mqar`, harness/kinds/mqar) and its plot.

Accuracy on held-out sequences per variant configuration and (length, pairs) point, as the mean
over seeds ± their spread (sample standard deviation) at the best learning rate, under the two
baselines of each point (uniform chance over the value tokens; copy from context, 1 / pairs:
answering with any value of the sequence); accuracy against the feature dimension D per variant;
which configurations learned recall; and the two claims the task exists for: the exact
configurations' accuracy, and how far apart the linear-cost (non-exact) configurations are at
each point. Shown only when the run has MQAR records. A mean at or below the copy-from-context
baseline is marked "no recall learned".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.common.numbers import finite
from harness.results.markdown import md_cell

SPREAD_TARGET = 0.10  # the linear-cost configurations differ by at least this much somewhere
EXACT_TARGET = 0.99  # exact attention solves the task
PLOT = "mqar:accuracy_vs_d"
STATE_PLOT = "mqar:accuracy_vs_state"


def with_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a `pairs` column: the task point's pairs (`task.pairs`; before schema 4 the metric
    `mqar_pairs`)."""
    pairs = df["task.pairs"] if "task.pairs" in df else df.get("mqar_pairs", pd.Series(index=df.index))
    return df.assign(pairs=pd.to_numeric(pairs, errors="coerce"))


def _no_recall(row: dict[str, Any], acc: float | None = None) -> bool:
    """Whether an ok result (or `acc`, e.g. one seed's) sits at or below the copy-from-context
    baseline (1 / pairs)."""
    acc = finite(row.get("mqar_accuracy")) if acc is None else acc
    pairs = finite(row.get("pairs"))
    return acc is not None and pairs is not None and acc <= 1.0 / pairs + 1e-9


def _seeds(row: dict[str, Any]) -> list[float]:
    """The accuracy of each seed at the best learning rate (empty when not recorded)."""
    seeds = row.get("mqar_seed_accuracy")
    if not isinstance(seeds, list | tuple):
        return []
    return [x for s in seeds if (x := finite(s)) is not None]


def spread(row: dict[str, Any]) -> float | None:
    """The spread over seeds: `mqar_accuracy_sd`, or for records written before it, the sample
    standard deviation of `mqar_seed_accuracy`; None with one seed."""
    if (sd := finite(row.get("mqar_accuracy_sd"))) is not None:
        return sd
    seeds = _seeds(row)
    if len(seeds) < 2:
        return None
    mean = sum(seeds) / len(seeds)
    return math.sqrt(sum((x - mean) ** 2 for x in seeds) / (len(seeds) - 1))


def mean_spread(row: dict[str, Any], bold: bool = False) -> str:
    """`0.512 ± 0.034` (mean over seeds ± their spread), `0.512` with one seed."""
    acc = finite(row.get("mqar_accuracy"))
    text = f"**{acc:.3f}**" if bold else f"{acc:.3f}"
    sd = spread(row)
    return text + (f" ± {sd:.3f}" if sd is not None else "")


def _points(df: pd.DataFrame) -> list[tuple[int, int]]:
    """The (seq_len, pairs) points of the run, in order."""
    pts = {(int(n), int(p)) for n, p in zip(df["seq_len"], df["pairs"], strict=True) if finite(p) is not None}
    return sorted(pts)


def _order(df: pd.DataFrame) -> list[str]:
    """Labels: exact configurations first, then by variant and D, in run order otherwise."""
    first = df.assign(_d=pd.to_numeric(df["feature_dim"], errors="coerce").fillna(-1))
    first = first.drop_duplicates("label").sort_values(
        ["exact", "_d"], ascending=[False, True], kind="stable"
    )
    return list(first["label"])


def _acc(row: dict[str, Any]) -> float | None:
    return finite(row.get("mqar_accuracy")) if row.get("status") == "ok" else None


def _cell(row: dict[str, Any], notes: dict[str, int]) -> str:
    """`**0.984** ± 0.006 (lr 0.003)`, with "no recall learned" at or below the copy baseline and
    "a seed at copy" when the mean is above it but some seed is not; or the status with a footnote.
    The learning rate is named only when the grid had several."""
    acc = _acc(row)
    if acc is None:
        key = f"{row['status']}: {row.get('reason') or ''}"
        notes.setdefault(key, len(notes) + 1)
        return f"{row['status']}[^m{notes[key]}]"
    grid = row.get("mqar_lr_accuracy")
    several = not isinstance(grid, list | tuple) or len(grid) > 1
    lr = finite(row.get("mqar_best_lr"))
    extras = [f"lr {lr:g}"] if several and lr is not None else []
    if _no_recall(row):
        extras.insert(0, "no recall learned")
    elif any(_no_recall(row, s) for s in _seeds(row)):
        extras.insert(0, "a seed at copy")
    return mean_spread(row, bold=True) + (f" ({'; '.join(extras)})" if extras else "")


def _baseline_rows(df: pd.DataFrame) -> list[dict[str, str]]:
    """The two baselines of each (N, pairs) column: uniform chance and copy from context."""
    chance, copy = {"configuration": "_chance (uniform value)_", "D": "—"}, {
        "configuration": "_copy from context (1 / pairs)_", "D": "—"}  # fmt: skip
    for n, p in _points(df):
        at = df[(df["seq_len"] == n) & (df["pairs"] == p)]
        values = at["mqar_chance"].dropna() if "mqar_chance" in at else pd.Series(dtype=float)
        chance[f"N={n}, pairs={p}"] = f"{values.iloc[0]:.3f}" if len(values) else "—"
        copy[f"N={n}, pairs={p}"] = f"{1.0 / p:.3f}"
    return [chance, copy]


def _accuracy_table(df: pd.DataFrame, notes: dict[str, int]) -> str:
    """Rows: the two baselines, then configurations (with D); columns: (N, pairs)."""
    out = _baseline_rows(df)
    for label in _order(df):
        rows = df[df["label"] == label]
        first = rows.iloc[0]
        d = finite(first["feature_dim"])
        line = {
            "configuration": f"`{md_cell(label)}`",
            "D": "exact" if first["exact"] else str(int(d)) if d else "—",
        }
        for n, p in _points(df):
            hit = rows[(rows["seq_len"] == n) & (rows["pairs"] == p)]
            line[f"N={n}, pairs={p}"] = _cell(hit.iloc[0].to_dict(), notes) if len(hit) else ""
        out.append(line)
    return pd.DataFrame(out).to_markdown(index=False, disable_numparse=True)


def _best(rows: pd.DataFrame) -> dict[str, Any] | None:
    """The row with the highest mean accuracy (None when there is none)."""
    return rows.loc[rows["mqar_accuracy"].idxmax()].to_dict() if len(rows) else None


def _by_d_table(df: pd.DataFrame) -> str:
    """Rows: (N, pairs, variant); columns: D; cells: mean ± spread of the variant's best configuration
    at that D (exact variants: one column)."""
    ok = df[df["status"] == "ok"].assign(_d=pd.to_numeric(df["feature_dim"], errors="coerce"))
    dims = sorted({int(d) for d in ok["_d"].dropna()})
    variants = list(dict.fromkeys(ok["variant"]))
    out = []
    for n, p in _points(ok):
        for variant in variants:
            rows = ok[(ok["variant"] == variant) & (ok["seq_len"] == n) & (ok["pairs"] == p)]
            if not len(rows):
                continue
            line = {"N, pairs": f"{n}, {int(p)}", "variant": f"`{variant}`"}
            for d in dims:
                best = _best(rows[rows["_d"] == d])
                line[f"D={d}"] = mean_spread(best) if best is not None else ""
            if rows["exact"].all():
                line["exact"] = mean_spread(_best(rows))
            out.append(line)
    frame = pd.DataFrame(out).fillna("")
    return frame.to_markdown(index=False, disable_numparse=True) if len(frame) else ""


def recall_lines(df: pd.DataFrame) -> list[str]:
    """Which configurations learned recall (mean above the copy baseline) at every, some or no point
    they ran at."""
    ok = df[df["status"] == "ok"]
    groups: dict[str, list[str]] = {"every": [], "some": [], "none": []}
    for label in _order(ok):
        rows = ok[ok["label"] == label]
        above = [(int(n), int(p)) for n, p, r in zip(rows["seq_len"], rows["pairs"], rows.to_dict("records"),
                                                     strict=True) if not _no_recall(r)]  # fmt: skip
        name = f"`{md_cell(label)}`"
        if len(above) == len(rows):
            groups["every"].append(name)
        elif above:
            groups["some"].append(name + " (" + ", ".join(f"N={n}/{p}" for n, p in sorted(above)) + ")")
        else:
            groups["none"].append(name)
    words = {
        "every": "Recall learned (mean above the copy baseline) at every point",
        "some": "Recall learned at some points only (N/pairs)",
        "none": "No recall learned at any point",
    }
    return [f"- {words[k]}: {', '.join(v) or 'none'}." for k, v in groups.items() if len(ok)]


def claims(df: pd.DataFrame) -> list[str]:
    """The targets, measured: exact accuracy >= 99%; non-exact configurations >= 10 points apart."""
    ok = df[df["status"] == "ok"]
    lines = []
    exact = ok[ok["exact"]]
    if len(exact):
        worst = exact.loc[exact["mqar_accuracy"].idxmin()]
        met = "met" if worst["mqar_accuracy"] >= EXACT_TARGET else "NOT met"
        lines.append(
            f"- Exact attention: lowest accuracy {worst['mqar_accuracy']:.3f} (`{worst['label']}`, "
            f"N={worst['seq_len']}, pairs={int(worst['pairs'])}); target >= {EXACT_TARGET:.2f}: {met}."
        )
    best_gap = 0.0
    for n, p in _points(ok):
        approx = ok[(~ok["exact"]) & (ok["seq_len"] == n) & (ok["pairs"] == p)]
        if len(approx) < 2:
            continue
        hi, lo = approx.loc[approx["mqar_accuracy"].idxmax()], approx.loc[approx["mqar_accuracy"].idxmin()]
        gap = hi["mqar_accuracy"] - lo["mqar_accuracy"]
        best_gap = max(best_gap, gap)
        lines.append(
            f"- N={n}, pairs={p}: linear-cost configurations from {lo['mqar_accuracy']:.3f} "
            f"(`{lo['label']}`) to {hi['mqar_accuracy']:.3f} (`{hi['label']}`): {100 * gap:.1f} points apart."
        )
    if len(ok[~ok["exact"]]):
        met = "met" if best_gap >= SPREAD_TARGET else "NOT met"
        lines.append(
            f"- Largest spread {100 * best_gap:.1f} points; target >= {100 * SPREAD_TARGET:.0f}: {met}."
        )
    return lines


def mqar_section(df: pd.DataFrame, scenario: dict | None, plot_files: dict[str, str]) -> list[str]:
    """The `## MQAR` section of the report (df: the MQAR rows only)."""
    df = with_pairs(df)
    task = (scenario or {}).get("task") or {}
    facts = [f"{k} {v}" for k, v in task.items() if k in ("vocab", "layers", "train_steps", "lrs", "seeds")]
    chance = finite(df["mqar_chance"].dropna().iloc[0]) if df["mqar_chance"].notna().any() else None
    lines = [
        "## MQAR",
        "",
        "_Multi-query associative recall (Zoology, arXiv 2312.04927): accuracy of a tiny causal model "
        "with the variant as its attention, trained per (learning rate, seed) and measured on held-out "
        "sequences; the best learning rate's mean over seeds ± their spread (sample standard deviation) is "
        "shown. Learnable variants train end to end with the model (no distillation fit). D = the variant's "
        "feature dimension._",
        "",
        f"Task: {', '.join(facts) or 'defaults'}"
        + (f"; chance accuracy {chance:.3f}" if chance is not None else "")
        + "; copy-from-context baseline 1 / pairs (a result at or below it: no recall learned)"
        + ".",
        "",
    ]
    lines += claims(df) + recall_lines(df) + [""]
    if STATE_PLOT in plot_files:
        lines += [
            "Accuracy against the recurrent state each configuration keeps per sequence (Zoology / Based "
            "style; exact attention's state is its K and V cache, which grows with N):",
            "",
            f"![accuracy vs state size]({plot_files[STATE_PLOT]})",
            "",
        ]
    if PLOT in plot_files:
        lines += [f"![accuracy vs D]({plot_files[PLOT]})", ""]
    notes: dict[str, int] = {}
    lines += ["### Accuracy per configuration and (length, pairs)", "", _accuracy_table(df, notes), ""]
    by_d = _by_d_table(df)
    if by_d:
        lines += ["### Accuracy against D", "", by_d, ""]
    lines += [f"[^m{i}]: {md_cell(text)}" for text, i in notes.items()]
    return lines


def mqar_plot(df: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """plots/mqar_accuracy_vs_d.png: accuracy against D, a panel per (N, pairs), a line per variant
    with the spread over seeds as error bars (exact variants as a dashed level); {} when no MQAR
    record is ok."""
    df = with_pairs(df)
    ok = df[df["status"] == "ok"] if len(df) else df
    if not len(ok):
        return {}
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is never switched

    points = _points(ok)
    fig = Figure(figsize=(4.2 * len(points), 3.6))
    axes = fig.subplots(1, len(points), squeeze=False, sharey=True)
    colors = {v: colormaps["tab10"](i % 10) for i, v in enumerate(dict.fromkeys(ok["variant"]))}
    for ax, (n, p) in zip(axes[0], points, strict=True):
        at = ok[(ok["seq_len"] == n) & (ok["pairs"] == p)]
        dims = pd.to_numeric(at["feature_dim"], errors="coerce")
        for variant, rows in at.groupby("variant", sort=False):
            if rows["exact"].all():
                ax.axhline(rows["mqar_accuracy"].max(), ls="--", color=colors[variant], label=variant)
                continue
            at_d = rows.assign(_d=dims[rows.index]).dropna(subset=["_d"])
            best = at_d.loc[at_d.groupby("_d")["mqar_accuracy"].idxmax()].sort_values("_d")
            sd = [spread(r) or 0.0 for r in best.to_dict("records")]
            ax.errorbar(best["_d"], best["mqar_accuracy"], yerr=sd if any(sd) else None, marker="o",
                        capsize=3, color=colors[variant], label=variant)  # fmt: skip
        if "mqar_chance" in at and at["mqar_chance"].notna().any():
            ax.axhline(at["mqar_chance"].dropna().iloc[0], ls=":", color="grey", label="chance")
        ax.axhline(1.0 / p, ls="-.", color="grey", lw=0.8, label="copy baseline (1/pairs)")
        ax.set_xscale("log", base=2)
        ticks = sorted({float(d) for d in dims.dropna()})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"N={n}, pairs={p}")
        ax.set_xlabel("feature dimension D")
    axes[0][0].set_ylabel("MQAR accuracy (held out)")
    axes[0][0].set_ylim(0, 1.02)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "mqar_accuracy_vs_d.png"
    fig.savefig(path, dpi=120)
    return {PLOT: path} | _state_plot(ok, points, colors, out_dir)


def _state_plot(ok: pd.DataFrame, points: list, colors: dict, out_dir: Path) -> dict[str, Path]:
    """plots/mqar_accuracy_vs_state.png: accuracy against the recurrent state in bytes, a panel per
    (N, pairs), a line per variant over its configurations, exact attention as its K/V-cache point
    with a dashed level; {} when no record carries a state size."""
    from matplotlib.figure import Figure

    if "mqar_state_bytes" not in ok or not ok["mqar_state_bytes"].notna().any():
        return {}
    fig = Figure(figsize=(4.4 * len(points), 3.8))
    axes = fig.subplots(1, len(points), squeeze=False, sharey=True)
    for ax, (n, p) in zip(axes[0], points, strict=True):
        at = ok[(ok["seq_len"] == n) & (ok["pairs"] == p) & ok["mqar_state_bytes"].notna()]
        for variant, rows in at.groupby("variant", sort=False):
            line = rows.groupby("mqar_state_bytes")["mqar_accuracy"].max().sort_index()
            exact = bool(rows["exact"].all())
            ax.plot(line.index, line.values, marker="*" if exact else "o", ms=9 if exact else 5,
                    ls="none" if exact else "-", color=colors[variant], label=variant)  # fmt: skip
            if exact:
                ax.axhline(line.max(), ls="--", lw=0.8, color=colors[variant])
        ax.axhline(1.0 / p, ls="-.", color="grey", lw=0.8, label="copy baseline (1/pairs)")
        ax.set_xscale("log", base=2)
        ax.set_title(f"N={n}, pairs={p}")
        ax.set_xlabel("recurrent state per sequence (bytes)")
    axes[0][0].set_ylabel("MQAR accuracy (held out)")
    axes[0][0].set_ylim(0, 1.02)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out_dir / "mqar_accuracy_vs_state.png"
    fig.savefig(path, dpi=120)
    return {STATE_PLOT: path}
