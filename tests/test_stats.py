"""Statistics behind the compare verdicts and the efficiency length, on seeded synthetic samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.measure import stats
from harness.measure.stats import (
    AMBIGUOUS,
    IMPROVED,
    REGRESSED,
    SAME,
    bootstrap_ratio_ci,
    geomean,
    loglog_crossover,
    time_verdict,
)

N_BOOT = 500  # enough for alpha = 0.01 tails in tests, 4x cheaper than the default


def _samples(rng: np.random.Generator, n: int, scale: float = 1.0, noise: float = 0.02) -> np.ndarray:
    """(n,) positive timings around `scale` ms with relative Gaussian noise."""
    return scale * (1.0 + noise * rng.standard_normal(n))


def test_aa_false_alarm_rate_below_5_percent() -> None:
    alarms = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        st = time_verdict(_samples(rng, 20), _samples(rng, 20), n_boot=N_BOOT, seed=seed)
        alarms += st.verdict in (REGRESSED, IMPROVED)
    assert alarms / 200 < 0.05


@pytest.mark.parametrize(("shift", "expected"), [(1.10, REGRESSED), (1 / 1.10, IMPROVED)])
def test_detects_a_10_percent_shift_with_20_samples(shift: float, expected: str) -> None:
    hits = 0
    for seed in range(50):
        rng = np.random.default_rng(1000 + seed)
        st = time_verdict(_samples(rng, 20), _samples(rng, 20, scale=shift), n_boot=N_BOOT, seed=seed)
        hits += st.verdict == expected
        assert st.ratio == pytest.approx(shift, rel=0.03)
    assert hits / 50 >= 0.95


def test_shift_inside_the_threshold_is_same() -> None:
    rng = np.random.default_rng(7)
    st = time_verdict(_samples(rng, 40, noise=0.005), _samples(rng, 40, 1.02, noise=0.005), n_boot=N_BOOT)
    assert st.verdict == SAME
    assert st.ci_lo is not None and st.ci_lo > 1.0  # a real 2 % change, but below the 5 % threshold


@pytest.mark.parametrize("threshold", [0.05, 0.10])
def test_threshold_option(threshold: float) -> None:
    rng = np.random.default_rng(3)
    base, head = _samples(rng, 30, noise=0.005), _samples(rng, 30, scale=1.07, noise=0.005)
    st = time_verdict(base, head, threshold=threshold, n_boot=N_BOOT)
    assert st.verdict == (REGRESSED if threshold == 0.05 else SAME)


def test_noisy_samples_without_a_change_are_ambiguous_not_regressed() -> None:
    verdicts = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        base, head = np.exp(0.5 * rng.standard_normal(8)), np.exp(0.5 * rng.standard_normal(8))
        verdicts.append(time_verdict(base, head, n_boot=N_BOOT, seed=seed).verdict)
    assert verdicts.count(AMBIGUOUS) >= 45  # the data cannot resolve a 5 % change
    assert verdicts.count(REGRESSED) <= 1


@pytest.mark.parametrize(
    ("base", "head", "expected"),
    [
        ([1.0, 1.01, 0.99], [1.0, 1.02, 0.98], SAME),  # every pair within the wide band
        ([1.0, 1.01, 0.99], [1.5, 1.52, 1.49], AMBIGUOUS),  # slower, but 3 samples cannot be tested
        ([1.0, 2.0, 0.5], [1.0, 1.0, 1.0], AMBIGUOUS),  # too spread to call SAME
        ([], [1.0] * 10, AMBIGUOUS),
        ([1.0, float("nan"), 1.0, 1.0, 1.0], [1.0] * 5, AMBIGUOUS),
        ([0.0] * 5, [1.0] * 5, AMBIGUOUS),
    ],
)
def test_few_or_bad_samples(base: list[float], head: list[float], expected: str) -> None:
    assert time_verdict(base, head, min_samples=5, n_boot=N_BOOT).verdict == expected


def test_bootstrap_is_seeded_and_covers_the_true_ratio() -> None:
    rng = np.random.default_rng(11)
    base, head = _samples(rng, 25), _samples(rng, 25, scale=1.3)
    first = bootstrap_ratio_ci(base, head, alpha=0.01, n_boot=N_BOOT, seed=5)
    assert first == bootstrap_ratio_ci(base, head, alpha=0.01, n_boot=N_BOOT, seed=5)
    ratio, lo, hi = first
    assert lo < 1.3 < hi
    assert lo <= ratio <= hi


def test_geomean() -> None:
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert geomean([1.5]) == pytest.approx(1.5)
    assert math.isnan(geomean([]))


@pytest.mark.parametrize(("n_star", "slope"), [(3000.0, -1.0), (700.0, -0.5), (20000.0, -2.0)])
def test_crossover_is_exact_for_power_laws(n_star: float, slope: float) -> None:
    lengths = [256, 1024, 4096, 16384, 65536]
    ratios = [(n / n_star) ** slope for n in lengths]  # > 1 below n_star, < 1 above
    c = loglog_crossover(lengths, ratios)
    assert c.kind == "between"
    assert c.length == pytest.approx(n_star, rel=1e-9)
    assert c.lo is not None and c.hi is not None and c.lo < n_star < c.hi


@pytest.mark.parametrize(
    ("ratios", "kind", "length"),
    [
        ([0.5, 0.4, 0.3], "always", 1024.0),
        ([2.0, 1.5, 1.2], "never", None),
        ([0.8, 1.5, 0.5], "between", None),  # the last slower length decides: crossing after 2048
        ([1.0, 1.0, 0.5], "between", 2048.0),  # equal time counts as not yet faster
    ],
)
def test_crossover_kinds(ratios: list[float], kind: str, length: float | None) -> None:
    c = loglog_crossover([1024, 2048, 4096], ratios)
    assert c.kind == kind
    if length is not None:
        assert c.length == pytest.approx(length)
    if kind == "between":
        assert c.lo == 2048 and c.hi == 4096


def test_crossover_without_points() -> None:
    assert loglog_crossover([], []).kind == "none"


def test_round_to_round_drift_is_noise_not_a_change() -> None:
    """Interleaved A/A rounds with a 12% drift between rounds: pooled samples call it a change,
    the two-level bootstrap over rounds does not; a real 50% slowdown is still caught."""
    rng = np.random.default_rng(3)

    def round_of(level: float) -> list[float]:
        return list(level * (1.0 + 0.01 * rng.standard_normal(30)))

    base_rounds = [round_of(1.0), round_of(1.12), round_of(1.0)]
    head_rounds = [round_of(1.12), round_of(1.12), round_of(1.0)]
    pooled = stats.time_verdict(sum(base_rounds, []), sum(head_rounds, []), threshold=0.05)
    assert pooled.verdict == stats.REGRESSED  # what a stored-baseline comparison would say
    rounds = stats.time_verdict(
        sum(base_rounds, []),
        sum(head_rounds, []),
        threshold=0.05,
        base_rounds=base_rounds,
        head_rounds=head_rounds,
    )
    assert rounds.verdict != stats.REGRESSED and rounds.ci_lo < 1.025
    slow_rounds = [[x * 1.5 for x in r] for r in base_rounds]
    slow = stats.time_verdict(
        sum(base_rounds, []),
        sum(slow_rounds, []),
        threshold=0.05,
        base_rounds=base_rounds,
        head_rounds=slow_rounds,
    )
    assert slow.verdict == stats.REGRESSED
