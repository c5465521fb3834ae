"""Markdown report of one run directory: tables per (dtype, causal, mode) group, plots, footnotes.

Knows no variant except the two references: `flash` (speed) and `softmax` (exactness). Cells of
cases that did not finish ok carry their status and a footnote with the reason, never a blank.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.measure.stats import loglog_crossover
from harness.results.records import read_records, to_dataframe
from harness.results.rows import (  # the row helpers, shared with plots.py
    MIB,
    NOISY,
    PRECISION_FLOOR,
    STATUS_TEXT,
    Row,
    cells_by_label,
    feature_dim_rows,
    flash_reference,
    fmt_sig,
    fmt_x,
    group_slug,
    group_title,
    iter_groups,
    lengths_of,
    md_cell,
    num,
    ordered_labels,
)


class Footnotes:
    """Status markers like `OOM[^2]`; identical (status, reason) pairs share one footnote."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}

    def mark(self, row: Row) -> str:
        status, reason = str(row["status"]), md_cell(row.get("reason") or "no reason recorded")
        if len(reason) > 400:
            reason = reason[:400] + " …"
        n = self._ids.setdefault((status, reason), len(self._ids) + 1)
        return f"{STATUS_TEXT.get(status, status)}[^{n}]"

    def render(self) -> str:
        return "\n".join(f"[^{n}]: {status}: {reason}" for (status, reason), n in self._ids.items())


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in body:
        lines.append("| " + " | ".join(md_cell(c) if i == 0 else c for i, c in enumerate(row)) + " |")
    return "\n".join(lines)


def _grid(
    rows: list[Row], fn: Footnotes, cell: Callable[[Row], str | None], first: str, always: bool = False
) -> str | None:
    """Label x seq_len table; `cell(ok_record)` gives text or None (no data).

    Returns None when no ok record has data, unless `always` (then status-only tables show too).
    """
    lengths, at = lengths_of(rows), cells_by_label(rows)
    body, filled = [], always
    for label in ordered_labels(rows):
        if not always and not any(r["status"] == "ok" for r in rows if r["label"] == label):
            continue  # all-failed configurations are shown (with reasons) in the runtime table
        line = [label]
        for n in lengths:
            r = at.get((label, n))
            if r is None:
                line.append("—")
            elif r["status"] != "ok":
                line.append(fn.mark(r))
            else:
                text = cell(r)
                filled |= text is not None
                line.append(text if text is not None else "n/a")
        body.append(line)
    return _table([first] + [f"N={n}" for n in lengths], body) if filled else None


# ----- tables ---------------------------------------------------------------------------------
def runtime_table(rows: list[Row], fn: Footnotes) -> str | None:
    ref = flash_reference(rows)

    def cell(r: Row) -> str | None:
        t = num(r["time_ms_median"])
        if t is None:
            return None
        f = ref.get(int(r["seq_len"]))
        notes = [fmt_x(num(f["time_ms_median"]) / t)] if f is not None and f is not r and t > 0 else []
        notes += ["noisy"] if (num(r["noise"]) or 0.0) > NOISY else []
        return f"{fmt_sig(t)} ms" + (f" ({', '.join(notes)})" if notes else "")

    return _grid(rows, fn, cell, "configuration", always=True)


def memory_table(rows: list[Row], fn: Footnotes) -> str | None:
    ref = flash_reference(rows)

    def cell(r: Row) -> str | None:
        peak, extra = num(r["peak_mem_bytes"]), num(r["extra_mem_bytes"])
        if peak is None and extra is None:
            return None
        text = " / ".join("n/a" if v is None else fmt_sig(v / MIB) for v in (peak, extra))
        f = ref.get(int(r["seq_len"]))
        f_extra = num(f["extra_mem_bytes"]) if f is not None else None
        if f is not None and f is not r and extra is not None and f_extra:
            text += f" ({fmt_sig(extra / f_extra, 2)}×flash)"
        return text

    return _grid(rows, fn, cell, "configuration")


def error_table(rows: list[Row], fn: Footnotes) -> str | None:
    def cell(r: Row) -> str | None:
        err = num(r["rel_err"])
        if err is None:
            return None
        extras = []
        if num(r["unfitted_rel_err"]) is not None:
            extras.append(f"unfit {fmt_sig(num(r['unfitted_rel_err']), 2)}")
        if num(r["skill"]) is not None:
            extras.append(f"skill {num(r['skill']):.2f}")
        return fmt_sig(err, 2) + (f" ({'; '.join(extras)})" if extras else "")

    table = _grid(rows, fn, cell, "configuration")
    if table is None:
        return None
    for title, col in (
        ("uniform attention (floor)", "uniform_rel_err"),
        ("input entropy (nats)", "softmax_entropy"),
    ):
        line = [title]
        for n in lengths_of(rows):
            vals = sorted(v for r in rows if int(r["seq_len"]) == n and (v := num(r[col])) is not None)
            line.append(fmt_sig(vals[len(vals) // 2], 3) if vals else "n/a")
        table += "\n| " + " | ".join(line) + " |"
    return table


def feature_dim_table(rows: list[Row], fn: Footnotes) -> str | None:
    """Per approximate variant with several D: rel_err · time per D at the longest common length."""
    tables = []
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for fr in feature_dim_rows(rows):
        if any(r["status"] == "ok" for r in fr["cells"].values()):
            by_variant.setdefault(fr["variant"], []).append(fr)
    for frs in by_variant.values():
        dims = sorted({d for fr in frs for d in fr["cells"]})
        body = []
        for fr in frs:
            line = [fr["name"], str(fr["seq_len"])]
            for d in dims:
                r = fr["cells"].get(d)
                if r is None:
                    line.append("—")
                elif r["status"] != "ok":
                    line.append(fn.mark(r))
                else:
                    err, t = num(r["rel_err"]), num(r["time_ms_median"])
                    err_s = "n/a" if err is None else fmt_sig(err, 2)
                    line.append(f"{err_s} · {'n/a' if t is None else fmt_sig(t)} ms")
            body.append(line)
        tables.append(_table(["variant", "N"] + [f"D={d}" for d in dims], body))
    return "\n\n".join(tables) or None


def throughput_table(rows: list[Row], fn: Footnotes) -> str | None:
    def cell(r: Row) -> str | None:
        t = num(r["time_ms_median"])
        tflops, gbps = num(r["tflops"]), num(r["gbps"])
        if tflops is None and t and num(r["flops"]) is not None:
            tflops = num(r["flops"]) / (t * 1e-3) / 1e12
        if gbps is None and t and num(r["bytes_moved"]) is not None:
            gbps = num(r["bytes_moved"]) / (t * 1e-3) / 1e9
        if tflops is None and gbps is None:
            return None
        text = " · ".join(
            "n/a" if v is None else f"{fmt_sig(v)} {u}" for v, u in ((tflops, "TFLOP/s"), (gbps, "GB/s"))
        )
        over = num(r.get("time_over_floor"))
        return text if over is None else f"{text} · {fmt_sig(over)}× floor"

    return _grid(rows, fn, cell, "configuration")


def efficiency_table(rows: list[Row]) -> str | None:
    """Sequence length from which each configuration is faster than flash (log-log interpolation)."""
    ref = flash_reference(rows)
    if not ref:
        return None
    ref_ids = {id(r) for r in ref.values()}
    at = cells_by_label(rows)
    body = []
    for label in ordered_labels(rows):
        pts = [
            (n, num(r["time_ms_median"]) / num(ref[n]["time_ms_median"]))
            for n in sorted(ref)
            if (r := at.get((label, n))) is not None
            and r["status"] == "ok"
            and num(r["time_ms_median"])
            and id(r) not in ref_ids
        ]
        if not pts:
            continue
        c = loglog_crossover([n for n, _ in pts], [x for _, x in pts])
        if c.kind == "between":
            text = f"≈ {round(c.length):,} (between {c.lo:,} and {c.hi:,})"
        elif c.kind == "always":
            text = f"faster at every measured length (from N={c.hi:,} or below)"
        else:
            text = f"never in range (still slower at N={c.lo:,})"
        body.append([label, text])
    return _table(["configuration", "faster than flash from N"], body) if body else None


# ----- the document ---------------------------------------------------------------------------
def _header(df, env: dict, scenario: dict | None, run: dict | None) -> list[str]:
    scenario, run = scenario or {}, run or {}
    name = scenario.get("name") or (df["scenario"].iloc[0] if len(df) else "?")
    version = scenario.get("version") or (df["scenario_version"].iloc[0] if len(df) else "?")
    run_id = run.get("run_id") or (df["run_id"].iloc[0] if len(df) else "?")
    started = run.get("started_at") or (
        min(s for s in df["started_at"] if s) if len(df) and any(df["started_at"]) else "?"
    )
    lines = [f"# attnbench report: {name} (v{version})", ""]
    if scenario.get("description"):
        lines += [f"_{md_cell(scenario['description'])}_", ""]
    lines.append(f"Run `{run_id}` · started {started}")
    devices = sorted({str(d) for d in df["device"]}) if len(df) else []
    device = [f"**Device:** {', '.join(devices)}"] if devices else []
    if env.get("gpu"):
        count = f"{env['gpu_count']}× " if (env.get("gpu_count") or 1) > 1 else ""
        facts = [f"**GPU:** {count}{env['gpu']}", f"driver {env.get('gpu_driver') or 'unknown'}"]
        facts.append(f"CUDA {env.get('cuda') or 'unknown'}")
        if env.get("cpu"):
            facts.append(f"host CPU {env['cpu']}")
    else:
        facts = [f"**CPU:** {env.get('cpu') or 'unknown machine'}", "no GPU"]
    for key, text in (("torch", "torch {}"), ("python", "Python {}"), ("threads", "{} threads")):
        if env.get(key) is not None:
            facts.append(text.format(env[key]))
    sha = env.get("git_sha") or (df["git_sha"].iloc[0] if len(df) else "")
    facts.append(
        f"git {str(sha)[:10]}" + (" (dirty)" if env.get("git_dirty") else "") if sha else "git sha unknown"
    )
    lines += ["", " · ".join(device + facts), ""]
    roof = env.get("roofline") or {}
    if roof.get("copy_gbps"):
        rates = ", ".join(
            f"{d} {fmt_sig(r)} TFLOP/s" for d, r in sorted(roof.get("matmul_tflops", {}).items())
        )
        lines += [
            f"**Measured roofline:** copy {fmt_sig(roof['copy_gbps'])} GB/s · GEMM {rates or 'n/a'} "
            "(a case's floor = max(bytes / copy rate, FLOPs / GEMM rate))",
            "",
        ]
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    lines.append(f"**Cases:** {len(df)} — " + ", ".join(f"{s} {c}" for s, c in sorted(counts.items())))
    return lines


def _accuracy_notes(df) -> list[str]:
    lines = [
        "## Accuracy notes",
        "",
        "Errors are relative Frobenius errors of the output against exact softmax attention computed in "
        "fp32/fp64 on sampled query rows. Exact attention itself has a precision floor against fp64 of "
        "about 6e-3 in bf16 and 8e-4 in fp16: an approximate variant cannot look better than that, and one "
        "near it is as good as exact. Skill = 1 − error / error of uniform attention.",
    ]
    exact = df[(df["variant"].isin(["softmax", "flash"])) & (df["status"] == "ok")] if len(df) else df
    measured = []
    for (label, dtype), g in exact.groupby(["label", "dtype"], sort=True) if len(exact) else []:
        errs = [v for v in map(num, g["rel_err"]) if v is not None]
        if errs:
            floor = f" (floor ~{PRECISION_FLOOR[dtype]:.0e})" if dtype in PRECISION_FLOOR else ""
            measured.append(
                f"- `{label}` {dtype}: {fmt_sig(min(errs), 2)} – {fmt_sig(max(errs), 2)} over "
                f"{len(errs)} cases{floor}"
            )
    if measured:
        lines += ["", "Measured error of the exact references:", ""] + measured
    return lines


def _sections(rows: list[Row], fn: Footnotes) -> list[tuple[str, str, str | None]]:
    """(title, caption, table or None) of one group, in reading order."""
    methods = sorted({str(r["mem_method"]) for r in rows if r["status"] == "ok" and r.get("mem_method")})
    measured = f"; measured by {', '.join(methods)}" if methods else ""
    return [
        (
            "Runtime",
            "median ms per call; (Nx) = speedup vs flash at that length, <1x = slower; "
            f"noisy = IQR/median above {NOISY:.0%}",
            runtime_table(rows, fn),
        ),
        (
            "Memory",
            f"peak / above-inputs MiB; (r×flash) = above-inputs memory ÷ flash's{measured}",
            memory_table(rows, fn),
        ),
        (
            "Error",
            "relative error vs exact softmax (unfit = before fitting; skill = 1 − error / uniform floor)",
            error_table(rows, fn),
        ),
        (
            "Error and time vs feature dimension D",
            "rel_err · median time at the longest length measured for every D",
            feature_dim_table(rows, fn),
        ),
        (
            "Throughput",
            "cost-model FLOPs and bytes over the median time; × floor = median time / roofline floor",
            throughput_table(rows, fn),
        ),
        (
            "Efficiency length",
            "where the configuration becomes faster than flash (log-log interpolation between lengths)",
            efficiency_table(rows),
        ),
    ]


def render_report(df, env: dict, scenario: dict | None, plot_files: dict, run: dict | None = None) -> str:
    """The Markdown report. `plot_files` maps plot keys (`kind:group_slug`) to relative paths."""
    fn = Footnotes()
    lines = _header(df, env or {}, scenario, run)
    for key, rows in iter_groups(df):
        lines += ["", f"## {group_title(key)}"]
        slug = group_slug(key)
        links = [
            f"[{PLOT_TITLES[kind]}]({plot_files[f'{kind}:{slug}']})"
            for kind in PLOT_KINDS
            if f"{kind}:{slug}" in plot_files
        ]
        if links:
            lines += ["", "Plots: " + " · ".join(links)]
        for title, caption, table in _sections(rows, fn):
            if table:
                lines += ["", f"### {title}", "", f"_{caption}_", "", table]
    lines += [""] + _accuracy_notes(df)
    notes = fn.render()
    if notes:
        lines += ["", "## Cases that did not finish ok", "", notes]
    return "\n".join(lines) + "\n"


PLOT_KINDS = ("runtime", "memory", "error_vs_d", "frontier")
PLOT_TITLES = {
    "runtime": "runtime vs N",
    "memory": "peak memory vs N",
    "error_vs_d": "error vs D",
    "frontier": "error vs time",
}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_report(run_dir: Path, plots: bool = True) -> Path:
    """Write run_dir/report.md (and PNGs under run_dir/plots/) from records.jsonl; return its path."""
    run_dir = Path(run_dir)
    df = to_dataframe(read_records(run_dir / "records.jsonl"))
    plot_files: dict[str, str] = {}
    if plots and len(df):
        from harness.results.plots import make_plots

        made = make_plots(df, run_dir / "plots")
        plot_files = {k: p.relative_to(run_dir).as_posix() for k, p in made.items()}
    env = _read_json(run_dir / "env.json")
    roofline = _read_json(run_dir / "roofline.json")
    if roofline:
        env = {**env, "roofline": roofline}
    text = render_report(
        df,
        env,
        _read_json(run_dir / "scenario.json") or None,
        plot_files,
        run=_read_json(run_dir / "run.json"),
    )
    out = run_dir / "report.md"
    out.write_text(text, encoding="utf-8")
    return out
