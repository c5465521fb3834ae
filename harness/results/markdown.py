"""Markdown helpers every report section shares."""

from __future__ import annotations

from typing import Any


def md_cell(text: Any) -> str:
    """`text` as one table cell: on one line, its pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A pipe table as lines: a header row, the separator, one line per row."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
