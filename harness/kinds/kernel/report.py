"""The kernel kind's section of report.md: a summary to act on first, then per-group tables folded
in `<details>`, the accuracy tables once per (dtype, causal, inputs), the captured-attention
quality section, plots and footnotes.

Knows no variant by name: the exact reference is any configuration whose variant class has
`capabilities.exact`, and the speed baseline is the scenario's `report.baseline` or the fastest
exact configuration at each length (`frame.py`). Cells of cases that did not finish ok carry their
status and a footnote with the reason, never a blank.
"""

from __future__ import annotations

import pandas as pd

from harness.common.numbers import fmt_sig
from harness.kinds.kernel import tables
from harness.kinds.kernel.baseline import read_report_spec
from harness.kinds.kernel.captured import quality_sections
from harness.kinds.kernel.frame import groups, load_legend, noise_legend, prepare
from harness.kinds.kernel.plot_regimes import regime_lines
from harness.kinds.kernel.summary import summary
from harness.plugins.metrics import metric

PRECISION_FLOOR = {"bf16": 6e-3, "fp16": 8e-4}  # exact attention vs fp64 (VARIANTS.md)


def _accuracy_notes(df: pd.DataFrame) -> list[str]:
    lines = [
        "## Accuracy notes",
        "",
        "Errors are relative Frobenius errors of the output against exact softmax attention computed in "
        "fp32/fp64 on sampled query rows. Exact attention itself has a precision floor against fp64 of "
        "about 6e-3 in bf16 and 8e-4 in fp16: an approximate variant cannot look better than that, and one "
        "near it is as good as exact. Skill = 1 − error / error of uniform attention.",
    ]
    exact = df[df["exact"] & df["ok"]].assign(err=pd.to_numeric(df["rel_err"], errors="coerce"))
    spread = (
        exact.dropna(subset=["err"])
        .groupby(["label", "dtype"], sort=True)["err"]
        .agg(["min", "max", "count"])
    )
    measured = [
        f"- `{label}` {dtype}: {fmt_sig(r['min'], 2)} – {fmt_sig(r['max'], 2)} over {int(r['count'])} cases"
        + (f" (floor ~{PRECISION_FLOOR[dtype]:.0e})" if dtype in PRECISION_FLOOR else "")
        for (label, dtype), r in spread.iterrows()
    ]
    if measured:
        lines += ["", "Measured error of the exact configurations (`capabilities.exact`):", ""] + measured
    return lines


def _details(title: str, caption: str, table: str | None) -> list[str]:
    """A folded table: the summary line names it and says how to read it."""
    if not table:
        return []
    return ["", "<details>", f"<summary><b>{title}</b>: {caption}</summary>", "", table, "", "</details>"]


def _perf_sections(rows: pd.DataFrame) -> list[str]:
    """The folded tables of one (dtype, causal, mode, ...) group."""
    t, peak, extra = metric("time_ms_median"), metric("peak_mem_bytes"), metric("extra_mem_bytes")
    methods = sorted({str(m) for m in rows.loc[rows["ok"], "mem_method"] if m})
    measured = f"; measured by {', '.join(methods)}" if methods else ""
    out = _details(
        "Runtime",
        f"{t.header()}; (2.0x) = speedup against the baseline at that length, (base) = the baseline",
        tables.runtime(rows),
    )
    out += _details(
        "Memory",
        f"{peak.header()} / {extra.title} ({extra.shown_unit}); (r× base) = memory above inputs as a "
        f"multiple of the baseline's{measured}",
        tables.memory(rows),
    )
    out += _details(
        "Throughput",
        f"{metric('tflops').header()} from the variant's cost model; {metric('tflops_exact').header()} "
        "from exact attention's FLOPs (comparable across variants); GB/s; × floor = time / roofline floor",
        tables.throughput(rows),
    )
    out += _details(
        "Error and time vs feature dimension D",
        "rel_err · median time at the longest length measured for every D",
        tables.feature_dims(rows),
    )
    out += _details(
        "Efficiency length",
        "where the configuration becomes faster than the baseline (log-log interpolation between lengths)",
        tables.efficiency(rows),
    )
    for header, table in tables.more_metrics(rows):
        out += _details(header, "per configuration and length", table)
    return out


def kernel_section(df: pd.DataFrame, scenario: dict | None, plot_files: dict[str, str]) -> list[str]:
    """The kernel records' part of the report. `plot_files` maps plot keys (`kind:group_slug`,
    `slide`) to paths relative to the run directory."""
    spec = read_report_spec(scenario)
    frame, notes = prepare(df, spec)
    lines = summary(frame, spec)
    if "slide" in plot_files:  # slide.py: skill vs time at the longest N, per input regime
        lines += ["", f"![skill vs time per configuration and input regime]({plot_files['slide']})"]
    lines += regime_lines(plot_files)  # plot_regimes.py: error vs N, one plot per input regime
    legend = "; ".join(x for x in (noise_legend(spec), load_legend(frame)) if x)
    lines += ["", "## Performance by group", "", f"_Click a line to unfold its table. {legend}._"]
    for title, rows in groups(frame, "perf"):
        lines += ["", f"### {title}"]
        slug = rows["perf_slug"].iloc[0]
        links = [
            f"[{PLOT_TITLES[kind]}]({plot_files[f'{kind}:{slug}']})"
            for kind in PLOT_KINDS
            if f"{kind}:{slug}" in plot_files
        ]
        lines += ["", "Plots: " + " · ".join(links)] if links else []
        lines += _perf_sections(rows)
    err, skill = metric("rel_err"), metric("skill")
    lines += [
        "",
        "## Accuracy",
        "",
        "_Accuracy does not depend on the pass: one table per dtype, masking and inputs._",
    ]
    for title, rows in groups(frame, "acc"):
        caption = f"{err.header()} (unfit = before fitting; skill {skill.better} = 1 − error / uniform floor)"
        table = tables.error(rows)
        lines += ["", f"### {title}"] + _details("Error", caption, table) if table else []
    lines += [""] + _accuracy_notes(frame)
    lines += quality_sections(frame)  # kernel cases on captured model attention, when the run has them
    if notes:
        lines += ["", "## Cases that did not finish ok", ""] + notes
    return lines


PLOT_KINDS = ("runtime", "memory", "error_vs_d", "frontier")
PLOT_TITLES = {
    "runtime": "runtime vs N",
    "memory": "peak memory vs N",
    "error_vs_d": "error vs D",
    "frontier": "error vs time",
}
