"""History across commits: a store of runs' per-case results, as a partitioned parquet dataset.

`history add RUN_DIR --store DIR` writes one parquet file per run,
`DIR/machine=<machine>/run-<run_id>.parquet` (hive partitioning: `pyarrow.dataset` and DuckDB
read the folder as one table): the run's commit, machine and times, its canary (the median of
each workload over the run's canary points, and their spread), where its report is, and per case
its identity, its noise (IQR / median of its samples, and how many) and every gated metric the
run's records carry (`runs.gated_metrics_for`) besides the columns history always has (`COLUMNS`).
Adding the same run again replaces its file, so `add` is idempotent. Points are ordered by commit
time, then run time; a commit run several times gives several points (`history check` sees them
as repeats).

The store owns its folder: `load_store` reads only `machine=*/run-*.parquet` (anything else there,
plots or notes, is ignored) and names a file of that pattern it cannot read, or one without the
store's columns, in one line (HistoryError, exit 2). Nothing else writes inside it.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from harness.common.errors import UserError
from harness.common.files import atomic_path, ensure_dir
from harness.measure.canary import WORKLOADS, read_canary
from harness.regress.drift import fast_time
from harness.regress.runs import CompareInputError, gated_metrics_for, load_run

CASE_KEYS = ("case_id", "label", "variant", "impl", "seq_len", "dtype", "causal", "mode", "device")
METRICS = (
    "time_ms_median", "time_ms_p20", "time_ms_p80", "time_ms_fast", "n_samples", "noise", "peak_mem_bytes",
    "rel_err",
)  # fmt: skip
# time_ms_fast: the fastest tenth of the case's raw samples (regress/drift.py `fast_time`), what
# `history check` judges time on: load only ever adds time to a sample, so the fastest samples move
# with the code and far less with the machine's load than the median does
RUN_KEYS = (
    "run_id", "commit", "commit_time", "run_time", "added_at", "machine", "host", "scenario", "run_dir",
    "report_url",
)  # fmt: skip
CANARY = (*(f"canary_{w}" for w in WORKLOADS), "canary_points", "canary_spread")
COLUMNS = (*RUN_KEYS, *CASE_KEYS, "params", "status", *METRICS, *CANARY)
# the columns every file of the store has
REQUIRED = ("run_id", "commit", "commit_time", "run_time", *CASE_KEYS, "status")
STORE_GLOB = "machine=*/run-*.parquet"


class HistoryError(UserError, ValueError):
    """Bad input to `history` (no store, unreadable run): one line, exit 2."""


def slug(text: str) -> str:
    """A file-name-safe name: runs of other characters become `_`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unknown"


def machine_of(env: dict[str, Any]) -> str:
    """The machine a run's times belong to: the GPU model when it ran on one, else the CPU model,
    with the thread count (runs on the same hardware compare; host names of CI runners do not)."""
    hardware = str(env.get("gpu") or env.get("cpu") or "unknown")
    return slug(f"{hardware}-{env.get('threads', '?')}t")


def commit_time(sha: str, repo: Path | None = None) -> str:
    """The committer time of `sha` (ISO 8601) from git, or "" when git cannot tell."""
    if not sha:
        return ""
    res = subprocess.run(
        ["git", "show", "-s", "--format=%cI", sha], cwd=repo, capture_output=True, text=True, check=False
    )
    return res.stdout.strip() if res.returncode == 0 else ""


def canary_summary(run_dir: Path) -> dict[str, float | None]:
    """The run's canary as the store keeps it: each workload's median over the run's points, how
    many points, and their spread (the robust standard deviation of the points' log speed index)."""
    import numpy as np

    points = read_canary(Path(run_dir))
    out: dict[str, float | None] = dict.fromkeys(CANARY)
    if not points:
        return out
    meds = {w: float(np.median([p[w] for p in points])) for w in WORKLOADS}
    index = [float(np.mean([np.log(p[w] / meds[w]) for w in WORKLOADS])) for p in points]
    out.update({f"canary_{w}": meds[w] for w in WORKLOADS})
    out["canary_points"] = float(len(points))
    out["canary_spread"] = 1.4826 * float(np.median(np.abs(np.asarray(index) - np.median(index))))
    return out


def run_frame(
    run_dir: Path, commit: str | None = None, machine: str | None = None, report_url: str | None = None
) -> pd.DataFrame:
    """One row per case of a run directory, in the store's schema (COLUMNS plus every gated metric
    the records carry). report_url: where the run's report is published (default: none; `publish`
    then copies RUN_DIR/report.md when it still exists)."""
    try:
        run = load_run(Path(run_dir))
    except CompareInputError as exc:
        raise HistoryError(str(exc)) from exc
    meta_path = Path(run_dir) / "run.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    sha = commit or str(meta.get("git_sha") or run.env.get("git_sha") or "")
    run_keys = {
        "run_id": run.run_id,
        "commit": sha,
        "commit_time": commit_time(sha),
        "run_time": str(meta.get("started_at") or ""),
        "added_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine or machine_of(run.env),
        "host": str(run.env.get("hostname") or ""),
        "scenario": str(meta.get("scenario_name") or ""),
        "run_dir": str(Path(run_dir).resolve()),
        "report_url": report_url or "",
        **canary_summary(Path(run_dir)),
    }
    gated = [m.name for m in gated_metrics_for(run.records.values()) if m.name not in METRICS]
    rows = []
    for rec in run.records.values():
        row = dict(run_keys)
        row.update({k: rec.get(k) for k in (*CASE_KEYS, "status", *METRICS, *gated)})
        row["time_ms_fast"] = fast_time(rec.get("time_ms_samples"))
        row["params"] = json.dumps(rec.get("params") or {}, sort_keys=True, default=str)
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*COLUMNS, *gated])
    for col in (*METRICS, *CANARY, *gated):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in (*RUN_KEYS, "case_id", "label", "variant", "impl", "dtype", "mode", "device", "status"):
        df[col] = df[col].fillna("").astype(str)  # one schema in every file of the dataset
    return df.astype({"seq_len": "int64", "causal": "bool"})


def add_frame(store: Path, df: pd.DataFrame) -> Path:
    """Write one run's rows (run_frame) into the store; replaces an earlier add of the same run."""
    machine, run_id = str(df["machine"].iloc[0]), str(df["run_id"].iloc[0])
    folder = ensure_dir(Path(store) / f"machine={machine}")
    path = folder / f"run-{slug(run_id)}.parquet"
    with atomic_path(path) as tmp:
        df.drop(columns=["machine"]).to_parquet(tmp, index=False)
    return path


def add_run(
    run_dir: Path,
    store: Path,
    commit: str | None = None,
    machine: str | None = None,
    report_url: str | None = None,
) -> str:
    """`history add`: append a run's records to the store; returns a one-line summary."""
    df = run_frame(run_dir, commit, machine, report_url)
    path = add_frame(store, df)
    sha = str(df["commit"].iloc[0])[:12] or "no commit"
    return f"{len(df)} cases of run {df['run_id'].iloc[0]} ({sha}) -> {path}"


def _read_file(path: Path) -> pd.DataFrame:
    """One run file of the store, checked: readable parquet with the store's columns."""
    import pyarrow.parquet as pq

    try:
        df = pq.read_table(path).to_pandas()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        why = " ".join(str(exc).split())[:160]
        raise HistoryError(f"{path}: not a readable history file ({why}); move it out of the store") from exc
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise HistoryError(
            f"{path}: not a history file of this store (no column {', '.join(missing[:4])}); move it out"
        )
    return df


def load_store(store: Path, machine: str | None = None) -> pd.DataFrame:
    """Every row of the store (one machine's when `machine` is given), ordered by commit time,
    run time and run id, with `point`: the run's position in that order (0, 1, ...). Only
    `machine=*/run-*.parquet` files are read; a corrupt one raises HistoryError naming it."""
    store = Path(store)
    files = sorted(p for p in store.glob(STORE_GLOB) if p.is_file()) if store.is_dir() else []
    if not files:
        raise HistoryError(
            f"{store}: no history store here (add runs with `history add RUN --store {store}`)"
        )
    frames = []
    for path in files:
        df = _read_file(path)
        df["machine"] = path.parent.name.removeprefix("machine=")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    for col in set(COLUMNS) - set(df.columns):  # files added before a column existed
        df[col] = "" if col in RUN_KEYS else float("nan")
    if machine is not None:
        if machine not in set(df["machine"]):
            known = ", ".join(sorted(set(df["machine"])))
            raise HistoryError(f"--machine: {machine!r} is not in {store}; it holds {known}")
        df = df[df["machine"] == machine]
    runs = df.drop_duplicates("run_id").copy()
    when = runs["commit_time"].where(runs["commit_time"] != "", runs["run_time"])  # git may not know it
    runs["when"] = pd.to_datetime(when, utc=True, errors="coerce", format="ISO8601")
    runs["ran"] = pd.to_datetime(runs["run_time"], utc=True, errors="coerce", format="ISO8601")
    order = runs.sort_values(["when", "ran", "run_id"], na_position="first")["run_id"]
    df = df.copy()
    df["point"] = df["run_id"].map({r: i for i, r in enumerate(order)})
    return df.sort_values(["point", "label", "seq_len"]).reset_index(drop=True)
