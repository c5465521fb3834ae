"""Drift-aware `compare`: the canary, its correction, shared shifts, headlines, A/A false alarms.

Fast tests use synthetic runs (records from tests/test_compare.py plus canary lines written
here); one test times the real canary in a real tiny run; the `slow` test runs twenty A/A
compares of serially run tiny scenarios on this CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.config.scenario import load_scenario
from harness.execute.progress import QuietReporter
from harness.execute.runner import run_scenario
from harness.measure.canary import COPY_CHUNKS, MATMUL_SLICES, WORKLOADS, read_canary, time_canary
from harness.regress import compare, compare_markdown
from harness.regress.ab import compare_main
from harness.regress.drift import Drift, fast_ratio, noise_reason, shared_shift
from harness.results.record_lines import read_records
from harness.results.records import Record, append_record
from tests.test_compare import edit, make_records, write_run

TINY = """name: tiny
version: 1
description: drift tests
device: cpu
problem: {batch: 1, heads: 2, head_dim: 32, seq_len: [64, 128], dtype: fp32, causal: false, mode: fwd}
inputs: {dist: gaussian, scale: 1.0, seed: 0}
variants:
  - name: softmax
  - name: flash
  - name: linear
accuracy: {rows: 32}
measure: {warmup_ms: 2, min_samples: 20, rep_ms: 5, timeout_s: 60}
"""


def write_canary(run_dir: Path, factor: float = 1.0, points: int = 5, wander: float = 0.01, seed: int = 0):
    """Canary lines: matmul 2 ms and copy 20 ms times `factor`, each point off by up to `wander`."""
    rng = np.random.default_rng(seed)
    with open(run_dir / "canary.w0.jsonl", "w", encoding="utf-8") as fh:
        for i in range(points):
            jitter = 1.0 + wander * rng.uniform(-1, 1)
            line = {"t": float(i), "worker": "w0", "matmul_ms": 2.0 * factor * jitter}
            line["copy_ms"] = 20.0 * factor * jitter
            fh.write(json.dumps(line) + "\n")


def runs(tmp_path: Path, base: list[Record], head: list[Record], canary=(1.0, 1.0), wander=0.01):
    b, h = write_run(tmp_path / "base", base), write_run(tmp_path / "head", head)
    write_canary(b, canary[0], wander=wander, seed=1)
    write_canary(h, canary[1], wander=wander, seed=2)
    return b, h


def slower(recs: list[Record], factor: float, labels=None) -> list[Record]:
    for label in labels or {r.label for r in recs}:
        recs = edit(recs, label, time_ms_samples=lambda s: [factor * x for x in s])
    return recs


def test_planted_slowdown_in_one_variant_is_regressed(tmp_path: Path) -> None:
    b, h = runs(tmp_path, make_records(seed=1), slower(make_records(seed=2), 1.5, ["linear"]))
    result = compare.compare_runs(b, h, n_boot=400)
    assert {c.label for c in result.regressions} == {"linear"}
    assert result.shift is None and result.drift.ratio == pytest.approx(1.0, abs=0.02)
    assert compare.exit_code(result) == 1
    assert compare_main([str(b), str(h)]) == 1


def test_uniform_slowdown_with_the_canary_is_drift_not_regressions(tmp_path: Path) -> None:
    head = slower(make_records(seed=2), 1.2)
    b, h = runs(tmp_path, make_records(seed=1), head, canary=(1.0, 1.2))
    result = compare.compare_runs(b, h, n_boot=400)
    assert result.drift.ratio == pytest.approx(1.2, rel=0.02) and result.drift.moved
    assert not result.regressions and result.shift is None
    assert compare.exit_code(result) == 0
    ratios = [c.finding("time_ms_median").ratio for c in result.cases]
    assert all(r == pytest.approx(1.0, abs=0.05) for r in ratios)  # the shift was removed
    line = compare_markdown.verdict_line(result)
    assert line.startswith("**SAME**") and "confirm with" not in line


def test_uniform_slowdown_with_the_canary_unchanged_is_one_regression(tmp_path: Path) -> None:
    head = slower(make_records(seed=2), 1.2)
    b, h = runs(tmp_path, make_records(seed=1), head)
    result = compare.compare_runs(b, h, n_boot=400)
    assert result.shift is not None and result.shift.factor == pytest.approx(1.2, rel=0.03)
    assert result.shift.n == result.shift.of == 6
    assert compare.exit_code(result) == 1 and result.verdict == compare.REGRESSED
    assert not result.regressions  # one shared finding, judged once: not six regressions
    line = compare_markdown.verdict_line(result)
    assert "one shift shared by most cases" in line and "a global change" in line and "confirm" not in line


def test_a_second_change_on_top_of_a_shared_shift_is_still_found(tmp_path: Path) -> None:
    head = slower(slower(make_records(seed=2), 1.2), 1.5, ["linear"])
    b, h = runs(tmp_path, make_records(seed=1), head)
    result = compare.compare_runs(b, h, n_boot=400)
    assert result.shift is not None and {c.label for c in result.regressions} == {"linear"}


@pytest.mark.parametrize("canary", [0.93, 1.07])
def test_a_2x_slowdown_of_one_variant_is_regressed_whatever_the_canary_did(tmp_path: Path, canary) -> None:
    head = slower(make_records(seed=2), 2.0 * canary, ["linear"])  # the machine moved too, by `canary`
    head = slower(head, canary, ["softmax", "flash"])
    b, h = runs(tmp_path, make_records(seed=1), head, canary=(1.0, canary))
    result = compare.compare_runs(b, h, n_boot=400)
    assert result.drift.moved and {c.label for c in result.regressions} == {"linear"}
    assert compare.exit_code(result) == 1
    assert compare_markdown.verdict_line(result).startswith("**REGRESSED**: 2 of 6")


def test_a_change_the_canary_alone_explains_is_not_confirmed(tmp_path: Path) -> None:
    # the canary says the head machine was 7% faster, the cases did not move: corrected, they look
    # 7.5% slower; uncorrected they are the same. Inside the canary's range: never REGRESSED.
    b, h = runs(tmp_path, make_records(seed=1), make_records(seed=2), canary=(1.0, 0.93))
    result = compare.compare_runs(b, h, n_boot=400)
    assert not result.regressed and compare.exit_code(result) == 0
    reasons = [c.finding("time_ms_median").reason for c in result.cases if c.verdict == compare.AMBIGUOUS]
    assert reasons and all("canary's range" in r for r in reasons)
    assert result.verdict == compare.AMBIGUOUS
    assert compare_markdown.verdict_line(result).startswith("**AMBIGUOUS**")


def test_change_within_the_canary_wander_is_ambiguous(tmp_path: Path) -> None:
    def four(seed: int) -> list[Record]:  # too few cases for a cross-case floor: the wander stands in
        return [r for r in make_records(seed=seed) if r.label != "softmax"]

    head = slower(four(2), 1.1, ["linear"])
    b, h = write_run(tmp_path / "b", four(1)), write_run(tmp_path / "h", head)
    for run in (b, h):
        write_canary(run, 1.0, wander=0.3, seed=5)  # the same points: no shift, a wide wander
    result = compare.compare_runs(b, h, n_boot=400)
    assert result.drift.ratio == 1.0 and result.drift.wander > 1.1 and not result.regressions
    reasons = [c.finding("time_ms_median").reason for c in result.cases if c.label == "linear"]
    assert all("canary's wander" in r or "canary's range" in r for r in reasons)  # a noisy canary is unsure
    quiet = compare.compare_runs(*runs(tmp_path / "q", four(1), head), n_boot=400)
    assert {c.label for c in quiet.regressions} == {"linear"}  # the same change on a quiet machine


def test_self_compare_is_same_even_with_few_samples(tmp_path: Path) -> None:
    recs = make_records(seed=3, n_samples=3, noise=0.3)  # too few and too noisy for any test
    b = write_run(tmp_path / "run", recs)
    result = compare.compare_runs(b, b, n_boot=200)
    assert {c.verdict for c in result.cases} == {compare.SAME} and result.verdict == compare.SAME
    assert compare_markdown.verdict_line(result).startswith("**SAME**")


def test_headline_ignores_unconfirmed_verdicts(tmp_path: Path) -> None:
    head = make_records(seed=2, n_samples=3)  # few samples: AMBIGUOUS or SAME, never confirmed
    result = compare.compare_runs(*runs(tmp_path, make_records(seed=1, n_samples=3), head), n_boot=200)
    assert result.verdict == compare.SAME


def test_no_canary_is_reported_and_not_corrected(tmp_path: Path) -> None:
    b, h = write_run(tmp_path / "b", make_records(seed=1)), write_run(tmp_path / "h", make_records(seed=2))
    result = compare.compare_runs(b, h, n_boot=200)
    assert result.drift.ratio is None and result.drift.scale == 1.0
    assert "no canary" in compare_markdown.render_verdict_markdown(result)


def test_drift_rules_directly() -> None:
    moved = Drift(1.1, {}, 1.0, 3, 3, 0.05, ci=0.02)
    lo, hi = moved.correction_range()
    assert lo == 1.0 and hi == pytest.approx(1.1 * np.exp(0.02))  # between no change and the canary's
    assert moved.worst_scale(slower=True) == hi and moved.worst_scale(slower=False) == 1.0
    assert Drift(None).correction_range() == (1.0, 1.0)
    noisy = Drift(1.0, {}, 1.0, 3, 3, 0.05, floor=1.3, center=1.0, floor_cases=10)
    assert noise_reason(1.3, noisy) and noise_reason(1.05 * 1.3 * 1.01, noisy) is None  # additive in log
    wander = Drift(1.0, {}, 1.1, 3, 3, 0.05)  # too few cases: the wander stands in for their noise
    assert noise_reason(1.15, wander) and noise_reason(1.16, wander) is None
    clean = [1.0 + 0.01 * i for i in range(50)]
    hit = clean[:20] + [3.0 * x for x in clean[20:]]  # 60% of the samples preempted: 3x slower
    assert np.median(hit) / np.median(clean) > 2.5 and fast_ratio(clean, hit) == pytest.approx(1.0)
    assert fast_ratio(clean, [1.5 * x for x in hit]) == pytest.approx(1.5)  # code: every sample slower
    assert fast_ratio([], clean) is None and fast_ratio(clean, [0.0, 1.0]) is None
    assert shared_shift([(compare.REGRESSED, 1.2)] * 3, 1.0) is None  # too few cases
    mixed = [(compare.REGRESSED, 1.2)] * 5 + [(compare.SAME, 1.0)] * 3
    assert shared_shift(mixed, 1.0) is None  # 5 of 8 < 75%


def test_canary_times_the_workloads() -> None:
    out = time_canary("cpu", reps=2)
    assert all(out[w] > 0 for w in WORKLOADS)
    assert len(out["matmul_samples"]) == 2 * MATMUL_SLICES and len(out["copy_samples"]) == 2 * COPY_CHUNKS
    assert out["matmul_ms"] == pytest.approx(MATMUL_SLICES * float(np.median(out["matmul_samples"])))
    assert out["copy_ms"] == pytest.approx(COPY_CHUNKS * float(np.median(out["copy_samples"])))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of TINY in child workers (the default executor): softmax and flash first, then
    the rest with --resume, so the canary's lines of both invocations are in the run."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.yaml").write_text(TINY)
    out = folder / "run"
    scenario = load_scenario(str(folder / "tiny.yaml"))
    run_scenario(scenario, out, "cpu", reporter=QuietReporter(), only=["softmax", "flash"], plots=False)
    run_scenario(scenario, out, "cpu", reporter=QuietReporter(), resume=True, plots=False)
    return out


def test_a_run_records_its_canary_from_start_to_end_across_resume(tiny_run: Path) -> None:
    points = read_canary(tiny_run)
    assert [p["where"] for p in points].count("start") == 2 and points[-1]["where"] == "end"
    assert {p["worker"] for p in points} == {"main", "w0"}  # the runner and the child worker
    assert all(p["matmul_ms"] > 0 and p["copy_ms"] > 0 for p in points)
    assert {r["label"] for r in read_records(tiny_run / "records.jsonl")} == {"softmax", "flash", "linear"}


def test_planted_slowdown_in_a_copied_real_run(tiny_run: Path, tmp_path: Path) -> None:
    head = tmp_path / "head"
    shutil.copytree(tiny_run, head)
    rows = read_records(head / "records.jsonl")
    (head / "records.jsonl").unlink()
    for row in rows:
        if row["label"] == "linear":
            row["time_ms_samples"] = [1.5 * x for x in row["time_ms_samples"]]
        append_record(head / "records.jsonl", Record.from_dict(row))
    result = compare.compare_runs(tiny_run, head)
    # on a loaded CPU a case's own samples can be too noisy for a verdict (AMBIGUOUS), never wrong
    assert {c.label for c in result.regressions} == {"linear"} and compare.exit_code(result) == 1
    assert all(
        c.verdict in (compare.REGRESSED, compare.AMBIGUOUS) for c in result.cases if c.label == "linear"
    )
    same = compare.compare_runs(tiny_run, tiny_run)
    assert same.verdict == compare.SAME and {c.verdict for c in same.cases} == {compare.SAME}


@pytest.mark.slow
def test_twenty_serial_aa_compares_never_regress(tmp_path: Path) -> None:
    """21 serial runs of the same tiny scenario on this CPU; each compared with the next."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    scenario = load_scenario(str(tmp_path / "tiny.yaml"))
    outs = []
    for i in range(21):
        outs.append(tmp_path / f"run{i}")
        run_scenario(scenario, outs[-1], "cpu", reporter=QuietReporter(), executor="inline", plots=False)
    results = [compare.compare_runs(a, b) for a, b in zip(outs, outs[1:], strict=False)]
    regressed = [(i, [c.label for c in r.regressions], r.shift) for i, r in enumerate(results) if r.regressed]
    assert not regressed


def test_ab_merge_keeps_every_rounds_canary(tmp_path: Path) -> None:
    from harness.regress.ab import merge_rounds

    rounds = []
    for i, factor in enumerate((1.0, 1.3)):
        run = write_run(tmp_path / f"round{i}", make_records(seed=i))
        write_canary(run, factor, points=3)
        rounds.append(run)
    merge_rounds(rounds, tmp_path / "merged")
    points = read_canary(tmp_path / "merged")
    assert len(points) == 6 and len(list((tmp_path / "merged").glob("canary.round*-w0.jsonl"))) == 2
    drift = compare.compare_runs(tmp_path / "merged", tmp_path / "merged", n_boot=100).drift
    assert drift.wander > 1.1  # the two rounds' machines differed: that is wander, not a shift


def many(seed: int, case_noise: float = 0.0) -> list[Record]:
    """18 cases (3 copies of make_records' 6), each case's samples scaled by its own run-to-run
    factor exp(case_noise * z) (seeded): unchanged code whose cases drift apart between runs."""
    rng = np.random.default_rng(100 + seed)
    out = []
    for k in range(3):
        for r in make_records(seed=seed * 10 + k):
            f = float(np.exp(case_noise * rng.standard_normal()))
            samples = [f * x for x in r.metrics["time_ms_samples"]]
            out.append(r.replace(case_id=f"{r.case_id}-{k}", label=f"{r.label}{k}", time_ms_samples=samples))
    return out


def test_case_changes_within_every_cases_spread_are_ambiguous(tmp_path: Path) -> None:
    b, h = runs(tmp_path, many(1, case_noise=0.12), many(2, case_noise=0.12))
    result = compare.compare_runs(b, h, n_boot=300)
    assert result.drift.floor > 1.2 and not result.regressions and compare.exit_code(result) == 0
    assert "the cases' noise" in compare_markdown.render_verdict_markdown(result)


def test_one_configuration_stands_out_of_a_quiet_spread(tmp_path: Path) -> None:
    head = slower(many(2, case_noise=0.01), 1.5, ["linear0"])
    result = compare.compare_runs(*runs(tmp_path, many(1, case_noise=0.01), head), n_boot=300)
    assert result.drift.floor < 1.1 and {c.label for c in result.regressions} == {"linear0"}


def preempted(seed: int, most: float = 0.7) -> list[Record]:
    """18 cases (3 copies of make_records' 6) of 60 samples; in each case a seeded fraction (0 to
    `most`) of its samples is preempted, 2-4x slower: what load on a shared machine does to two
    runs of unchanged code. The medians move by up to 3x between runs, the fastest samples do not."""
    rng = np.random.default_rng(200 + seed)
    out = []
    for k in range(3):
        for r in make_records(seed=seed * 10 + k, n_samples=60):
            samples = np.array(r.metrics["time_ms_samples"])
            hit = rng.random(samples.size) < rng.uniform(0.0, most)
            samples[hit] *= rng.uniform(2.0, 4.0, int(hit.sum()))
            out.append(
                r.replace(case_id=f"{r.case_id}-{k}", label=f"{r.label}{k}", time_ms_samples=samples.tolist())
            )
    return out


def test_preempted_samples_raise_no_alarm(tmp_path: Path) -> None:
    result = compare.compare_runs(*runs(tmp_path, preempted(1), preempted(2)), n_boot=300)
    medians = [f.ratio for c in result.cases if (f := c.finding("time_ms_median"))]
    assert max(medians) / min(medians) > 2.0  # the medians moved apart
    assert not result.regressions and compare.exit_code(result) == 0


def test_a_slowdown_stands_out_of_preempted_medians(tmp_path: Path) -> None:
    """A 1.5x slowdown of one configuration among cases whose medians preemption moved apart: its
    fastest samples moved 1.5x, the others' hardly, so it is confirmed (judged on the medians'
    spread it would not be)."""
    head = slower(preempted(2), 1.5, ["linear0"])
    result = compare.compare_runs(*runs(tmp_path, preempted(1), head), n_boot=300)
    assert {c.label for c in result.regressions} == {"linear0"} and compare.exit_code(result) == 1
    assert result.drift.floor < 1.15
