"""`ab`'s adaptive rounds (`interleave`): it stops once every case's 1.3x change is decided, runs
more rounds (up to the cap) while some case could still hide one, and never says "confirm with ab".

Rounds are synthetic run directories (records from tests/test_compare.py, canary lines from
tests/test_drift.py); `interleave` gets a `run_side` that writes them instead of running git
checkouts, which is the only part of `ab` left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.regress import compare, compare_markdown
from harness.regress.ab import interleave, undecided
from tests.test_compare import make_records, write_run
from tests.test_drift import slower, write_canary


def side_writer(head_factor: float, noise: float, calls: list):
    """run_side for `interleave`: a run of make_records (seeded per round and side) whose linear
    cases are `head_factor` slower on the head side; `noise` is each case's sample noise."""

    def run_side(side: str, r: int, run_dir: Path) -> None:
        calls.append((side, r))
        seed = 2 * r + (side == "head")
        rng = np.random.default_rng(seed)
        recs = [  # multiplicative (log-normal) noise: times stay positive however noisy
            rec.replace(time_ms_samples=[x * float(np.exp(noise * rng.standard_normal())) for x in s])
            for rec in make_records(seed=seed, n_samples=8, noise=0.0, run_id=f"{side}{r}")
            for s in [rec.metrics["time_ms_samples"]]
        ]
        if side == "head" and head_factor != 1.0:
            recs = slower(recs, head_factor, ["linear"])
        write_run(run_dir, recs)
        write_canary(run_dir, 1.0, seed=seed)

    return run_side


def judge(base: Path, head: Path) -> compare.ComparisonResult:
    return compare.compare_runs(base, head, n_boot=300)


def test_a_clear_slowdown_is_decided_at_the_minimum_rounds(tmp_path: Path) -> None:
    calls: list = []
    result = interleave(side_writer(1.5, 0.02, calls), tmp_path, judge, min_rounds=2, max_rounds=6)
    assert result.rounds == 2 and calls == [("base", 0), ("head", 0), ("head", 1), ("base", 1)]
    assert {c.label for c in result.regressions} == {"linear"} and compare.exit_code(result) == 1
    assert not undecided(result)


def test_noisy_cases_get_more_rounds_up_to_the_cap_and_stay_ambiguous(tmp_path: Path, capsys) -> None:
    calls: list = []
    result = interleave(side_writer(1.0, 0.6, calls), tmp_path, judge, min_rounds=2, max_rounds=4)
    assert result.rounds == 4 and len(calls) == 8  # every round ran: some case could hide a 1.3x change
    assert "one more round" in capsys.readouterr().err
    assert undecided(result) and compare.exit_code(result) == 0
    md = compare_markdown.render_verdict_markdown(result)
    assert "still undecided after 4 interleaved rounds" in md and "confirm with" not in md
    assert md.startswith("**AMBIGUOUS**")


def test_more_rounds_narrow_the_interval(tmp_path: Path) -> None:
    widths = []
    for rounds in (2, 5):
        out = tmp_path / f"r{rounds}"
        result = interleave(side_writer(1.0, 0.3, []), out, judge, min_rounds=rounds, max_rounds=rounds)
        cis = [c.finding("time_ms_median").ci for c in result.cases]
        widths.append(float(np.median([np.log(hi / lo) for lo, hi in cis])))
    assert widths[1] < widths[0] * 0.8


@pytest.mark.parametrize(("rounds", "max_rounds"), [(1, 3), (3, 2)])
def test_bad_round_options_are_one_line_exit_2(rounds: int, max_rounds: int, capsys) -> None:
    from harness.cli import main

    code = main(["ab", "quick", "--base", "HEAD", "--rounds", str(rounds), "--max-rounds", str(max_rounds)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rounds" in err[0]
