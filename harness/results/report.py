"""Markdown report of one run directory: a summary to act on first, then per-group tables folded
in `<details>`, the accuracy tables once per (dtype, causal, inputs), plots and footnotes.

Knows no variant by name: the exact reference is any configuration whose variant class has
`capabilities.exact`, and the speed baseline is the scenario's `report.baseline` or the fastest
exact configuration at each length (`harness.results.frame`). Cells of cases that did not finish
ok carry their status and a footnote with the reason, never a blank.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.measure.metrics import ReportSpec, metric
from harness.measure.safe_files import read_json_file, write_atomic
from harness.results import tables
from harness.results.frame import groups, load_legend, noise_legend, prepare
from harness.results.mqar_report import is_mqar, mqar_plot, mqar_section
from harness.results.quality_report import e2e_section, is_e2e, quality_sections
from harness.results.record_check import record_problem
from harness.results.records import read_records, to_dataframe
from harness.results.rows import fmt_sig, md_cell
from harness.results.spec import read_report_spec
from harness.results.summary import summary

PRECISION_FLOOR = {"bf16": 6e-3, "fp16": 8e-4}  # exact attention vs fp64 (VARIANTS.md)
ENV_FACTS = (("cuda", "CUDA {}"), ("torch", "torch {}"), ("threads", "{} threads"), ("git_sha", "git {:.10}"))


def _environments(df: pd.DataFrame, envs: dict[str, dict]) -> list[str]:
    """One line per environment (`envs/<env_id>.json`) when the run has more than one: the run was
    resumed elsewhere or spread over workers, and each record's `env_id` says where it ran."""
    counts = df["env_id"].value_counts().to_dict() if "env_id" in df else {}
    if any(counts.get(ident) for ident in envs):  # only those records ran in (not an idle parent's)
        envs = {ident: e for ident, e in envs.items() if counts.get(ident)}
    if len(envs) < 2:
        return []
    lines = [f"**Environments:** {len(envs)} (each record's `env_id` names its own)", ""]
    for ident, e in sorted(envs.items(), key=lambda kv: -counts.get(kv[0], 0)):
        device = f"GPU {e['gpu']}" if e.get("gpu") else f"CPU {e.get('cpu') or 'unknown'}"
        facts = [f"host {e.get('hostname') or '?'}", device]
        facts += [text.format(e[k]) for k, text in ENV_FACTS if e.get(k) is not None]
        lines.append(f"- `{ident}`: {md_cell(' · '.join(facts))} — {counts.get(ident, 0)} cases")
    return lines + [""]


def _header(df, env: dict, scenario: dict | None, run: dict | None, envs: dict | None = None) -> list[str]:
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
    lines += _environments(df, envs or {})
    lines.append(f"**Cases:** {len(df)} — " + ", ".join(f"{s} {c}" for s, c in sorted(counts.items())))
    return lines


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


def render_report(
    df: pd.DataFrame,
    env: dict,
    scenario: dict | None,
    plot_files: dict,
    run: dict | None = None,
    envs: dict[str, dict] | None = None,
) -> str:
    """The Markdown report. `plot_files` maps plot keys (`kind:group_slug`) to relative paths;
    `envs` maps env_id to the fingerprints of `envs/` (listed when there are several)."""
    spec: ReportSpec = read_report_spec(scenario)
    lines = _header(df, env or {}, scenario, run, envs)
    mqar = is_mqar(df)
    if mqar.any():  # trained-task records: their own section; the kernel sections get the rest
        lines += [""] + mqar_section(df[mqar], scenario, plot_files)
        df = df[~mqar]
    e2e = is_e2e(df, scenario)
    if e2e.any():  # post-hoc swap records (kind e2e): their own section, nothing timed
        lines += [""] + e2e_section(prepare(df[e2e], spec)[0])
        df = df[~e2e]
    if not len(df):
        return "\n".join(lines) + "\n"
    frame, notes = prepare(df, spec)
    lines += [""] + summary(frame, spec)
    if "slide" in plot_files:  # results/slide.py: skill vs time at the longest N, per input regime
        lines += ["", f"![skill vs time per configuration and input regime]({plot_files['slide']})"]
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
    return "\n".join(lines) + "\n"


PLOT_KINDS = ("runtime", "memory", "error_vs_d", "frontier")
PLOT_TITLES = {
    "runtime": "runtime vs N",
    "memory": "peak memory vs N",
    "error_vs_d": "error vs D",
    "frontier": "error vs time",
}


def _read_json(path: Path) -> dict:
    """The JSON object in `path`; {} when absent or unreadable (a FIFO or device: UnsafePathError)."""
    try:
        data = read_json_file(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _main_env(df: pd.DataFrame, envs: dict[str, dict]) -> dict:
    """The environment most records ran in: the header's machine (env.json for runs without envs/)."""
    if not envs:
        return {}
    counts = df["env_id"].value_counts().to_dict() if len(df) and "env_id" in df else {}
    return envs[max(envs, key=lambda ident: counts.get(ident, 0))]


def write_report(run_dir: Path, plots: bool = True) -> Path:
    """Write run_dir/report.md (and PNGs under run_dir/plots/) from records.jsonl; return its path."""
    run_dir = Path(run_dir)
    df = to_dataframe(read_records(run_dir / "records.jsonl", record_problem))
    plot_files: dict[str, str] = {}
    if plots and len(df):
        from harness.results.plots import make_plots

        made = make_plots(df[~is_mqar(df)], run_dir / "plots") | mqar_plot(df, run_dir / "plots")
        plot_files = {k: p.relative_to(run_dir).as_posix() for k, p in made.items()}
    envs = {p.stem: _read_json(p) for p in sorted((run_dir / "envs").glob("*.json"))}
    env = _main_env(df, envs) or _read_json(run_dir / "env.json")  # env.json: runs before envs/
    roofline = _read_json(run_dir / "roofline.json")
    if roofline:
        env = {**env, "roofline": roofline}
    text = render_report(
        df,
        env,
        _read_json(run_dir / "scenario.json") or None,
        plot_files,
        run=_read_json(run_dir / "run.json"),
        envs=envs,
    )
    out = run_dir / "report.md"
    write_atomic(out, text)  # temp file renamed over it: never torn, never through a planted link
    return out
