"""Records: metrics by name, flat JSON lines and DataFrames, schema-1 files, parquet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from harness.plugins.metrics import metrics_of
from harness.results.record_lines import read_records
from harness.results.records import (
    FIELDS,
    SCHEMA_VERSION,
    Record,
    append_record,
    to_dataframe,
    to_json_line,
    write_parquet,
)
from tests.test_compare import make_records

REPO = Path(__file__).resolve().parent.parent
SCHEMA_1 = REPO / "tests" / "fixtures" / "runs" / "schema1_smoke_records.jsonl"  # the first release


def one() -> Record:
    return make_records(noise=0.0)[2]  # flash at N=256: 0.2 ms, 4*256^2*32 FLOPs


def test_set_rejects_unknown_metrics_naming_the_known_ones() -> None:
    rec = one()
    rec.set("rel_err", 0.25)
    assert rec.get("rel_err") == 0.25 and rec.metrics["rel_err"] == 0.25
    with pytest.raises(KeyError) as err:
        rec.set("rel_errr", 1.0)
    assert "did you mean 'rel_err'" in str(err.value) and "time_ms_median" in str(err.value)
    with pytest.raises(KeyError, match="for kind 'kernel'"):  # scoped: another kind's metric
        rec.set("mqar_accuracy", 0.5)
    kept = Record(**{f: getattr(rec, f) for f in FIELDS}, metrics={"bogus": 1.0})  # as read: kept
    assert kept.get("bogus") == 1.0 and json.loads(to_json_line(kept))["bogus"] == 1.0


def test_metrics_are_read_by_name_not_as_attributes() -> None:
    rec = one()
    rec.set("rel_err", 0.5)
    assert rec.metrics["rel_err"] == 0.5 and rec.get("rel_err") == 0.5
    assert rec.get("cos_sim") is None  # a metric not measured reads as None
    with pytest.raises(AttributeError):
        _ = rec.rel_err  # metrics live in `metrics`, one way in and out
    with pytest.raises(KeyError):
        rec.get("rel_errr")  # a typo is an error, not a silent None


def test_derived_metrics_are_computed_from_the_others() -> None:
    rec = one()
    expected = 4.0 * 256 * 256 * 32 / (rec.get("time_ms_median") * 1e-3) / 1e12
    assert rec.get("tflops") == pytest.approx(expected)
    assert rec.get("tflops_exact") is None  # exact_flops not filled
    rec.set("exact_flops", 2 * rec.get("flops"))
    assert rec.get("tflops_exact") == pytest.approx(2 * expected)
    assert json.loads(to_json_line(rec))["tflops_exact"] == pytest.approx(2 * expected)


def test_json_line_is_flat_and_round_trips(tmp_path: Path) -> None:
    rec = one()
    rec.set("noise", math.nan)  # JSON has no NaN: written as null
    row = json.loads(to_json_line(rec))
    assert "metrics" not in row and row["schema_version"] == SCHEMA_VERSION == 4 and row["kind"] == "kernel"
    assert row["noise"] is None and row["exact"] is True and row["time_ms_median"] == 0.2
    assert "cos_sim" not in row and not any(k.startswith(("mqar_", "e2e_")) for k in row)  # measured only
    append_record(tmp_path / "r.jsonl", rec)
    back = Record.from_dict(read_records(tmp_path / "r.jsonl")[0])
    assert back.get("time_ms_samples") == rec.get("time_ms_samples") and back.label == rec.label
    assert back.replace(noise=None).flat() == rec.replace(noise=None).flat()


def test_replace_takes_fields_and_metrics_and_rereads_exact() -> None:
    rec = one()
    other = rec.replace(seq_len=512, rel_err=0.1, variant="linear")
    assert (other.seq_len, other.get("rel_err"), other.exact) == (512, 0.1, False)
    assert (rec.seq_len, rec.get("rel_err"), rec.exact) == (256, 3e-7, True)  # the original is untouched


def test_schema_1_files_read_with_exact_from_the_registry() -> None:
    rows = read_records(SCHEMA_1)
    assert rows and all(r["schema_version"] == 1 and "exact" not in r for r in rows)
    df = to_dataframe(rows)
    exact = df.groupby("variant")["exact"].first().to_dict()
    assert exact["softmax"] and exact["flash"] and not exact["linear"] and not exact["luna"]
    assert {m.name for m in metrics_of("kernel")} <= set(df.columns) and set(df["kind"]) == {"kernel"}
    ok = df[(df["status"] == "ok") & df["flops"].notna()]
    assert (ok["tflops"] > 0).all()


def test_dataframe_has_flat_param_columns_and_parquet_keeps_them(tmp_path: Path) -> None:
    recs = make_records(noise=0.0)
    recs[4] = recs[4].replace(params={"features": 64, "kernel": "relu"})
    recs[5] = recs[5].replace(params={"features": "auto"})  # mixed types in one param column
    rows = [r.flat() for r in recs]
    df = to_dataframe(rows)
    assert df.loc[4, "param.features"] == 64 and df.loc[4, "param.kernel"] == "relu"
    assert pd.isna(df.loc[0, "param.features"]) and df.loc[4, "params"] == {"features": 64, "kernel": "relu"}
    write_parquet(rows, tmp_path / "r.parquet")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert list(back["param.features"][4:]) == ["64", "auto"] and back.loc[4, "param.kernel"] == "relu"
    assert "time_ms_median" in back.columns and back.loc[0, "time_ms_median"] == pytest.approx(0.5)
