"""Record schema, JSONL append/read and DataFrame conversion.

One record per case, appended and flushed (and fsynced) to `records.jsonl` as soon as the case
ends, so a killed run loses at most the case in flight. A `Record` holds identity, problem and
provenance as fields and every measured number by name in `metrics` (names, units and meaning in
`harness.plugins.metrics.METRICS`); on disk and in the DataFrame a record is flat: one key or
column per field and per metric (docs/record-fields.md lists them all).

Schema 2 added `exact`, `exact_flops` and `tflops_exact`; schema 3 the provenance of each record
(`host`, `worker`, `device_name`, `device_uuid`, `visible_devices`, `env_id`, `cores`) and the
load-average metrics; schema 4 the `kind` and `task` fields, and writes only the metrics that were
measured (no null padding). Schema 1-3 lines read the same way: absent provenance reads as "", the
kind is the registered kind that claims the line (`BenchmarkKind.claims_legacy`). A metric this
checkout does not know is kept and shown, never dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.common.files import append_line, atomic_path
from harness.common.names import distinct_labels, suggest
from harness.plugins.kinds import KINDS, installed_kind
from harness.plugins.metrics import METRICS, derive, metrics_of
from harness.plugins.registry import UnknownPluginError
from harness.plugins.variants import VARIANTS

SCHEMA_VERSION = 4
READABLE_SCHEMAS = (1, 2, 3, 4)
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
    kind: str = "kernel"  # the benchmark kind that measured it (harness.plugins.kinds)
    task: dict[str, Any] = field(default_factory=dict)  # the kind's task options at this case's point
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
    slurm_job_id: str = ""  # SLURM_ARRAY_JOB_ID (an array task) or SLURM_JOB_ID; "" off Slurm
    slurm_array_task_id: str = ""  # SLURM_ARRAY_TASK_ID
    slurm_node: str = ""  # SLURMD_NODENAME
    threads: int | None = None
    cores: int | None = None  # os.cpu_count() of the host (the load average is judged against it)
    started_at: str = ""
    wall_s: float | None = None
    repro: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.exact is None:
            self.exact = exact_of(self.variant)

    def set(self, name: str, value: Any) -> None:
        """Store metric `name`; a name that is not one of the record's kind's metrics raises KeyError
        naming them (a kernel record never carries another kind's metric)."""
        names = kind_metric_names(self.kind)
        if value is None:  # nothing measured: nothing written
            self.metrics.pop(name, None)
            return
        if name not in names:
            raise UnknownPluginError(
                f"unknown metric {name!r} for kind {self.kind!r}{suggest(name, sorted(names))}; "
                f"known: {', '.join(sorted(names)) or 'none'}"
            )
        self.metrics[name] = value

    def get(self, name: str) -> Any:
        """Metric `name` (derived ones computed from the others); None when not measured. A name that
        is neither carried nor one of the kind's metrics raises KeyError (a typo is no silent None)."""
        if name not in self.metrics and name not in kind_metric_names(self.kind):
            raise UnknownPluginError(f"unknown metric {name!r} for kind {self.kind!r}")
        m = METRICS.get(name) if name in METRICS else None
        if m is not None and m.compute is not None:
            derived = derive(self.flat(derived=False), self.kind).get(name)
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
        """The record as one flat dict: its fields, then the metrics it carries (only those measured)
        and the derived metrics of its kind that can be computed from them."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "metrics":
                out.update(self.metrics)
            else:
                out[f.name] = getattr(self, f.name)
        if derived:
            out.update({k: v for k, v in derive(out, self.kind).items() if v is not None})
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Record:
        """A record from a flat dict (a JSON line of schema 1-4): every key that is not a field is a
        metric (unknown ones kept); null metrics (the padding of schema 1-3) are dropped."""
        row = upgrade(row)
        known = {k: v for k, v in row.items() if k in FIELDS}
        metrics = {k: v for k, v in row.items() if k not in FIELDS and v is not None}
        return cls(**known, metrics=metrics)


def kind_metric_names(kind: str) -> frozenset[str]:
    """Names of the metrics records of `kind` may carry (`harness.plugins.metrics.metrics_of`)."""
    return frozenset(m.name for m in metrics_of(kind))


def legacy_kind(row: dict[str, Any]) -> str:
    """The kind of a record written before records named it (schema 1-3): the first registered kind
    other than `kernel` that claims it, else `kernel`."""
    for name in KINDS.names():
        if name == "kernel":
            continue
        cls = installed_kind(name)
        if cls is not None and cls.claims_legacy(row):
            return name
    return "kernel"


def upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """A read line with `kind` and `task` (schema 1-3 lines have neither)."""
    if row.get("kind") and isinstance(row.get("task", {}), dict):
        return row
    out = dict(row)
    out["kind"] = str(row.get("kind") or legacy_kind(row))
    out["task"] = row.get("task") if isinstance(row.get("task"), dict) else {}
    return out


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Record) if f.name != "metrics")
PROVENANCE = ("host", "worker", "device_name", "device_uuid", "visible_devices", "env_id")  # str, "" unknown
PROVENANCE += ("slurm_job_id", "slurm_array_task_id", "slurm_node")


def columns() -> list[str]:
    """The record fields, in order: the first columns of every record DataFrame."""
    return list(FIELDS)


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
    """A read record upgraded to the current fields: `kind` and `task` (schema 1-3), `exact` from the
    variant class when absent (schema 1), absent provenance "" (schema 1 and 2), null metrics dropped,
    derived metrics recomputed; every other key kept (a metric unknown here included)."""
    row = upgrade(row)
    out = {name: row.get(name) for name in FIELDS}
    out.update({k: "" for k in PROVENANCE if out.get(k) is None})  # schema 1 and 2 have none
    out.update({k: v for k, v in row.items() if k not in out and v is not None})
    if out.get("exact") is None and out.get("variant") is not None:
        out["exact"] = exact_of(str(out["variant"]))
    out.update({k: v for k, v in derive(out, str(out["kind"])).items() if v is not None})
    return out


def to_dataframe(records: list[dict[str, Any]]):
    """Records as a pandas DataFrame: one column per field, per metric any record carries and per
    metric the records' kinds declare (so a kind's report finds its columns), `params` kept as dicts
    plus `params_str` and one flat `param.<name>` column per variant parameter, `task` as dicts
    plus one `task.<key>` column per task option, and `info.<key>` columns (nested mappings and
    lists of mappings flattened to `info.<key>.<sub>`)."""
    import pandas as pd

    rows = [normalize(r) for r in records]
    kinds = dict.fromkeys(str(r["kind"]) for r in rows)
    declared = [m.name for k in kinds for m in metrics_of(k)]
    measured = [k for r in rows for k in r if k not in FIELDS]
    names = list(FIELDS) + list(dict.fromkeys(declared + measured))
    df = pd.DataFrame.from_records(rows, columns=names) if rows else pd.DataFrame(columns=names)
    params = [dict(p or {}) for p in df["params"]] if len(df) else []
    df["params_str"] = [",".join(f"{k}={v}" for k, v in sorted(p.items())) for p in params]
    if len(df):  # records written before labels were made distinct (harness.config.sweep.expand)
        rows = zip(df["label"].astype(str), df["variant"], df["impl"], params, strict=True)
        df["label"] = distinct_labels(list(rows))
    for name in sorted({k for p in params for k in p}):
        df[f"param.{name}"] = [p.get(name) for p in params]
    tasks = [t if isinstance(t, dict) else {} for t in df["task"]] if len(df) else []
    for name in dict.fromkeys(k for t in tasks for k in t):
        df[f"task.{name}"] = [_cell_value(t.get(name)) for t in tasks]
    infos = [flatten(i if isinstance(i, dict) else {}) for i in df["info"]] if len(df) else []
    for name in sorted({k for i in infos for k in i}):  # one flat column per info key (csv, parquet)
        df[f"info.{name}"] = [i.get(name) for i in infos]
    return df


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists of mappings as dotted keys (`a.b`, `runs.0.lr`); lists of scalars
    stay lists."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{name}.{i}."))
        else:
            out[name] = _cell_value(value)
    return out


def _cell_value(value: Any) -> Any:
    """A value for a flat column: tuples as lists."""
    return list(value) if isinstance(value, tuple) else value


def export_frame(records: list[dict[str, Any]]):
    """The flat table of records for csv and parquet: `to_dataframe` without its nested columns
    (`params`, `task`, `info`: their flat `param.*`, `task.*`, `info.*` columns hold the values) and
    without a column that is empty in every row; a column whose values mix types beyond int and
    float is stored as text, lists as lists."""
    df = to_dataframe(records).drop(columns=["params", "task", "info"])
    df = df[[c for c in df.columns if df[c].map(_present).any()]]
    for col in df.columns:
        types = {type(v) for v in df[col] if _present(v) and not isinstance(v, list)}
        if types and df[col].map(lambda v: isinstance(v, list)).any():  # lists and scalars: hand-edited
            df[col] = [str(v) if _present(v) else None for v in df[col]]
        elif len(types) > 1 and not types <= {int, float}:
            df[col] = [str(v) if _present(v) and not isinstance(v, list) else v for v in df[col]]
    return df.reset_index(drop=True)


def _present(value: Any) -> bool:
    """A value a cell holds: not None, not NaN, not an empty string or list."""
    if value is None or (isinstance(value, float) and value != value):
        return False
    return not (isinstance(value, str | list) and len(value) == 0)


def write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    """Write records to parquet as `export_frame` gives them."""
    df = export_frame(records)
    with atomic_path(path) as tmp:  # a crash or full disk never leaves a torn parquet
        df.to_parquet(tmp, index=False)
