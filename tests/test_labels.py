"""Two configurations never share a label: entries of one variant that differ only in a fixed
parameter get it appended, at plan time and when older records are read."""

from __future__ import annotations

from pathlib import Path

from harness.common.names import distinct_labels
from harness.config.scenario import load_scenario
from harness.config.sweep import expand
from harness.results.records import to_dataframe

SCENARIO = """
name: labels
problem: {batch: 1, heads: 1, head_dim: 8, seq_len: 16}
variants:
  - name: luna
    impl: chunked
    params: {m: 2, L: 2}
    fit: {steps: 0}
  - name: luna
    impl: chunked
    params: {m: 2, L: 2, window: 8}
    fit: {steps: 0}
  - name: performer
    params: {features: [8, 16]}
"""


def test_entries_differing_in_a_fixed_param_get_distinct_labels(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    labels = sorted({c.label for c in expand(load_scenario(str(path)), "cpu")})
    assert labels == [
        "luna[chunked](window=0)",
        "luna[chunked](window=8)",
        "performer(features=16)",
        "performer(features=8)",
    ]


def test_older_records_with_one_label_for_two_configurations_are_told_apart() -> None:
    base = {"variant": "luna", "impl": "chunked", "label": "luna[chunked]", "status": "ok", "seq_len": 16}
    rows = [
        {**base, "case_id": "a", "params": {"m": 2, "window": 0}},
        {**base, "case_id": "b", "params": {"m": 2, "window": 64}},
    ]
    assert list(to_dataframe(rows)["label"]) == ["luna[chunked](window=0)", "luna[chunked](window=64)"]


def test_a_swept_label_gets_the_fixed_difference_inside_its_parentheses() -> None:
    rows = [("p(f=8)", "p", "x", {"f": 8, "seed": 0}), ("p(f=8)", "p", "x", {"f": 8, "seed": 1})]
    out = distinct_labels([*rows, ("p(f=16)", "p", "x", {"f": 16, "seed": 0})])
    assert out == ["p(f=8,seed=0)", "p(f=8,seed=1)", "p(f=16)"]
