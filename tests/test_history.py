"""`history add|show|check` on synthetic run directories (records from tests/test_compare.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main as cli_main
from harness.regress import history
from harness.regress.history_check import check_history, find_steps
from tests.test_compare import make_records, write_run

N_POINTS = 20


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[pd.DataFrame]:
    """N_POINTS runs, one commit each, as store frames (history.run_frame of real run dirs), with
    run-level noise of 3% (seeded) on every case."""
    tmp = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(7)
    out = []
    for i in range(N_POINTS):
        drift = float(np.exp(0.03 * rng.standard_normal()))
        recs = []
        for r in make_records(seed=i, run_id=f"run{i:02d}"):
            samples = [drift * x for x in r.metrics["time_ms_samples"]]
            recs.append(r.replace(time_ms_samples=samples, time_ms_median=float(np.median(samples))))
        run = write_run(tmp / f"run{i:02d}", recs)
        meta = {
            "run_id": f"run{i:02d}",
            "git_sha": f"{i:040x}",
            "started_at": f"2026-01-01T00:{i:02d}:00+00:00",
        }
        (run / "run.json").write_text(json.dumps(meta))
        out.append(history.run_frame(run))
    return out


def add_series(store: Path, frames: list[pd.DataFrame], factors: dict[int, float], n: int = N_POINTS):
    """The first `n` frames added to `store`, linear's times at point i times factors.get(i, 1)."""
    for i, df in enumerate(frames[:n]):
        df = df.copy()
        rows = df["label"] == "linear"
        for col in ("time_ms_median", "time_ms_p20", "time_ms_p80", "time_ms_fast"):
            df.loc[rows, col] *= factors.get(i, 1.0)
        history.add_frame(store, df)


def steps_of(store: Path, **kw):
    return check_history(history.load_store(store), **kw)


def test_planted_step_after_three_points_is_flagged_and_fails(frames, tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    add_series(store, frames, {i: 1.3 for i in range(17, N_POINTS)})
    result = steps_of(store)
    assert {(s.case.split("[")[0], s.start, s.commit) for s in result.failing} == {
        ("linear", 17, f"{17:040x}")
    }
    assert len(result.failing) == 2 and all(s.ratio == pytest.approx(1.3, rel=0.06) for s in result.failing)
    assert cli_main(["history", "check", "--store", str(store)]) == 1
    assert "REGRESSED" in capsys.readouterr().out


def test_twenty_aa_points_stay_quiet(frames, tmp_path: Path) -> None:
    store = tmp_path / "store"
    add_series(store, frames, {})
    result = steps_of(store)
    assert result.metrics == ("time_ms_median", "rel_err", "flops")  # every gated metric the runs carry
    assert result.series == 3 * 6 + 1 and not result.steps  # + the runs' shared change
    assert cli_main(["history", "check", "--store", str(store)]) == 0


def test_time_is_judged_on_the_fastest_tenth_of_samples(frames, tmp_path: Path) -> None:
    """Load inflates medians run to run (here up to 1.6x, at random); the fastest samples stay. A
    1.3x code step moves both, and is found from the fastest tenth; the preempted medians alone
    are no step."""
    rng = np.random.default_rng(3)
    store = tmp_path / "store"
    for i, df in enumerate(frames):
        df = df.copy()
        load = np.exp(rng.uniform(0.0, 0.47, len(df)))  # preemption: medians only
        df["time_ms_median"] *= load
        step = np.where((df["label"] == "linear") & (i >= 17), 1.3, 1.0)
        df["time_ms_median"] *= step
        df["time_ms_fast"] *= step
        history.add_frame(store, df)
    result = steps_of(store)
    assert {s.case.split("[")[0] for s in result.failing} == {"linear"}
    assert all("fastest tenth" in s.describe() for s in result.failing)
    assert frames[0]["time_ms_fast"].notna().all()
    assert (frames[0]["time_ms_fast"] <= frames[0]["time_ms_median"]).all()
    medians_only = history.load_store(store).drop(columns=["time_ms_fast"])
    timed = [s for s in check_history(medians_only).steps if "time" in s.metric]
    assert all("on the medians" in s.describe() for s in timed)


def test_a_single_outlier_is_not_a_step(frames, tmp_path: Path) -> None:
    store = tmp_path / "store"
    add_series(store, frames, {10: 2.0, N_POINTS - 1: 2.0})  # one bad run mid-series, one at the end
    assert not steps_of(store).steps


def test_two_points_after_a_step_are_not_yet_confirmed(frames, tmp_path: Path) -> None:
    store = tmp_path / "store"
    add_series(store, frames, {17: 1.3, 18: 1.3}, n=19)
    assert not steps_of(store).failing


def test_an_old_step_is_listed_but_does_not_fail(frames, tmp_path: Path) -> None:
    store = tmp_path / "store"
    add_series(store, frames, {i: 1.3 for i in range(8, N_POINTS)})
    result = steps_of(store, recent=5)
    assert {s.start for s in result.steps} == {8} and not result.failing
    fixed = find_steps([1.0] * 6 + [1.5] * 6 + [1.0] * 6, 0.05)  # a regression that was fixed
    assert [(s[0], s[3], s[4]) for s in fixed] == [(6, 6, 6), (12, 6, 6)]


def test_add_is_idempotent_and_records_commit_machine_time(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", make_records(run_id="r1"))
    (run / "run.json").write_text(
        json.dumps({"run_id": "r1", "git_sha": "abc", "started_at": "2026-01-01T00:00:00Z"})
    )
    store = tmp_path / "store"
    history.add_run(run, store)
    history.add_run(run, store, machine="ci-box")
    history.add_run(run, store, machine="ci-box")
    df = history.load_store(store)
    assert len(df) == 12 and set(df["machine"]) == {"Test_CPU-2t", "ci-box"}
    assert set(df["commit"]) == {"abc"} and set(df["run_time"]) == {"2026-01-01T00:00:00Z"}
    assert pd.api.types.is_float_dtype(df["time_ms_median"])
    assert len(history.load_store(store, "ci-box")) == 6


def test_show_prints_and_plots(frames, tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    add_series(store, frames, {}, n=4)
    assert cli_main(["history", "show", "--store", str(store), "--plots", str(tmp_path / "png")]) == 0
    out = capsys.readouterr().out
    assert "linear[N=256,fp32,non-causal,fwd]" in out and "2 plots in" in out
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert cli_main(["history", "check", "--store", str(tmp_path / "none")]) == 2
    assert cli_main(["history", "add", str(tmp_path / "nothing"), "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_show_then_check_on_one_store_writes_nothing_inside_it(
    frames, tmp_path: Path, monkeypatch, capsys
) -> None:
    store = tmp_path / "store"
    add_series(store, frames, {i: 1.3 for i in range(17, N_POINTS)})
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["history", "show", "--store", str(store)]) == 0  # default: ./history-plots
    assert sorted((tmp_path / "history-plots").glob("*.png"))
    assert cli_main(["history", "check", "--store", str(store)]) == 1
    assert cli_main(["history", "show", "--store", str(store)]) == 0
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert cli_main(["history", "show", "--store", str(store), "--out", str(store / "plots")]) == 2
    assert "inside the store" in capsys.readouterr().err


def test_reader_ignores_foreign_files_and_names_a_corrupt_one(frames, tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    add_series(store, frames, {}, n=8)
    (store / "plots").mkdir()
    (store / "plots" / "old.png").write_bytes(b"\x89PNG junk")
    (store / "notes.parquet").write_text("not parquet")
    (store / "machine=Test_CPU-2t" / "README.txt").write_text("mine")
    assert history.load_store(store)["point"].nunique() == 8
    pd.DataFrame({"x": [1]}).to_parquet(store / "machine=Test_CPU-2t" / "run-foreign.parquet")
    assert cli_main(["history", "check", "--store", str(store)]) == 2
    (store / "machine=Test_CPU-2t" / "run-foreign.parquet").write_bytes(b"PAR1 torn")
    assert cli_main(["history", "show", "--store", str(store), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("run-foreign.parquet" in line for line in err)
    assert "no column" in err[0] and "not a readable history file" in err[1]


def test_store_keeps_the_canary_and_each_cases_noise(tmp_path: Path) -> None:
    from tests.test_drift import write_canary

    run = write_run(tmp_path / "run", make_records(run_id="r1", noise=0.04))
    write_canary(run, 1.2, points=5)
    row = history.run_frame(run).iloc[0]
    assert row["canary_matmul_ms"] == pytest.approx(2.4, rel=0.02) and row["canary_points"] == 5
    assert 0 < row["noise"] and row["n_samples"] == 20 and row["run_dir"] == str(run.resolve())


def test_a_step_in_rel_err_is_found_and_explained(frames, tmp_path: Path) -> None:
    store = tmp_path / "store"
    for i, df in enumerate(frames):
        df = df.copy()
        if i >= 16:
            df.loc[df["label"] == "linear", "rel_err"] *= 1.5
        history.add_frame(store, df)
    result = steps_of(store)
    (step,) = [s for s in result.failing if s.metric == "rel_err" and s.case.startswith("linear[N=256")]
    assert step.ratio == pytest.approx(1.5) and step.worse and step.start == 16
    text = step.describe()
    assert (step.commit_before, step.commit) == (f"{15:040x}", f"{16:040x}")  # the commit range
    for part in (
        "rel_err of linear[N=256",
        "1.500× higher (worse)",
        "between 000000000000..",
        "standard errors",
    ):
        assert part in text
    assert not [s for s in result.steps if s.metric == "time_ms_median"]


def test_a_drift_of_every_case_seen_by_the_canary_is_no_step(frames, tmp_path: Path) -> None:
    from tests.test_drift import write_canary

    runs = tmp_path / "runs"
    store = tmp_path / "store"
    for i, df in enumerate(frames[:12]):
        factor = 1.4 if i >= 8 else 1.0  # the machine got slower for the last 4 runs, canary too
        run = write_run(runs / f"r{i}", make_records(seed=i, run_id=f"r{i:02d}"))
        write_canary(run, factor, points=5, seed=i)
        df = df.copy()
        for col in ("time_ms_median", "time_ms_p20", "time_ms_p80", "time_ms_fast"):
            df[col] *= factor
        for col, value in history.canary_summary(run).items():
            df[col] = value
        history.add_frame(store, df)
    assert not steps_of(store).steps


def test_malformed_times_are_exit_2_naming_field_and_case(tmp_path: Path, capsys) -> None:
    from tests.test_compare import edit

    run = write_run(tmp_path / "run", edit(make_records(), "linear", time_ms_median=float("nan")))
    assert cli_main(["history", "add", str(run), "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "time_ms_median" in err and "linear-256" in err and len(err.splitlines()) == 1
