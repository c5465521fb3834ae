"""report.md of one run directory: the run's header (scenario, machine, environments, case counts),
then one section per benchmark kind in the run, written by the kind itself
(`BenchmarkKind.report_section`, plots from `BenchmarkKind.plots`). Knows no kind by name: a kind
that is not installed where the report is written still gets its records shown, every metric
they carry in a generic table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.common.files import read_json_file, write_atomic
from harness.common.numbers import fmt_sig
from harness.plugins.kinds import BenchmarkKind, installed_kind
from harness.plugins.metrics import METRICS
from harness.results.markdown import md_cell, md_table
from harness.results.record_check import record_problem
from harness.results.record_lines import read_records
from harness.results.records import FIELDS, to_dataframe

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


def _kinds_in(df: pd.DataFrame) -> list[str]:
    """The kinds of the run's records, in the order their first record appears."""
    return list(dict.fromkeys(str(k) for k in df["kind"])) if len(df) else []


def _kind(name: str) -> BenchmarkKind | None:
    """An instance of kind `name`, or None when it is not installed here."""
    cls = installed_kind(name)
    return cls() if cls is not None else None


def generic_section(df: pd.DataFrame, kind: str) -> list[str]:
    """The records of a kind this checkout cannot present (not installed, or no section of its
    own): one row per case with its status and every metric it carries, nothing dropped."""
    fixed = set(FIELDS) | {"ok", "params_str"}
    shown = [c for c in df.columns if c not in fixed and not str(c).startswith(("param.", "info.", "task."))]
    shown = [c for c in shown if df[c].notna().any()]
    lines = [f"## Kind `{kind}`", ""]
    if _kind(kind) is None:
        lines += [f"_The kind `{kind}` is not installed here: its records are shown as recorded._", ""]
    keys = _task_keys(df)
    header = ["configuration", "N", *(f"task.{k}" for k in keys), "status", *shown]
    rows = []
    for _, r in df.iterrows():
        task = r.get("task") if isinstance(r.get("task"), dict) else {}
        cells = [str(r["label"]), str(r["seq_len"]), *(str(task.get(k, "")) for k in keys)]
        cells.append(str(r["status"]) + (f": {str(r['reason'])[:80]}" if r["status"] != "ok" else ""))
        cells += [_value(c, r[c]) for c in shown]
        rows.append(cells)
    return lines + md_table(header, rows)


def _task_keys(df: pd.DataFrame) -> list[str]:
    """Task options that vary across the records (the task point)."""
    tasks = [t for t in (df["task"] if "task" in df else []) if isinstance(t, dict)]
    keys = list(dict.fromkeys(k for t in tasks for k in t))
    return [k for k in keys if len({json.dumps(t.get(k), default=str) for t in tasks}) > 1]


def _value(name: str, value: object) -> str:
    """A metric value for a table: formatted by its metric when known here, else as recorded."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if name in METRICS:
        return METRICS.get(name).format(value)
    return fmt_sig(value, 3) if isinstance(value, float) else str(value)


def render_report(
    df: pd.DataFrame,
    env: dict,
    scenario: dict | None,
    plot_files: dict,
    run: dict | None = None,
    envs: dict[str, dict] | None = None,
) -> str:
    """The Markdown report: the run's header, then each kind's section for its records (in the
    order the kinds first appear), or the generic table for a kind without one here. `plot_files`
    maps plot keys to relative paths; `envs` maps env_id to the fingerprints of `envs/`."""
    lines = _header(df, env or {}, scenario, run, envs)
    for name in _kinds_in(df):
        rows = df[df["kind"] == name]
        kind = _kind(name)
        section = kind.report_section(rows, scenario, plot_files) if kind is not None else []
        lines += [""] + (section or generic_section(rows, name))
    return "\n".join(lines) + "\n"


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
        made: dict[str, Path] = {}
        for name in _kinds_in(df):
            kind = _kind(name)
            made.update(kind.plots(df[df["kind"] == name], run_dir / "plots") if kind is not None else {})
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
