"""`export`: pytest-benchmark JSON (read back by pytest-benchmark itself), csv and parquet."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main as cli_main
from harness.results.export import to_pytest_benchmark
from harness.results.records import write_parquet
from tests.test_compare import edit, make_records, write_run


def run_with_params(tmp_path: Path) -> Path:
    recs = edit(
        make_records(), "linear", params={"features": 64, "kernel": "elu"}, info={"path": "fast", "n": 3}
    )
    recs = edit(recs, "softmax", info={"segments": [1, 2]})
    bad = recs[0].replace(
        case_id="failed", status="error", reason="planted", seq_len=4096, time_ms_samples=None
    )
    run = write_run(tmp_path / "run", [*recs, bad])
    (run / "run.json").write_text(
        json.dumps({"run_id": "r1", "git_sha": "c0ffee", "started_at": "2026-01-01T00:00:00Z"})
    )
    return run


def test_pytest_benchmark_json_has_the_stats_pytest_benchmark_computes(tmp_path: Path) -> None:
    from pytest_benchmark.stats import Stats

    doc, skipped = to_pytest_benchmark(run_with_params(tmp_path))
    assert skipped == 1 and len(doc["benchmarks"]) == 6
    assert doc["commit_info"]["id"] == "c0ffee" and doc["machine_info"]["processor"] == "Test CPU"
    bench = next(b for b in doc["benchmarks"] if b["name"] == "linear[N=256,fp32,non-causal,fwd]")
    rec = next(r for r in make_records() if r.case_id == "linear-256")
    samples_s = [x / 1e3 for x in rec.metrics["time_ms_samples"]]
    assert bench["stats"]["median"] == pytest.approx(float(np.median(samples_s)))
    assert set(Stats.fields) <= set(bench["stats"]) and bench["stats"]["rounds"] == 20
    assert bench["stats"]["ops"] == pytest.approx(1 / bench["stats"]["mean"])
    assert (
        bench["params"] == {"features": 64, "kernel": "elu"}
        and bench["extra_info"]["case_id"] == "linear-256"
    )


def test_exported_json_loads_in_pytest_benchmark_compare(tmp_path: Path) -> None:
    run = run_with_params(tmp_path)
    out = tmp_path / "0001_base.json"
    assert cli_main(["export", str(run), "--format", "pytest-benchmark", "--out", str(out)]) == 0
    shutil.copy(out, tmp_path / "0002_head.json")
    exe = shutil.which("pytest-benchmark")
    assert exe, "pytest-benchmark's command line is installed with the package"
    res = subprocess.run(
        [exe, "compare", str(out), str(tmp_path / "0002_head.json"), "--group-by", "name"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "linear[N=1024,fp32,non-causal,fwd]" in res.stdout and "Failed to load" not in res.stderr


def test_csv_and_parquet_flatten_params_and_info(tmp_path: Path) -> None:
    run = run_with_params(tmp_path)
    assert cli_main(["export", str(run), "--format", "csv", "--out", str(tmp_path / "r.csv")]) == 0
    df = pd.read_csv(tmp_path / "r.csv")
    assert {"param.features", "param.kernel", "info.path", "info.n", "info.segments"} <= set(df.columns)
    linear = df[df["label"] == "linear"]
    assert set(linear["param.features"]) == {64} and set(linear["info.path"]) == {"fast"}
    assert set(df.loc[df["label"] == "softmax", "info.segments"]) == {"1;2"}  # a list, no JSON text
    assert not {"params", "info", "task"} & set(df.columns)  # only their flat columns
    assert all(df[c].notna().any() for c in df.columns)  # no column empty in every row
    assert cli_main(["export", str(run), "--format", "parquet", "--out", str(tmp_path / "r.parquet")]) == 0
    back = pd.read_parquet(tmp_path / "r.parquet")
    segments = back.loc[back["label"] == "softmax", "info.segments"].iloc[0]
    assert "info.path" in back.columns and list(segments) == [1, 2]
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    write_parquet(records, tmp_path / "records.parquet")  # what finalize writes
    table = pd.read_parquet(tmp_path / "records.parquet")
    assert {"param.features", "info.path", "info.n"} <= set(table.columns)


def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert (
        cli_main(["export", str(tmp_path / "nothing"), "--format", "csv", "--out", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no records.jsonl" in err[0]


REPO = Path(__file__).resolve().parent.parent


def test_pytest_benchmark_compare_groups_every_benchmark_with_its_problems_peers(tmp_path: Path) -> None:
    from collections import Counter

    from harness.results.export import problem_name
    from harness.results.record_lines import read_records

    run = REPO / "results" / "cpu-odd"  # labels with an impl: performer[native], flash[sdpa], luna[chunked]
    out = tmp_path / "0001_odd.json"
    assert cli_main(["export", str(run), "--format", "pytest-benchmark", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert any("][" in b["name"] for b in doc["benchmarks"])  # the case that used to break the grouping
    res = subprocess.run(
        [shutil.which("pytest-benchmark"), "compare", str(out)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    groups = {g: int(n) for g, n in re.findall(r"benchmark '([^']+)': (\d+) tests", res.stdout)}
    ok = [r for r in read_records(run / "records.jsonl") if r["status"] == "ok" and r.get("time_ms_samples")]
    assert groups == dict(Counter(problem_name(r) for r in ok))  # one group per problem, all its peers
    assert sum(groups.values()) == len(doc["benchmarks"]) and min(groups.values()) > 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("time_ms_samples", [1.0, float("nan")], "time_ms_samples"),
        ("time_ms_samples", [1.0, -2.0], "time_ms_samples"),
        ("time_ms_samples", [float("inf")] * 3, "time_ms_samples"),
        ("time_ms_median", None, "time_ms_median"),
    ],
)
def test_malformed_times_are_one_line_exit_2(tmp_path: Path, capsys, field: str, value, message: str) -> None:
    run = write_run(tmp_path / "run", edit(make_records(), "linear", **{field: value}))
    out = tmp_path / "b.json"
    assert cli_main(["export", str(run), "--format", "pytest-benchmark", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "linear-256" in err[0]
