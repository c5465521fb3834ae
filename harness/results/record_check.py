"""What a record line must hold before the report, the exports and `--resume` use it.

Records are written by the harness, but a run directory is a folder of text files that people
edit, truncate and copy by hand. A line that is JSON but not a usable record (a missing or
non-text `case_id`, an unknown `status`, a string where a number belongs, `params` that is not a
mapping) is named here with the field and what was expected, so the reader can skip it with one
warning instead of failing with a traceback deep inside pandas or pyarrow.

Field types are read from the `Record` dataclass itself, so a new field is checked without an edit
here; metrics are numbers or (nested) lists of numbers, as `harness.plugins.metrics` defines them,
and a metric with a direction (lower or higher is better), a gate or a formula is one number.
"""

from __future__ import annotations

import types
import typing
from functools import cache
from typing import Any

from harness.plugins.metrics import METRICS

# What every reader of a record needs (= the keys `compare` requires): an identity and a problem.
REQUIRED = ("case_id", "status", "variant", "label", "seq_len", "dtype", "causal", "mode")
MAX_DEPTH = 3  # metric lists: samples (1), rounds of samples (2); one more level of slack


def _allowed(hint: Any) -> tuple[type, ...]:
    """The runtime types a field annotation admits (None included for optional fields)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in _allowed(arg))
    if hint is type(None):
        return (type(None),)
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return (int, float)
    return (origin,) if isinstance(origin, type) and origin is not typing.Any else (object,)


@cache
def field_types() -> dict[str, tuple[type, ...]]:
    """Field name -> the types its value may have (from the `Record` annotations)."""
    from harness.results.records import Record  # records imports this module's caller

    hints = typing.get_type_hints(Record)
    return {name: _allowed(hint) for name, hint in hints.items() if name != "metrics"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: Any, depth: int = 0) -> bool:
    """A number, None, or a list of such nested at most MAX_DEPTH deep."""
    if value is None or _is_number(value):
        return True
    return isinstance(value, list) and depth < MAX_DEPTH and all(_numbers(x, depth + 1) for x in value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _names(allowed: tuple[type, ...]) -> str:
    names = {"NoneType": "null", "str": "text", "int": "an int", "float": "a number", "bool": "true/false"}
    names |= {"dict": "a mapping"}
    shown = [names.get(t.__name__, t.__name__) for t in allowed if not (t is int and float in allowed)]
    return " or ".join(dict.fromkeys(shown))


def record_problem(row: dict[str, Any]) -> str:
    """'' for a usable record, else `field NAME: expected ..., found ...` (the first problem)."""
    from harness.results.records import STATUSES

    for name in REQUIRED:
        if row.get(name) is None:
            return f"field {name}: missing"
    if not isinstance(row["case_id"], str) or not row["case_id"]:
        return f"field case_id: expected non-empty text, found {_show(row['case_id'])}"
    if row["status"] not in STATUSES:
        return f"field status: expected one of {', '.join(STATUSES)}, found {_show(row['status'])}"
    for name, allowed in field_types().items():
        value = row.get(name)
        if value is None or object in allowed:
            continue
        ok = isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))
        if not ok:
            return f"field {name}: expected {_names(allowed)}, found {_show(value)}"
    for name, value in row.items():
        if name not in METRICS:
            continue
        if name in scalar_metrics() and not (value is None or _is_number(value)):
            return f"field {name}: expected null or a number, found {_show(value)}"
        if not _numbers(value):
            return f"field {name}: expected null, a number or a list of numbers, found {_show(value)}"
    return ""


@cache
def scalar_metrics() -> frozenset[str]:
    """Metrics that are one number: those judged in a direction, gated or derived by a formula."""
    from harness.plugins.metrics import all_metrics

    return frozenset(m.name for m in all_metrics() if m.direction or m.gate or m.compute)


def marker_problem(row: dict[str, Any]) -> str:
    """'' for a usable start marker (`started.<worker>.jsonl`), else what is wrong with it."""
    case_id = row.get("case_id")
    if case_id is None:
        return "field case_id: missing"
    if not isinstance(case_id, str) or not case_id:
        return f"field case_id: expected non-empty text, found {_show(case_id)}"
    return ""
