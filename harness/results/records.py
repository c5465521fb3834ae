"""Record schema, JSONL append/read and DataFrame conversion.

One record per case, appended and flushed (and fsynced) to `records.jsonl` as soon as the case
ends, so a killed run loses at most the case in flight. Units live in field names.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "skipped", "oom", "error", "nan", "timeout", "leak")


@dataclass
class Record:
    """One case's result. Field names are a public contract (reports, compare, users' notebooks)."""

    # identity
    case_id: str
    run_id: str
    scenario: str
    scenario_version: int
    variant: str
    variant_version: int
    impl: str
    params: dict[str, Any]
    label: str
    config_key: str  # the variant configuration + problem without seq_len (OOM skipping, plots)
    # problem
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    feature_dim: int | None
    dtype: str
    device: str
    causal: bool
    mode: str
    input_dist: str = "gaussian"
    input_scale: float = 1.0
    input_seed: int = 0
    # outcome
    status: str = "ok"
    reason: str = ""
    # timing
    time_ms_median: float | None = None
    time_ms_p20: float | None = None
    time_ms_p80: float | None = None
    time_ms_samples: list[float] = field(default_factory=list)
    n_samples: int = 0
    noise: float | None = None
    # memory
    peak_mem_bytes: int | None = None
    extra_mem_bytes: int | None = None
    input_bytes: int | None = None
    mem_method: str = ""
    # accuracy
    rel_err: float | None = None
    max_abs_err: float | None = None
    cos_sim: float | None = None
    uniform_rel_err: float | None = None
    skill: float | None = None
    unfitted_rel_err: float | None = None
    fit_steps: int | None = None
    fit_s: float | None = None
    fit_loss: float | None = None
    softmax_entropy: float | None = None
    causality_change: float | None = None
    batch_change: float | None = None
    # cost model
    flops: float | None = None
    bytes_moved: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    floor_ms: float | None = None  # roofline floor: max(bytes / copy bandwidth, flops / GEMM rate)
    time_over_floor: float | None = None  # time_ms_median / floor_ms
    # provenance
    info: dict[str, Any] = field(default_factory=dict)
    git_sha: str = ""
    threads: int | None = None
    started_at: str = ""
    wall_s: float | None = None
    repro: str = ""
    schema_version: int = SCHEMA_VERSION


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Record))


def to_json_line(record: Record) -> str:
    return json.dumps(asdict(record), sort_keys=False, allow_nan=False, default=str)


def append_record(path: Path, record: Record) -> None:
    """Append one JSON line and make it durable before returning."""
    line = to_json_line(record) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records in `path`; a torn last line (killed mid-write) is ignored."""
    if not Path(path).exists():
        return []
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn write from a killed run
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def repair_torn_tail(path: Path) -> None:
    """Cut a partial last line so appends start on a fresh line (used by --resume)."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)


def to_dataframe(records: list[dict[str, Any]]):
    """Records as a pandas DataFrame; `params` and `info` stay dicts, plus `params_str`."""
    import pandas as pd

    df = (
        pd.DataFrame.from_records(records, columns=list(RECORD_FIELDS))
        if records
        else pd.DataFrame(columns=list(RECORD_FIELDS))
    )
    df["params_str"] = (
        [",".join(f"{k}={v}" for k, v in sorted((p or {}).items())) for p in df["params"]] if len(df) else []
    )
    return df


def write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    """Write records to parquet; nested fields (params, info, samples) are JSON-encoded."""
    df = to_dataframe(records).copy()
    for col in ("params", "info"):
        df[col] = [json.dumps(x, sort_keys=True, default=str) for x in df[col]]
    df.to_parquet(path, index=False)
