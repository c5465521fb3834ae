"""Record schema, JSONL append/read and DataFrame conversion.

One record per case, appended and flushed (and fsynced) to `records.jsonl` as soon as the case
ends, so a killed run loses at most the case in flight. A `Record` holds identity, problem and
provenance as fields and every measured number by name in `metrics` (names, units and meaning in
`harness.measure.metrics.METRICS`); on disk and in the DataFrame a record is flat: one key or
column per field and per metric (docs/record-fields.md lists them all).

Schema 2 added `exact`, `exact_flops` and `tflops_exact`; schema 3 the provenance of each record
(`host`, `worker`, `device_name`, `device_uuid`, `visible_devices`, `env_id`, `cores`) and the
load-average metrics. Schema 1 and 2 lines read the same way (absent provenance reads as "").
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.measure.metrics import METRICS, all_metrics, derive
from harness.measure.safe_files import append_line, atomic_path
from harness.plugins.variants import VARIANTS
from harness.results.record_lines import (  # noqa: F401  (reading lives there; these names stay here)
    corrupt_case_ids,
    parse_line,
    read_records,
    repair_torn_tail,
)

SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
STATUSES = ("ok", "skipped", "oom", "error", "nan", "timeout", "leak", "crashed")


def exact_of(variant: str) -> bool | None:
    """`capabilities.exact` of a registered variant; None when it cannot be imported here."""
    try:
        return bool(VARIANTS.get(variant).capabilities.exact)
    except (KeyError, ImportError, AttributeError):
        return None


@dataclass
class Record:
    """One case's result. Field and metric names are a public contract (reports, compare, notebooks)."""

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
    exact: bool | None = None  # the variant computes exact softmax attention (None: read from the class)
    # outcome
    status: str = "ok"
    reason: str = ""
    error_trace: str = ""  # status error: the last lines of the traceback, for the variant's author
    metrics: dict[str, Any] = field(default_factory=dict)  # metric name -> value (see METRICS)
    # provenance
    mem_method: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    git_sha: str = ""
    host: str = ""  # socket.gethostname() of the worker
    worker: str = ""  # which worker ran it: "main", "w0", "gpu1", "job-123"
    device_name: str = ""  # GPU name, or the CPU model string
    device_uuid: str = ""  # CUDA device UUID ("" on CPU)
    visible_devices: str = ""  # the worker's CUDA_VISIBLE_DEVICES
    env_id: str = ""  # envs/<env_id>.json of the run directory: the worker's fingerprint
    threads: int | None = None
    cores: int | None = None  # os.cpu_count() of the host (the load average is judged against it)
    started_at: str = ""
    wall_s: float | None = None
    repro: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name in self.metrics:
            if name not in METRICS:
                raise METRICS.unknown(name)
        if self.exact is None:
            self.exact = exact_of(self.variant)

    def set(self, name: str, value: Any) -> None:
        """Store metric `name`; a name not in METRICS raises KeyError naming the known metrics."""
        if name not in METRICS:
            raise METRICS.unknown(name)
        self.metrics[name] = value

    def get(self, name: str) -> Any:
        """Metric `name` (derived ones computed from the others); None when not measured."""
        m = METRICS.get(name)
        if m.compute is not None:
            derived = derive(self.flat(derived=False))[name]
            if derived is not None:
                return derived
        return self.metrics.get(name)

    def replace(self, **changes: Any) -> Record:
        """A copy with `changes` applied; keys may be fields or metric names."""
        moved = {k: v for k, v in changes.items() if k in FIELDS}
        if "variant" in moved and "exact" not in moved:
            moved["exact"] = None  # read again from the new variant's class
        new = dataclasses.replace(self, metrics=dict(self.metrics), **moved)
        for name, value in changes.items():
            if name not in FIELDS:
                new.set(name, value)
        return new

    def flat(self, derived: bool = True) -> dict[str, Any]:
        """The record as one flat dict: fields, then every registered metric (None when absent)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "metrics":
                out.update({m.name: self.metrics.get(m.name) for m in all_metrics()})
                out.update({k: v for k, v in self.metrics.items() if k not in out})
            else:
                out[f.name] = getattr(self, f.name)
        if derived:
            out.update({k: v for k, v in derive(out).items() if v is not None})
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Record:
        """A record from a flat dict (a JSON line of schema 1, 2 or 3); unknown keys are dropped."""
        known = {k: v for k, v in row.items() if k in FIELDS}
        metrics = {k: v for k, v in row.items() if k in METRICS and v is not None}
        return cls(**known, metrics=metrics)


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Record) if f.name != "metrics")
PROVENANCE = ("host", "worker", "device_name", "device_uuid", "visible_devices", "env_id")  # str, "" unknown


def columns() -> list[str]:
    """Flat column names: the record fields with every registered metric in place of `metrics`."""
    names = [f.name for f in fields(Record)]
    i = names.index("metrics")
    return names[:i] + [m.name for m in all_metrics()] + names[i + 1 :]


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (JSON has neither); containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def to_json_line(record: Record) -> str:
    """One flat JSON object: fields and one key per metric, derived metrics filled."""
    return json.dumps(_json_safe(record.flat()), sort_keys=False, allow_nan=False, default=str)


def append_record(path: Path, record: Record) -> None:
    """Append one JSON line and make it durable before returning."""
    append_line(path, to_json_line(record) + "\n")  # O_NOFOLLOW, fsynced


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    """A read record upgraded to the current columns: `exact` from the variant class when absent
    (schema 1), absent provenance "" (schema 1 and 2), derived metrics recomputed, absent metrics None."""
    out = {name: row.get(name) for name in columns()}
    out.update({k: "" for k in PROVENANCE if out.get(k) is None})  # schema 1 and 2 have none
    out.update({k: v for k, v in row.items() if k not in out})
    if out.get("exact") is None and out.get("variant") is not None:
        out["exact"] = exact_of(str(out["variant"]))
    out.update({k: v for k, v in derive(out).items() if v is not None})
    return out


def to_dataframe(records: list[dict[str, Any]]):
    """Records as a pandas DataFrame: one column per field and metric, `params` kept as dicts plus
    `params_str` and one flat `param.<name>` column per variant parameter, and one `info.<key>`
    column per key of `info` (lists and dicts as JSON text)."""
    import pandas as pd

    rows = [normalize(r) for r in records]
    df = pd.DataFrame.from_records(rows, columns=columns()) if rows else pd.DataFrame(columns=columns())
    params = [dict(p or {}) for p in df["params"]] if len(df) else []
    df["params_str"] = [",".join(f"{k}={v}" for k, v in sorted(p.items())) for p in params]
    for name in sorted({k for p in params for k in p}):
        df[f"param.{name}"] = [p.get(name) for p in params]
    infos = [dict(i or {}) for i in df["info"]] if len(df) else []
    for name in sorted({k for i in infos for k in i}):  # one flat column per info key (csv, parquet)
        df[f"info.{name}"] = [_scalar(i.get(name)) for i in infos]
    return df


def _scalar(value: Any) -> Any:
    """A value for a flat column: scalars as they are, lists and dicts as JSON text."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, list | dict) else value


def parquet_frame(records: list[dict[str, Any]]):
    """Records as a DataFrame parquet can store: nested fields (params, info) JSON-encoded, a
    `param.*` or `info.*` column whose values mix types as text, and a column mixing lists and
    numbers (a hand-edited record) as JSON text."""
    df = to_dataframe(records).copy()
    for col in ("params", "info"):
        df[col] = [json.dumps(x, sort_keys=True, default=str) for x in df[col]]
    for col in [c for c in df.columns if df[c].dtype == object and c not in ("params", "info")]:
        kinds = {type(v) for v in df[col] if v is not None and v == v}
        if col.startswith(("param.", "info.")) and len(kinds) > 1 and not kinds <= {int, float}:
            df[col] = [None if v is None or v != v else str(v) for v in df[col]]
        elif list in kinds and len(kinds) > 1:
            df[col] = [None if v is None or v != v else json.dumps(v, default=str) for v in df[col]]
    return df


def write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    """Write records to parquet (`parquet_frame`)."""
    df = parquet_frame(records)
    with atomic_path(path) as tmp:  # a crash or full disk never leaves a torn parquet
        df.to_parquet(tmp, index=False)
