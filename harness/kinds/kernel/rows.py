"""Rows of a run as record dicts, for the plots and the feature-dimension sweep: grouping,
ordering (exact configurations first, by capability, never by name), the D sweeps and number
formatting. Pure functions."""

from __future__ import annotations

import re
from typing import Any

from harness.common.numbers import finite, fmt_sig
from harness.plugins.metrics import MIB

MODE_ORDER = {"fwd": 0, "bwd": 1, "fwd_bwd": 2}
EXTRA_GROUP_KEYS = ("device", "batch", "heads", "head_dim", "input_dist", "input_scale")
STATUS_TEXT = {
    "skipped": "skipped",
    "oom": "OOM",
    "leak": "leak",
    "error": "error",
    "nan": "NaN",
    "timeout": "timeout",
    "crashed": "crashed",
}
Row = dict[str, Any]
__all__ = ["MIB", "fmt_sig", "num"]
num = finite  # a finite float, or None


# ----- frame helpers (shared with plots.py) ---------------------------------------------------
def group_keys(df, mode: bool = True) -> list[str]:
    """Columns that make a group: dtype, causal (and mode), plus each other problem axis that varies."""
    base = ["dtype", "causal"] + (["mode"] if mode else [])
    return base + [k for k in EXTRA_GROUP_KEYS if k in df and df[k].nunique(dropna=False) > 1]


def group_order(key: dict[str, Any]) -> tuple:
    """Sort key of a group: its values, modes in pipeline order (fwd, bwd, fwd_bwd)."""
    return tuple(MODE_ORDER.get(v, 9) if k == "mode" else v for k, v in key.items())


def iter_groups(df) -> list[tuple[dict[str, Any], list[Row]]]:
    """[(key, rows)] per (dtype, causal, mode), plus any other problem axis that varies in the run."""
    if len(df) == 0:
        return []
    keys = group_keys(df)
    groups: dict[tuple, list[Row]] = {}
    for row in df.to_dict("records"):
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    found = [dict(zip(keys, t, strict=True)) for t in groups]
    return [(key, groups[tuple(key.values())]) for key in sorted(found, key=group_order)]


def group_title(key: dict[str, Any]) -> str:
    """`fp32 · causal · fwd (heads=4)`; without a mode for accuracy groups."""
    extras = [f"{k}={v}" for k, v in key.items() if k not in ("dtype", "causal", "mode")]
    parts = [str(key["dtype"]), "causal" if key["causal"] else "non-causal"]
    title = " · ".join(parts + ([str(key["mode"])] if "mode" in key else []))
    return title + (f" ({', '.join(extras)})" if extras else "")


def group_slug(key: dict[str, Any]) -> str:
    """File-name-safe id of a group, e.g. `bf16_causal_fwd_B1_H8`."""
    parts = [str(key["dtype"]), "causal" if key["causal"] else "full", str(key["mode"])]
    parts += [f"{k}{v}" for k, v in key.items() if k not in ("dtype", "causal", "mode")]
    return re.sub(r"[^A-Za-z0-9._-]", "-", "_".join(parts))


def ordered_labels(rows: list[Row]) -> list[str]:
    """Variant configurations: exact ones (`capabilities.exact`) first, the rest in run order."""
    first: dict[str, tuple[int, int]] = {}
    for i, r in enumerate(rows):
        first.setdefault(r["label"], (0 if r.get("exact") else 1, i))
    return sorted(first, key=first.__getitem__)


def lengths_of(rows: list[Row]) -> list[int]:
    return sorted({int(r["seq_len"]) for r in rows})


def cells_by_label(rows: list[Row]) -> dict[tuple[str, int], Row]:
    """(label, seq_len) -> record; a later record of the same case wins (resume re-runs)."""
    return {(r["label"], int(r["seq_len"])): r for r in rows}


def feature_dim_rows(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows of the feature-dimension table: one per approximate variant family with >1 D.

    Each is {"variant", "name", "seq_len", "cells": {D: record}} at the longest length all its
    configurations were measured (preferring lengths where all are ok). Configurations of one
    (variant, impl) are split into rows by the params other than the one that sets D.
    """
    out: list[dict[str, Any]] = []
    approx = [r for r in rows if num(r["feature_dim"]) is not None]
    families: dict[tuple[str, str], dict[str, Row]] = {}
    for r in approx:
        families.setdefault((r["variant"], r["impl"]), {}).setdefault(r["label"], r)
    multi_impl = {v for v, _ in families if sum(1 for w, _ in families if w == v) > 1}
    for (variant, impl), by_label in families.items():
        dims = {lab: int(num(r["feature_dim"])) for lab, r in by_label.items()}
        if len(set(dims.values())) < 2:
            continue
        base = f"{variant}[{impl}]" if variant in multi_impl else variant
        for name, labels in _split_by_other_params(by_label, dims):
            n = _common_length([r for r in rows if r["label"] in labels])
            if n is None:
                continue
            at_n = {r["label"]: r for r in rows if r["label"] in labels and int(r["seq_len"]) == n}
            cells = {int(num(at_n[lab]["feature_dim"]) or dims[lab]): at_n[lab] for lab in labels}
            if len(cells) > 1:
                out.append({"variant": variant, "name": base + name, "seq_len": n, "cells": cells})
    return out


def _split_by_other_params(by_label: dict[str, Row], dims: dict[str, int]) -> list[tuple[str, list[str]]]:
    labels = list(by_label)
    params = {lab: dict(by_label[lab]["params"] or {}) for lab in labels}
    varying = sorted(
        {k for p in params.values() for k in p if len({repr(q.get(k)) for q in params.values()}) > 1}
    )
    best: list[tuple[str, list[str]]] | None = None
    for d_key in varying:
        rest = [k for k in varying if k != d_key]
        parts: dict[tuple, list[str]] = {}
        for lab in labels:
            parts.setdefault(tuple(repr(params[lab].get(k)) for k in rest), []).append(lab)
        if all(len({dims[lab] for lab in labs}) == len(labs) for labs in parts.values()):
            named = [
                ("(" + ",".join(f"{k}={params[labs[0]].get(k)}" for k in rest) + ")" if rest else "", labs)
                for labs in parts.values()
            ]
            if best is None or len(named) < len(best):
                best = named
    return best or []


def _common_length(rows: list[Row]) -> int | None:
    labels = {r["label"] for r in rows}
    have: dict[int, set[str]] = {}
    ok: dict[int, set[str]] = {}
    for r in rows:
        have.setdefault(int(r["seq_len"]), set()).add(r["label"])
        if r["status"] == "ok":
            ok.setdefault(int(r["seq_len"]), set()).add(r["label"])
    for table in (ok, have):
        common = [n for n, labs in table.items() if labs == labels]
        if common:
            return max(common)
    return None


# ----- formatting -----------------------------------------------------------------------------
def fmt_x(ratio: float) -> str:
    """Speedup as `4.1x`, `0.52x`, `12x`, `0.0047x` (two significant digits below 1)."""
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x" if ratio >= 1 else f"{fmt_sig(ratio, 2)}x"
