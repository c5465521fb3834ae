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
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.measure.metrics import METRICS, all_metrics, derive
from harness.measure.safe_files import append_line, atomic_path, open_append
from harness.plugins.variants import VARIANTS

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
PROVENANCE += ("slurm_job_id", "slurm_array_task_id", "slurm_node")


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


_WARNED: set[tuple[str, int]] = set()  # (file, line) already reported: readers run often


def parse_line(raw: bytes, path: Path, number: int) -> dict[str, Any] | None:
    """One JSON-lines record, or None for a blank line or a corrupt one (not UTF-8, not JSON, not
    an object), which is reported once on stderr naming the file and its line number."""
    text = raw.strip()
    if not text:
        return None
    try:
        row = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        why = " ".join(str(err).split())[:80]
    else:
        if isinstance(row, dict):
            return row
        why = f"a JSON {type(row).__name__}, not a record"
    if (str(path), number) not in _WARNED:
        _WARNED.add((str(path), number))
        where = f"line {number}" if number > 0 else "a line"
        print(f"warning: {path}: {where}: corrupt record skipped ({why})", file=sys.stderr)
    return None


def corrupt_case_ids(path: Path) -> set[str]:
    """The case ids still legible in the corrupt lines of `path` (their cases run again on resume)."""
    found: set[str] = set()
    if Path(path).exists():
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if line.endswith(b"\n") and line.strip() and parse_line(line, path, number) is None:
                    match = re.search(rb'"case_id"\s*:\s*"([0-9a-zA-Z_-]+)"', line)
                    found.update([match.group(1).decode()] if match else [])
    return found


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records in `path` as flat dicts. A torn last line (killed mid-write) is ignored;
    a corrupt line elsewhere is skipped with a warning naming its line (`--resume` reruns its case)."""
    if not Path(path).exists():
        return []
    out: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                break  # torn write from a killed run
            row = parse_line(line, path, number)
            if row is not None:
                out.append(row)
    return out


def repair_torn_tail(path: Path) -> None:
    """Cut a partial last line so appends start on a fresh line (used by --resume)."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open_append(path) as fh:  # never truncates through a planted symlink
            fh.buffer.truncate(cut)


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


def write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    """Write records to parquet; nested fields (params, info) are JSON-encoded, and a `param.*` or
    `info.*` column whose values mix types is stored as text."""
    df = to_dataframe(records).copy()
    for col in ("params", "info"):
        df[col] = [json.dumps(x, sort_keys=True, default=str) for x in df[col]]
    for col in [c for c in df.columns if c.startswith(("param.", "info."))]:
        kinds = {type(v) for v in df[col] if v is not None and v == v}
        if len(kinds) > 1 and not kinds <= {int, float}:
            df[col] = [None if v is None or v != v else str(v) for v in df[col]]
    with atomic_path(path) as tmp:  # a crash or full disk never leaves a torn parquet
        df.to_parquet(tmp, index=False)
