"""The Markdown verdict report of a comparison: verdict line and counts first, regressions table
first, everything else folded in `<details>` (ready for a pull-request comment)."""

from __future__ import annotations

from typing import Any

from harness.plugins.metrics import Metric, gated_metrics
from harness.regress.compare import (
    AMBIGUOUS,
    IMPROVED,
    MISSING,
    NEW,
    REGRESSED,
    SAME,
    STATUS_CHANGED,
    VERDICTS,
    CaseComparison,
    ComparisonResult,
    Finding,
    VariantTime,
)

SECTION_TITLES = {
    STATUS_CHANGED: "Status changed (not from ok)",
    IMPROVED: "Improved",
    AMBIGUOUS: "Ambiguous (noisy or too few samples; never fails)",
    NEW: "New in head",
    MISSING: "Missing from head",
    SAME: "Same",
}


def _md(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _g(x: float | None, sig: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{sig}g}"


def _time_cell(f: Finding | None) -> str:
    if f is None:
        return "n/a"
    text = "n/a" if f.ratio is None else f"{f.ratio:.3f}×"
    if f.ci is not None:
        text += f" [{f.ci[0]:.3f}, {f.ci[1]:.3f}]"
    if f.verdict != SAME:
        text += f" {f.verdict}"
    return text + ("" if f.gated else " (not gated)")


def _pair_cell(f: Finding | None, m: Metric) -> str:
    if f is None:
        return "n/a"
    text = f"{_g(f.base * m.scale)} → {_g(f.head * m.scale)}"
    return text + (f" ({f.ratio:.3g}×)" if f.ratio is not None and f.verdict != SAME else "")


def _columns(result: ComparisonResult) -> list[Metric]:
    """Gated metrics that get a column: time always; an exact one when some case has a finding
    for it (gate.column "found") or a changed finding ("changed")."""

    def shown(m: Metric) -> bool:
        found = [f for c in result.cases if (f := c.finding(m.name)) is not None]
        return bool(found) and (m.gate.column == "found" or any(f.verdict != SAME for f in found))

    return [m for m in gated_metrics() if m.gate.kind == "samples" or shown(m)]


def _header(m: Metric) -> str:
    unit = f" ({m.shown_unit})" if m.shown_unit else ""
    return f"{m.name} head/base [CI]" if m.gate.kind == "samples" else f"{m.name}{unit} base → head"


def _why(c: CaseComparison) -> str:
    parts = []
    for f in c.findings:
        if f.metric == "status":
            parts.append(f"status {f.base} → {f.head}")
        elif f.verdict != SAME:
            gate = "" if f.gated else " (not gated)"
            parts.append(f"{f.metric} {f.verdict}{gate}" + (f": {f.reason}" if f.reason else ""))
    if c.verdict == NEW:
        parts.append(f"status {c.head_status}")
    elif c.verdict == MISSING:
        parts.append(f"was {c.base_status} in base")
    return "; ".join(parts + c.notes)


def _case_table(cases: list[CaseComparison], columns: list[Metric]) -> str:
    header = ["configuration", "N", "problem", "verdict"] + [_header(m) for m in columns] + ["why"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    key = lambda c: (c.label, c.dtype, c.causal, c.mode, c.seq_len)  # noqa: E731
    for c in sorted(cases, key=key):
        row = [c.label, str(c.seq_len), f"{c.dtype} · {'causal' if c.causal else 'non-causal'} · {c.mode}"]
        row += [c.verdict]
        row += [
            _time_cell(c.finding(m.name)) if m.gate.kind == "samples" else _pair_cell(c.finding(m.name), m)
            for m in columns
        ]
        lines.append("| " + " | ".join(_md(x) for x in row + [_why(c) or "—"]) + " |")
    return "\n".join(lines)


def _variant_table(variants: list[VariantTime]) -> str:
    lines = [
        "| configuration | cases | geomean head/base | min | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for v in sorted(variants, key=lambda v: -v.geomean):
        lines.append(f"| {_md(v.label)} | {v.n} | {v.geomean:.3f}× | {v.lo:.3f}× | {v.hi:.3f}× |")
    return "\n".join(lines)


def _details(summary: str, body: str) -> list[str]:
    return ["", "<details>", f"<summary>{summary}</summary>", "", body, "", "</details>"]


def counts_text(result: ComparisonResult) -> str:
    """`REGRESSED 1 · AMBIGUOUS 3 · SAME 6`: every verdict that some case has, in VERDICTS order."""
    counts = result.counts
    return " · ".join(f"{v} {counts[v]}" for v in VERDICTS if counts[v]) or "no cases"


def verdict_line(result: ComparisonResult) -> str:
    """First line of the report: the run's verdict from confirmed findings (a shared shift is one
    finding; AMBIGUOUS heads it only when no change was confirmed and some case is undecided; SAME
    only when compared cases were SAME), then the count of each verdict present."""
    counts = result.counts
    n_reg = len(result.regressions)
    compared = sum(counts[v] for v in VERDICTS if v not in (NEW, MISSING))
    shift = result.shift
    if not n_reg and result.nothing_compared:  # exit 2: a gate against a wrong baseline must not pass
        head = f"**NOTHING COMPARED**: {result.nothing_compared}"
    elif n_reg:
        head = f"**{REGRESSED}**: {n_reg} of {compared} compared cases regressed"
        head += f", and a shared shift: {shift.describe()}" if shift is not None else ""
    elif shift is not None:
        head = f"**{result.verdict}**: one shift shared by most cases: {shift.describe()}"
    elif counts[IMPROVED]:
        head = f"**{IMPROVED}**: {counts[IMPROVED]} of {compared} compared cases improved, none regressed"
    elif result.verdict == AMBIGUOUS:
        head = (
            f"**{AMBIGUOUS}**: {counts[AMBIGUOUS]} of {compared} compared cases undecided "
            f"(the evidence does not reach a verdict), none regressed"
        )
    else:
        head = f"**{result.verdict}**: no change in {compared} compared cases"
    return f"{head} · {counts_text(result)}"


def _undecided_note(result: ComparisonResult) -> str:
    """What to do about AMBIGUOUS cases: `ab` decides them (its rounds are interleaved); in an `ab`
    result, how many rounds were run and that the cap was reached."""
    if not result.undecided:
        return ""
    if result.rounds:
        return (
            f" {len(result.undecided)} case(s) still undecided after {result.rounds} interleaved rounds "
            "per side (the cap): their changes are below what this machine's noise lets a verdict reach."
        )
    return (
        f" {len(result.undecided)} case(s) undecided between these two runs: `run_bench.py ab` interleaves "
        "the revisions in rounds until each case is decided."
    )


def render_verdict_markdown(result: ComparisonResult) -> str:
    """Markdown for a pull-request comment: verdict line and counts, regressions, then details."""
    timed = ", ".join(m.name for m in gated_metrics() if m.gate.kind == "samples") or "time"
    time_rule = (
        f"{timed}: median ratio beyond ±{result.threshold:.0%}, its {1 - result.alpha:.0%} bootstrap CI "
        f"beyond ±{result.threshold / 2:.1%} (rounds resampled when runs were interleaved) and Mann-Whitney "
        f"p < {result.alpha:g}, on head times divided by the canary ratio"
        + ("" if result.gate_time else " (reported, not gated)")
    )
    gates = "; ".join(
        f"{m.name} regresses {m.gate_rule()}" for m in gated_metrics() if m.gate.kind == "exact"
    )
    lines = [
        verdict_line(result),
        "",
        f"base `{result.base.run_id}` → head `{result.head.run_id}` · {time_rule}; {gates}; "
        "a status that leaves ok counts as a regression",
        "",
        f"A time change is confirmed when it holds with the canary's correction at the end of its range "
        f"least favourable to it and clears ±{result.threshold:.0%} by more than the cases' noise between "
        "the runs; otherwise it is AMBIGUOUS, which never fails." + _undecided_note(result),
        "",
        f"Drift: {_md(result.drift.describe())}",
    ]
    lines += [""] + [f"> **Warning:** {_md(w)}" for w in result.env_warnings] if result.env_warnings else []
    columns = _columns(result)
    regs = result.regressions
    lines += ["", f"### Regressions ({len(regs)})", ""]
    lines.append(_case_table(regs, columns) if regs else "None.")
    if result.variants:
        lines += _details(
            f"Time by configuration: geometric mean of head/base median time ({len(result.variants)})",
            _variant_table(result.variants),
        )
    for verdict, title in SECTION_TITLES.items():
        cases = [c for c in result.by_verdict(verdict) if not c.is_regression]
        if cases:
            lines += _details(f"{title} ({len(cases)})", _case_table(cases, columns))
    return "\n".join(lines)
