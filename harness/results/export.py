"""Exports of a run directory in formats other tools read: pytest-benchmark JSON, CSV, parquet.

- `pytest-benchmark`: the JSON that `pytest-benchmark compare` and GitHub's benchmark-tracking
  actions (benchmark-action/github-action-benchmark, `tool: pytest`) read. One benchmark per ok
  case with raw time samples: `name` is the configuration and problem
  (`linear[N=256,fp32,non-causal,fwd]`), `fullname` prefixes the scenario, `group` is the problem
  (`N=256,fp32,non-causal,fwd`: every configuration run on it, `performer[native]` included),
  `stats` are computed by pytest-benchmark's own `Stats` class from the samples (in seconds, as
  pytest-benchmark stores them), so every derived field (iqr, outliers, ops) means what it means
  there. `extra_info` carries the case id, rel_err and memory. Cases that did not finish ok have no
  time and are left out (counted in the returned summary).
- `csv` / `parquet`: every record, flat (`harness.results.records.export_frame`): params, task and
  info only as their `param.<name>`, `task.<key>` and `info.<key>` columns, no JSON text in a cell,
  and only the columns that hold a value in some row (a kernel run has no column of another kind). Lists (raw
  time samples) are list columns in parquet and values joined by ";" in csv.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.common.errors import UserError
from harness.common.files import atomic_path, read_json_file, write_atomic
from harness.results.record_check import record_problem
from harness.results.record_lines import read_records
from harness.results.records import export_frame

FORMATS = ("pytest-benchmark", "csv", "parquet")
EXTRA_KEYS = (
    "case_id", "label", "variant", "impl", "seq_len", "dtype", "causal", "mode", "rel_err", "peak_mem_bytes"
)  # fmt: skip


class ExportError(UserError, ValueError):
    """A run directory that cannot be exported; `str(err)` is one line."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        loaded = read_json_file(path)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable: {' '.join(str(exc).split())}") from exc
    return loaded if isinstance(loaded, dict) else {}


def run_records(run_dir: Path) -> list[dict[str, Any]]:
    """The merged records of a run directory (records.jsonl); ExportError when there are none."""
    path = Path(run_dir) / "records.jsonl"
    if not path.exists():
        raise ExportError(f"{run_dir}: not a run directory (no records.jsonl)")
    try:
        rows = read_records(path, record_problem)  # a malformed line is skipped, with a warning
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable: {' '.join(str(exc).split())}") from exc
    if not rows:
        raise ExportError(f"{path}: no complete records")
    return rows


def problem_name(rec: dict[str, Any]) -> str:
    """`N=256,fp32,causal,fwd`: the problem of a case (every configuration run on it shares it)."""
    causal = "causal" if rec.get("causal") else "non-causal"
    return f"N={rec['seq_len']},{rec['dtype']},{causal},{rec['mode']}"


def case_name(rec: dict[str, Any]) -> str:
    """`label[N=256,fp32,causal,fwd]`: the configuration (a label may carry its impl,
    `performer[native]`) and the problem of a case."""
    return f"{rec['label']}[{problem_name(rec)}]"


def _time_samples(rec: dict[str, Any]) -> list[float]:
    """An ok record's raw time samples, checked: a non-empty list of finite numbers > 0, and its
    median time recorded; anything else is malformed (ExportError naming the field and the case)."""
    case = f"case {str(rec.get('case_id'))[:40]!r}"
    samples = rec.get("time_ms_samples")
    if samples in (None, []):
        return []
    ok = isinstance(samples, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in samples
    )
    if not ok:
        want = "expected a list of finite numbers > 0"
        raise ExportError(f"{case}: field time_ms_samples: {want}, found {samples!r:.60}")
    median = rec.get("time_ms_median")
    if not (isinstance(median, int | float) and not isinstance(median, bool) and math.isfinite(median)):
        raise ExportError(f"{case}: field time_ms_median: expected a finite number, found {median!r:.60}")
    return [float(x) for x in samples]


def _machine_info(env: dict[str, Any]) -> dict[str, Any]:
    """pytest-benchmark's machine_info keys, filled from the run's env.json (plus the rest of it)."""
    info = {
        "node": env.get("hostname", ""),
        "processor": env.get("cpu", ""),
        "machine": env.get("platform", ""),
        "python_implementation": "CPython",
        "python_version": env.get("python", ""),
        "system": env.get("platform", ""),
        "release": "",
        "cpu": {"brand_raw": env.get("cpu", ""), "count": env.get("cpu_count")},
    }
    return info | {f"attnbench_{k}": v for k, v in env.items() if isinstance(v, str | int | float | bool)}


def to_pytest_benchmark(run_dir: Path) -> tuple[dict[str, Any], int]:
    """(the pytest-benchmark JSON document of a run, the number of cases left out: not ok or
    without samples)."""
    from pytest_benchmark import __version__
    from pytest_benchmark.stats import Stats

    run_dir = Path(run_dir)
    rows = run_records(run_dir)
    env, meta = _read_json(run_dir / "env.json"), _read_json(run_dir / "run.json")
    benchmarks, skipped = [], 0
    for rec in rows:
        samples = _time_samples(rec) if rec.get("status") == "ok" else []
        if not samples:
            skipped += 1
            continue
        stats = Stats()
        for ms in samples:
            stats.update(ms / 1e3)
        name = case_name(rec)
        benchmarks.append(
            {
                "group": problem_name(rec),  # `pytest-benchmark compare` groups by it: a problem's peers
                "name": name,
                "fullname": f"{rec.get('scenario', 'attnbench')}::{name}",
                "params": dict(rec.get("params") or {}),
                "param": ",".join(f"{k}={v}" for k, v in sorted((rec.get("params") or {}).items())) or None,
                "extra_info": {k: rec.get(k) for k in EXTRA_KEYS if rec.get(k) is not None},
                "options": {"timer": "perf_counter" if rec.get("device") == "cpu" else "cuda events"},
                "stats": stats.as_dict() | {"data": stats.data, "iterations": 1},
            }
        )
    sha = str(meta.get("git_sha") or env.get("git_sha") or "")
    started = str(meta.get("started_at") or datetime.now(timezone.utc).isoformat())
    doc = {
        "machine_info": _machine_info(env),
        "commit_info": {
            "id": sha,
            "time": started,
            "dirty": bool(env.get("git_dirty")),
            "project": "attnbench",
        },
        "benchmarks": benchmarks,
        "datetime": started,
        "version": __version__,
    }
    return doc, skipped


def export_run(run_dir: Path, fmt: str, out: Path) -> str:
    """Write `run_dir` to `out` in `fmt` (one of FORMATS); returns a one-line summary."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    out = Path(out)
    if fmt == "pytest-benchmark":
        doc, skipped = to_pytest_benchmark(run_dir)
        write_atomic(out, json.dumps(doc, indent=2, default=str) + "\n", follow=True)
        note = f" ({skipped} without a time left out)" if skipped else ""
        return f"{len(doc['benchmarks'])} benchmarks{note} -> {out}"
    df = export_frame(run_records(run_dir))
    with atomic_path(out, follow=True) as tmp:  # a device, FIFO or folder at --out is refused
        if fmt == "csv":  # a list (raw time samples, per-seed accuracy) as its values joined by ";"
            lists = [c for c in df.columns if df[c].map(lambda x: isinstance(x, list)).any()]
            flat = df.assign(**{c: [_joined(x) for x in df[c]] for c in lists})
            flat.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return f"{len(df)} records, {len(df.columns)} columns -> {out}"


def _joined(value: Any) -> Any:
    """A list cell of a csv: its values joined by ";"; other values as they are."""
    return ";".join(str(v) for v in value) if isinstance(value, list) else value
