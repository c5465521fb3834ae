"""Every figure in the README's results tables is found in the committed records it cites.

A results row is `| [run](results/<run>/report.md) | `label` | case | `metric` | value |`: the test
reads `results/<run>/records.jsonl`, keeps the records with that label whose fields match the case
cell (`N 2048` -> seq_len, `fwd` / `fwd_bwd` -> mode, `causal` / `non-causal`, an input regime
such as `local` or `captured[layer=3]`, `8 pairs` -> the task's pairs), and asserts that one of them
carries the metric at the printed value (rounded to the printed decimals). A stale figure, a wrong
label or a run that is not committed fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\|\s*\[[^\]]+\]\((results/[^/)]+)/[^)]*\)\s*\|(.*)\|\s*$", re.M)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def readme_rows(text: str) -> list[tuple[str, str, str, str, str]]:
    """(run dir, label, case, metric, value) of each results row of a Markdown text."""
    rows = []
    for run, rest in ROW.findall(text):
        cells = [c.strip() for c in rest.split("|")]
        if len(cells) != 4:
            continue
        label, case, metric, value = cells
        name = re.search(r"`([^`]+)`", label)  # the record's label; words after it are for readers
        rows.append((run, name.group(1) if name else label, case, metric.strip("`"), value))
    return rows


def case_filter(case: str, regimes: set[str]) -> dict[str, Any]:
    """Record fields a case cell pins down."""
    out: dict[str, Any] = {}
    if m := re.search(r"\bN (\d+)", case):
        out["seq_len"] = int(m.group(1))
    if m := re.search(r"(\d+) pairs", case):
        out["task.pairs"] = int(m.group(1))
    words = {w.strip(",") for w in case.replace("`", "").split()}
    if "non-causal" in words:
        out["causal"] = False
    elif "causal" in words:
        out["causal"] = True
    for mode in ("fwd_bwd", "fwd", "bwd"):
        if mode in words:
            out["mode"] = mode
            break
    for regime in regimes:
        if regime in words:
            out["input_dist"] = regime
    return out


def _field(record: dict[str, Any], name: str) -> Any:
    if name.startswith("task."):
        return (record.get("task") or {}).get(name.removeprefix("task."))
    return record.get(name)


def matches(records: list[dict[str, Any]], label: str, case: str, metric: str, value: str) -> list[Any]:
    """The metric's values in the records the row names; the row holds when one rounds to `value`."""
    regimes = {r.get("input_dist") for r in records if r.get("input_dist")}
    wanted = case_filter(case, regimes)
    chosen = [r for r in records if r.get("label") == label]
    return [r.get(metric) for r in chosen if all(_field(r, k) == v for k, v in wanted.items())]


def printed(value: str) -> tuple[float, int] | None:
    """The first number of a value cell and its decimals, or None when it holds none."""
    m = NUMBER.search(value.replace("−", "-"))
    if m is None:
        return None
    text = m.group(0)
    decimals = len(text.split(".")[1].split("e")[0]) if "." in text else 0
    return float(text), decimals


def holds(found: list[Any], value: str) -> bool:
    target = printed(value)
    if target is None:
        return False
    number, decimals = target
    tol = 0.5 * 10.0**-decimals if "e" not in value else abs(number) * 0.05
    return any(isinstance(x, int | float) and abs(x - number) <= tol + 1e-12 for x in found)


def _records(run: str) -> list[dict[str, Any]]:
    path = ROOT / run / "records.jsonl"
    assert path.is_file(), f"the README cites {run}, which has no records.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


README_ROWS = readme_rows((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_has_results_rows() -> None:
    assert len(README_ROWS) >= 5


@pytest.mark.parametrize("row", README_ROWS, ids=lambda r: f"{r[0]}:{r[1]}:{r[3]}")
def test_readme_figure_is_in_its_records(row: tuple[str, str, str, str, str]) -> None:
    run, label, case, metric, value = row
    found = matches(_records(run), label, case, metric, value)
    assert found, f"no record in {run} with label {label!r} matching {case!r}"
    assert holds(found, value), f"{run} {label} {case} {metric}: README says {value}, records hold {found}"
    run_json = json.loads((ROOT / run / "run.json").read_text(encoding="utf-8"))
    assert re.fullmatch(r"[0-9a-f]{40}", run_json.get("git_sha", "")), f"{run}/run.json names no commit"


def test_a_stale_figure_fails() -> None:
    case = {"label": "luna(m=4)", "mode": "fwd", "input_dist": "local", "causal": False}
    records = [{**case, "seq_len": 2048, "skill": 0.0512}, {**case, "seq_len": 512, "skill": 0.2}]
    found = matches(records, "luna(m=4)", "local, N 2048, fwd", "skill", "0.05")
    assert holds(found, "0.05") and not holds(found, "0.20") and not holds(found, "0.053")
    assert not matches(records, "luna(m=8)", "local, N 2048", "skill", "0.05")
    text = "| [r](results/x/report.md) | `a` (D 8) | N 2048 | `skill` | 0.96 |\n| not | a | row |\n"
    assert readme_rows(text) == [("results/x", "a", "N 2048", "skill", "0.96")]
