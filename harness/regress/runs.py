"""Reading one run directory for `compare`: its records by case id and its machine fingerprint."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.common.errors import UserError
from harness.plugins.metrics import Metric, gated_metrics
from harness.results.record_lines import read_records
from harness.results.records import READABLE_SCHEMAS

ENV_KEYS = ("cpu", "gpu", "gpu_driver", "cuda", "torch", "threads")  # = harness.measure.env.FINGERPRINT_KEYS
REQUIRED_KEYS = ("case_id", "status", "variant", "label", "seq_len", "dtype", "causal", "mode")


class CompareInputError(UserError, ValueError):
    """A run directory that cannot be compared; `str(err)` is one line."""


@dataclass
class RunData:
    path: Path
    run_id: str
    env: dict[str, Any]
    records: dict[str, dict[str, Any]]  # case_id -> record (the last one wins: resume re-runs)


def load_run(run_dir: Path) -> RunData:
    """Records and env of one run directory; raises CompareInputError on anything unusable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CompareInputError(f"{run_dir}: no such run directory")
    path = run_dir / "records.jsonl"
    if not path.is_file():
        raise CompareInputError(f"{run_dir}: not a run directory (no records.jsonl)")
    try:
        rows = read_records(path)
    except (OSError, ValueError) as exc:
        raise CompareInputError(f"{path}: unreadable: {' '.join(str(exc).split())}") from exc
    if not rows:
        unreadable = path.stat().st_size > 0  # corrupt lines are skipped, each with a warning
        raise CompareInputError(f"{path}: {'unreadable: ' if unreadable else ''}no complete records")
    records: dict[str, dict[str, Any]] = {}
    for i, rec in enumerate(rows, 1):
        if not isinstance(rec, dict) or rec.get("schema_version") not in READABLE_SCHEMAS:
            got = rec.get("schema_version") if isinstance(rec, dict) else type(rec).__name__
            readable = ", ".join(map(str, READABLE_SCHEMAS))
            raise CompareInputError(
                f"{path}: record {i}: schema_version {got!r}, this attnbench reads {readable}"
            )
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise CompareInputError(f"{path}: record {i}: missing field(s) {', '.join(missing)}")
        bad = malformed_field(rec)
        if bad:
            raise CompareInputError(f"{path}: record {i} (case {str(rec['case_id'])[:40]!r}): {bad}")
        records[rec["case_id"]] = rec
    env: dict[str, Any] = {}
    if (run_dir / "env.json").is_file():
        try:
            loaded = json.loads((run_dir / "env.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CompareInputError(f"{run_dir / 'env.json'}: unreadable: {exc}") from exc
        env = loaded if isinstance(loaded, dict) else {}
    run_id = str(rows[-1].get("run_id") or run_dir.name)
    return RunData(run_dir, run_id, env, records)


FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "case_id": (str,),
    "status": (str,),
    "variant": (str,),
    "label": (str,),
    "seq_len": (int,),
    "dtype": (str,),
    "causal": (bool,),
    "mode": (str,),
}


def gated_metrics_for(records: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """The gated metrics that these records carry: a gated metric of the records' kinds
    (`harness.plugins.metrics.gated_metrics(kind)`) that some record has a value for, on a device
    its gate covers. `compare` and `history` go through this one function."""
    rows = list(records)
    out, seen = [], set()
    kinds = dict.fromkeys(str(r.get("kind") or "kernel") for r in rows)  # schema 1-3: kernel or claimed
    pool = [m for k in kinds for m in gated_metrics(k)] or gated_metrics()
    for m in pool:
        if m.name in seen:
            continue
        seen.add(m.name)
        devices = m.gate.devices if m.gate is not None else None
        if any(r.get(m.name) is not None and (devices is None or r.get("device") in devices) for r in rows):
            out.append(m)
    return out


def _numbers(value: Any, depth: int) -> bool:
    """A number (bool excluded), or (depth > 0) a list of such, nested `depth` deep."""
    if depth == 0:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, list) and all(_numbers(x, depth - 1) for x in value)


def _flat(value: Any) -> list[float]:
    return [float(x) for v in value for x in _flat(v)] if isinstance(value, list) else [float(value)]


def _bad_number(value: Any, positive: bool) -> str:
    """'' when every number in `value` (a number or nested lists) is finite and >= 0 (> 0 when
    `positive`), else what the first bad one is."""
    for x in _flat(value):
        if not math.isfinite(x):
            return f"{x}"
        if x < 0 or (positive and x == 0):
            return f"{x:g} ({'not positive' if positive else 'negative'})"
    return ""


TIME_PAIRS = (("time_ms_samples", "time_ms_median"),)  # an ok record with one of a pair has the other


def malformed_field(rec: dict[str, Any]) -> str:
    """'' when every field compare and history read is well formed, else `field NAME: expected
    ..., found ...`: the identity fields' types, and every gated metric (and its raw samples and
    rounds) null or a finite number >= 0 (time samples > 0; NaN, inf and negatives are malformed,
    never a verdict), and an ok record's median time and its samples both present or both absent."""
    for name, types in FIELD_TYPES.items():
        value = rec[name]
        ok = isinstance(value, types) and (name == "causal" or not isinstance(value, bool))
        if not ok:
            return f"field {name}: expected {' or '.join(t.__name__ for t in types)}, found {value!r:.60}"
    for m in gated_metrics():
        fields = [(m.name, 0)]
        if m.gate is not None and m.gate.samples:
            fields.append((m.gate.samples, 1))
        if m.gate is not None and m.gate.rounds:
            fields.append((m.gate.rounds, 2))
        for name, depth in fields:
            value = rec.get(name)
            if value is None:
                continue
            want = ("a number", "a list of numbers", "a list of lists of numbers")[depth]
            if not _numbers(value, depth):
                return f"field {name}: expected null or {want}, found {value!r:.60}"
            bad = _bad_number(value, positive=depth > 0)
            if bad:
                sign = "> 0" if depth > 0 else ">= 0"
                return f"field {name}: expected null or {want}, finite and {sign}, found {bad}"
    if rec.get("status") == "ok":
        for samples, med in TIME_PAIRS:
            have = [k for k in (samples, med) if rec.get(k) not in (None, [])]
            if len(have) == 1:
                missing = med if have == [samples] else samples
                return f"field {missing}: missing, while {have[0]} is recorded (an ok case has both)"
    return ""


def nothing_compared(statuses: list[tuple[str | None, str | None]], n_base: int, n_head: int) -> str:
    """Why no case could be judged, from each case's (base status, head status) (None: absent
    there); '' when some case is ok in both. No case in common means a stale or wrong baseline;
    none ok in both means every common case failed in one run or the other."""
    common = [(b, h) for b, h in statuses if b is not None and h is not None]
    if any(b == h == "ok" for b, h in common):
        return ""
    if common:
        return f"none of the {len(common)} cases in common is ok in both runs"
    return f"no case in common ({n_base} in base, {n_head} in head; different scenarios?)"


def env_warnings(base: RunData, head: RunData) -> list[str]:
    """Warnings that the two runs' machines may differ (or cannot be checked)."""
    out = []
    for side in (base, head):
        if not side.env:
            out.append(f"{side.path}: no env.json; cannot check that the machines match")
    if base.env and head.env:
        diffs = [
            f"{k}: {base.env.get(k)!r} -> {head.env.get(k)!r}"
            for k in ENV_KEYS
            if base.env.get(k) != head.env.get(k)
        ]
        if diffs:
            out.append(f"environments differ ({'; '.join(diffs)}): time verdicts may reflect the machine")
    return out
