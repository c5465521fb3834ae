"""Names: did-you-mean for names the user typed (scenario keys, plugin names, subcommands), and
labels that tell configurations apart."""

from __future__ import annotations

import difflib
import json


def suggest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def distinct_labels(rows: list[tuple[str, str, str, dict]]) -> list[str]:
    """Labels that tell configurations apart. rows: (label, variant, impl, params), one per case or
    record; where rows of different configurations (variant, impl, params) share a label, each
    gets the parameters whose values differ among them appended, `luna[chunked]` ->
    `luna[chunked](window=0)` and `luna[chunked](window=64)`."""
    keys = [json.dumps([v, i, p], sort_keys=True, default=str) for _, v, i, p in rows]
    configs: dict[str, dict[str, dict]] = {}
    for (label, _, _, p), key in zip(rows, keys, strict=True):
        configs.setdefault(label, {})[key] = p or {}
    renamed: dict[tuple[str, str], str] = {}
    for label, by_key in configs.items():
        if len(by_key) < 2:
            continue
        names = sorted({n for p in by_key.values() for n in p})
        differ = [n for n in names if len({repr(p.get(n)) for p in by_key.values()}) > 1]
        for key, p in by_key.items():
            extra = ",".join(f"{n}={p.get(n)}" for n in differ)
            if not extra:
                continue
            renamed[label, key] = f"{label[:-1]},{extra})" if label.endswith(")") else f"{label}({extra})"
    return [renamed.get((row[0], key), row[0]) for row, key in zip(rows, keys, strict=True)]
