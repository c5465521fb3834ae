"""History across commits: a store of runs' per-case results, as a partitioned parquet dataset.

`history add RUN_DIR --store DIR` writes one parquet file per run,
`DIR/machine=<machine>/run-<run_id>.parquet` (hive partitioning: `pyarrow.dataset` and DuckDB
read the folder as one table), with a fixed narrow schema (`COLUMNS`): the run's commit, machine
and times, and per case its identity and the metrics history tracks. Adding the same run again
replaces its file, so `add` is idempotent. Points are ordered by commit time, then run time; a
commit run several times gives several points (`history check` sees them as repeats).
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
from harness.regress.runs import CompareInputError, load_run

CASE_KEYS = ("case_id", "label", "variant", "impl", "seq_len", "dtype", "causal", "mode", "device")
METRICS = ("time_ms_median", "time_ms_p20", "time_ms_p80", "n_samples", "peak_mem_bytes", "rel_err")
RUN_KEYS = ("run_id", "commit", "commit_time", "run_time", "added_at", "machine", "host", "scenario")
COLUMNS = (*RUN_KEYS, *CASE_KEYS, "params", "status", *METRICS, *(f"canary_{w}" for w in WORKLOADS))


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


def run_frame(run_dir: Path, commit: str | None = None, machine: str | None = None) -> pd.DataFrame:
    """One row per case of a run directory, in the store's schema (COLUMNS)."""
    try:
        run = load_run(Path(run_dir))
    except CompareInputError as exc:
        raise HistoryError(str(exc)) from exc
    meta_path = Path(run_dir) / "run.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    sha = commit or str(meta.get("git_sha") or run.env.get("git_sha") or "")
    canary = read_canary(Path(run_dir))
    run_keys = {
        "run_id": run.run_id,
        "commit": sha,
        "commit_time": commit_time(sha),
        "run_time": str(meta.get("started_at") or ""),
        "added_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine or machine_of(run.env),
        "host": str(run.env.get("hostname") or ""),
        "scenario": str(meta.get("scenario_name") or ""),
    }
    for w in WORKLOADS:
        run_keys[f"canary_{w}"] = float(pd.Series([p[w] for p in canary]).median()) if canary else None
    rows = []
    for rec in run.records.values():
        row = dict(run_keys)
        row.update({k: rec.get(k) for k in (*CASE_KEYS, "status", *METRICS)})
        row["params"] = json.dumps(rec.get("params") or {}, sort_keys=True, default=str)
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in METRICS + tuple(f"canary_{w}" for w in WORKLOADS):
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


def add_run(run_dir: Path, store: Path, commit: str | None = None, machine: str | None = None) -> str:
    """`history add`: append a run's records to the store; returns a one-line summary."""
    df = run_frame(run_dir, commit, machine)
    path = add_frame(store, df)
    sha = str(df["commit"].iloc[0])[:12] or "no commit"
    return f"{len(df)} cases of run {df['run_id'].iloc[0]} ({sha}) -> {path}"


def load_store(store: Path, machine: str | None = None) -> pd.DataFrame:
    """Every row of the store (one machine's when `machine` is given), ordered by commit time,
    run time and run id, with `point`: the run's position in that order (0, 1, ...)."""
    import pyarrow.dataset as ds

    store = Path(store)
    if not store.is_dir() or not any(store.glob("machine=*/*.parquet")):
        raise HistoryError(
            f"{store}: no history store here (add runs with `history add RUN --store {store}`)"
        )
    table = ds.dataset(str(store), format="parquet", partitioning="hive").to_table()
    df = table.to_pandas()
    df["machine"] = df["machine"].astype(str)
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
    df["point"] = df["run_id"].map({r: i for i, r in enumerate(order)})
    return df.sort_values(["point", "label", "seq_len"]).reset_index(drop=True)
