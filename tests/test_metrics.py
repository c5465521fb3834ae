"""The metric registry: built-ins, validation, and a new metric end to end (records, report,
compare) without touching any other file; docs/record-fields.md is not stale."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.plugins.metrics import (
    METRICS,
    Gate,
    Metric,
    all_metrics,
    gated_metrics,
    metric,
    register_metric,
    unregister_metric,
)
from harness.regress import compare, compare_markdown
from harness.results import fields_doc
from harness.results.record_lines import read_records
from harness.results.records import FIELDS
from tests.test_compare import edit, make_records, run_compare
from tests.test_report import render, row_of

REPO = Path(__file__).resolve().parent.parent


def test_builtins_cover_every_metric_a_schema_1_record_has() -> None:
    old = read_records(REPO / "results" / "baselines" / "smoke-cpu" / "records.jsonl")[0]
    numbers = {k for k, v in old.items() if k not in FIELDS and v is not None}  # schema 3 padded with nulls
    assert numbers <= set(METRICS.names()), numbers - set(METRICS.names())
    assert {"exact_flops", "tflops_exact"} <= set(METRICS.names())


def test_every_metric_states_unit_direction_and_meaning() -> None:
    for m in all_metrics():
        assert m.unit and m.description and m.group, m.name
        assert (m.compute is not None) != bool(m.measured_by), m.name  # derived, or measured by a step
    assert metric("time_ms_median").header() == "median time per call (ms, ↓ better)"
    assert metric("peak_mem_bytes").format(3 << 20, unit=True) == "3.00 MiB"
    kernel = ["time_ms_median", "peak_mem_bytes", "rel_err", "flops"]
    assert [m.name for m in gated_metrics("kernel")] == kernel
    assert [m.name for m in gated_metrics("mqar")] == ["mqar_accuracy"]  # scoped by kind
    assert metric("rel_err").gate_rule() == "above base × 1.1 + 1e-06"
    assert metric("peak_mem_bytes").gate_rule() == "above base × 1.01 + 1 MiB (on cuda only)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "down"}, "direction"),
        ({"group": "speed"}, "group"),
        ({"measured_by": ""}, "measured_by"),
        ({"compute": lambda r: 1.0}, "derived"),
    ],
)
def test_metric_declarations_are_checked(kwargs: dict, message: str) -> None:
    base = {
        "name": "x",
        "unit": "1",
        "direction": "lower",
        "description": "d",
        "group": "time",
        "measured_by": "t",
    }
    with pytest.raises(ValueError, match=message):
        Metric(**{**base, **kwargs})


def test_gate_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="kind"):
        Gate(kind="fuzzy")
    with pytest.raises(ValueError, match="samples"):
        Gate(kind="samples")
    with pytest.raises(ValueError, match="factor"):
        Gate(factor=0.9)


def test_unknown_metric_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="did you mean 'skill'"):
        metric("skil")


@pytest.fixture
def energy() -> Iterator[Metric]:
    """A new metric, registered the way a plugin would: one entry, nothing else edited."""
    m = register_metric(
        Metric(
            "energy_j",
            "J",
            "lower",
            "energy per call from the board's power sensor",
            "cost",
            gate=Gate(factor=1.05),
            measured_by="power sensor",
            title="energy per call",
            kinds=("kernel",),
        )
    )
    per_token = register_metric(
        Metric(
            "uj_per_token",
            "µJ",
            "lower",
            "energy per token",
            "cost",
            compute=lambda r: r["energy_j"] * 1e6 / r["seq_len"] if r.get("energy_j") is not None else None,
            kinds=("kernel",),
        )
    )
    yield m
    unregister_metric(m.name)
    unregister_metric(per_token.name)


def test_a_new_metric_is_recorded_reported_and_gated(energy: Metric, tmp_path: Path) -> None:
    recs = [r.replace(energy_j=0.001 * r.seq_len / 256) for r in make_records(noise=0.0)]
    assert recs[0].get("uj_per_token") == pytest.approx(1000 / 256)
    md = render(recs)
    assert "<summary><b>energy per call (J, ↓ better)</b>" in md
    assert row_of(md, "energy per call (J, ↓ better)", "linear")[1:] == ["0.00100", "0.00400"]
    assert row_of(md, "uj_per_token (µJ, ↓ better)", "linear")[1] == "3.91"
    result = run_compare(tmp_path, recs, edit(recs, "linear", energy_j=lambda e: e * 1.2))
    assert {c.label for c in result.regressions} == {"linear"}
    assert compare.exit_code(result) == 1
    finding = result.regressions[0].finding("energy_j")
    assert finding.verdict == compare.REGRESSED and finding.reason == "above base × 1.05"
    text = compare_markdown.render_verdict_markdown(result)
    assert "energy_j (J) base → head" in text and "energy_j regresses above base × 1.05" in text


def test_unregistered_metric_is_gone(energy: Metric) -> None:
    assert "energy_j" in METRICS
    unregister_metric("energy_j")
    assert "energy_j" not in METRICS and all(m.name != "energy_j" for m in all_metrics())
    register_metric(energy)  # the fixture removes it again


def test_record_fields_doc_is_not_stale() -> None:
    committed = (REPO / "docs" / "record-fields.md").read_text(encoding="utf-8")
    assert committed == fields_doc.render(), f"docs/record-fields.md is stale: run `{fields_doc.COMMAND}`"
    for m in all_metrics():
        assert f"| `{m.name}`" in committed


def test_every_record_field_is_documented() -> None:
    assert set(FIELDS) == set(fields_doc.FIELD_DOCS)
