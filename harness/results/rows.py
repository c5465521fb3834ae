"""Rows of a run for the report and the plots: grouping, ordering, the flash reference, the
feature-dimension sweeps, and number formatting. Pure functions over record dicts."""

from __future__ import annotations

import math
import re
from typing import Any

MIB = float(1 << 20)
MODE_ORDER = {"fwd": 0, "bwd": 1, "fwd_bwd": 2}
EXTRA_GROUP_KEYS = ("device", "batch", "heads", "head_dim", "input_dist", "input_scale")
STATUS_TEXT = {
    "skipped": "skipped",
    "oom": "OOM",
    "leak": "leak",
    "error": "error",
    "nan": "NaN",
    "timeout": "timeout",
}
NOISY = 0.25  # IQR/median above which a median time is flagged "noisy"
PRECISION_FLOOR = {"bf16": 6e-3, "fp16": 8e-4}  # exact attention vs fp64 (VARIANTS.md)
Row = dict[str, Any]


# ----- frame helpers (shared with plots.py) ---------------------------------------------------
def num(x: Any) -> float | None:
    """A finite float, or None for None/NaN/non-numbers."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def iter_groups(df) -> list[tuple[dict[str, Any], list[Row]]]:
    """[(key, rows)] per (dtype, causal, mode), plus any other problem axis that varies in the run."""
    if len(df) == 0:
        return []
    keys = ["dtype", "causal", "mode"] + [k for k in EXTRA_GROUP_KEYS if df[k].nunique(dropna=False) > 1]
    groups: dict[tuple, list[Row]] = {}
    for row in df.to_dict("records"):
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    order = sorted(
        groups,
        key=lambda t: tuple(MODE_ORDER.get(v, 9) if k == "mode" else v for k, v in zip(keys, t, strict=True)),
    )
    return [(dict(zip(keys, t, strict=True)), groups[t]) for t in order]


def group_title(key: dict[str, Any]) -> str:
    extras = [f"{k}={v}" for k, v in key.items() if k not in ("dtype", "causal", "mode")]
    title = f"{key['dtype']} · {'causal' if key['causal'] else 'non-causal'} · {key['mode']}"
    return title + (f" ({', '.join(extras)})" if extras else "")


def group_slug(key: dict[str, Any]) -> str:
    """File-name-safe id of a group, e.g. `bf16_causal_fwd_B1_H8`."""
    parts = [str(key["dtype"]), "causal" if key["causal"] else "full", str(key["mode"])]
    parts += [f"{k}{v}" for k, v in key.items() if k not in ("dtype", "causal", "mode")]
    return re.sub(r"[^A-Za-z0-9._-]", "-", "_".join(parts))


def ordered_labels(rows: list[Row]) -> list[str]:
    """Variant configurations: softmax first, flash next, the rest in run order."""
    first: dict[str, tuple[int, int]] = {}
    for i, r in enumerate(rows):
        rank = {"softmax": 0, "flash": 1}.get(r["variant"], 2)
        first.setdefault(r["label"], (rank, i))
    return sorted(first, key=first.__getitem__)


def lengths_of(rows: list[Row]) -> list[int]:
    return sorted({int(r["seq_len"]) for r in rows})


def cells_by_label(rows: list[Row]) -> dict[tuple[str, int], Row]:
    """(label, seq_len) -> record; a later record of the same case wins (resume re-runs)."""
    return {(r["label"], int(r["seq_len"])): r for r in rows}


def flash_reference(rows: list[Row]) -> dict[int, Row]:
    """seq_len -> the ok `flash` record to compare against (impl `sdpa` first, then run order)."""
    ref: dict[int, Row] = {}
    flash = [r for r in rows if r["variant"] == "flash" and r["status"] == "ok" and num(r["time_ms_median"])]
    for r in sorted(flash, key=lambda r: r["impl"] != "sdpa"):
        ref.setdefault(int(r["seq_len"]), r)
    return ref


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
def fmt_sig(x: float, sig: int = 3) -> str:
    """`sig` significant digits without scientific notation for everyday magnitudes."""
    if x == 0:
        return "0"
    a = abs(x)
    if 1e-3 <= a < 1e5:
        return f"{x:.{max(0, sig - 1 - math.floor(math.log10(a)))}f}"
    return f"{x:.{sig - 1}e}"


def fmt_x(ratio: float) -> str:
    """Speedup as `4.1x`, `0.52x`, `12x`."""
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


def md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
