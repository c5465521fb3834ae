"""Reading one run directory for `compare`: its records by case id and its machine fingerprint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.results.records import READABLE_SCHEMAS, read_records

REQUIRED_KEYS = ("case_id", "status", "variant", "label", "seq_len", "dtype", "causal", "mode")


class CompareInputError(ValueError):
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
        raise CompareInputError(f"{path}: no complete records")
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
