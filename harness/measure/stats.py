"""Statistics for comparing timings and reading curves: bootstrap CIs, Mann-Whitney, crossovers.

Timing samples are noisy and skewed (a few slow outliers), so comparisons work on medians:
the time ratio is median(head) / median(base), with a percentile bootstrap confidence interval
(resampling each side independently) and a two-sided Mann-Whitney U test as a second,
rank-based opinion. A time change is only called when the point estimate is beyond the
threshold band AND both tests are confident; otherwise it is SAME or AMBIGUOUS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu

REGRESSED, IMPROVED, SAME, AMBIGUOUS = "REGRESSED", "IMPROVED", "SAME", "AMBIGUOUS"


@dataclass(frozen=True)
class TimeStats:
    """Outcome of comparing two sets of timing samples (ratio > 1 means head is slower)."""

    verdict: str  # REGRESSED | IMPROVED | SAME | AMBIGUOUS
    ratio: float | None  # median(head) / median(base)
    ci_lo: float | None  # bootstrap CI of the ratio at level 1 - alpha
    ci_hi: float | None
    p_value: float | None  # two-sided Mann-Whitney U
    n_base: int
    n_head: int
    reason: str = ""


def bootstrap_ratio_ci(
    base: Sequence[float], head: Sequence[float], alpha: float = 0.01, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(ratio, lo, hi): median(head)/median(base) and its percentile bootstrap CI at 1 - alpha.

    base: (n_b,) and head: (n_h,) positive samples. Each bootstrap replicate resamples both sides
    with replacement; all replicates are drawn at once as (n_boot, n) index arrays.
    """
    b = np.asarray(base, dtype=np.float64)
    h = np.asarray(head, dtype=np.float64)
    rng = np.random.default_rng(seed)
    b_star = np.median(b[rng.integers(0, b.size, size=(n_boot, b.size))], axis=1)  # (n_boot,)
    h_star = np.median(h[rng.integers(0, h.size, size=(n_boot, h.size))], axis=1)  # (n_boot,)
    lo, hi = np.quantile(h_star / b_star, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(np.median(h) / np.median(b)), float(lo), float(hi)


def _hierarchical_medians(
    rounds: Sequence[Sequence[float]], rng: np.random.Generator, n_boot: int
) -> np.ndarray:
    """(n_boot,) medians of two-level bootstrap replicates: draw the rounds with replacement, then
    each drawn round's samples with replacement (its own size), and pool them. The spread of
    these medians includes the round-to-round drift that pooled samples hide."""
    k = len(rounds)
    sizes = np.array([len(r) for r in rounds])
    padded = np.full((k, int(sizes.max())), np.nan)
    for i, r in enumerate(rounds):
        padded[i, : len(r)] = r
    picked = rng.integers(0, k, size=(n_boot, k))  # (n_boot, k) round indices
    counts = sizes[picked]  # (n_boot, k)
    slots = np.arange(padded.shape[1])  # (max_n,)
    draw = np.floor(rng.random((n_boot, k, padded.shape[1])) * counts[..., None]).astype(np.int64)
    values = padded[picked[..., None], draw]  # (n_boot, k, max_n)
    values[slots[None, None, :] >= counts[..., None]] = np.nan  # a round contributes its own size
    return np.nanmedian(values.reshape(n_boot, -1), axis=1)


def hierarchical_ratio_ci(
    base_rounds: Sequence[Sequence[float]],
    head_rounds: Sequence[Sequence[float]],
    alpha: float = 0.01,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(ratio, lo, hi) like `bootstrap_ratio_ci`, for samples taken in several rounds (runs) per
    side: rounds are resampled before samples, so drift between runs widens the interval."""
    rng = np.random.default_rng(seed)
    b_star = _hierarchical_medians(base_rounds, rng, n_boot)
    h_star = _hierarchical_medians(head_rounds, rng, n_boot)
    lo, hi = np.quantile(h_star / b_star, [alpha / 2.0, 1.0 - alpha / 2.0])
    b = np.concatenate([np.asarray(r, dtype=np.float64) for r in base_rounds])
    h = np.concatenate([np.asarray(r, dtype=np.float64) for r in head_rounds])
    return float(np.median(h) / np.median(b)), float(lo), float(hi)


def mann_whitney_p(base: Sequence[float], head: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value that head and base come from the same distribution."""
    return float(mannwhitneyu(np.asarray(head), np.asarray(base), alternative="two-sided").pvalue)


def time_verdict(
    base: Sequence[float],
    head: Sequence[float],
    threshold: float = 0.05,
    alpha: float = 0.01,
    min_samples: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
    base_rounds: Sequence[Sequence[float]] | None = None,
    head_rounds: Sequence[Sequence[float]] | None = None,
) -> TimeStats:
    """Verdict on head vs base timing samples (ms).

    base: (n_b,) and head: (n_h,) raw samples of the same case. base_rounds / head_rounds: the
    same samples split by the run (round) that took them, when each side ran more than once
    (`ab`); with at least two rounds on both sides the CI is the two-level bootstrap of
    `hierarchical_ratio_ci`, so run-to-run drift counts as noise, not as a change. The band is
    [1 / (1 + t), 1 + t] on the ratio median(head) / median(base), t = threshold; the wide band
    uses 2t and bounds what "SAME" can hide.

    REGRESSED: ratio > 1 + t, CI lower bound > 1 + t/2 (confident of at least half the threshold,
               not merely of some change) and Mann-Whitney p < alpha.
    IMPROVED:  ratio < 1 / (1 + t), CI upper bound < 1 / (1 + t/2) and p < alpha (symmetric in log).
    SAME:      ratio inside the band and the CI inside the wide band (a hidden change is < 2t);
               with fewer than `min_samples` samples on a side (no test possible): every
               head/base sample pair inside the wide band.
    AMBIGUOUS: anything else: beyond the band but not confident, or too noisy / too few samples
               to tell. Never a failure.
    """
    b = np.asarray(base, dtype=np.float64)
    h = np.asarray(head, dtype=np.float64)
    nb, nh = int(b.size), int(h.size)
    if nb == 0 or nh == 0:
        return TimeStats(AMBIGUOUS, None, None, None, None, nb, nh, "no raw timing samples")
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(h)) and b.min() > 0 and h.min() > 0):
        return TimeStats(AMBIGUOUS, None, None, None, None, nb, nh, "non-positive or non-finite samples")
    ratio = float(np.median(h) / np.median(b))
    up, down = 1.0 + threshold, 1.0 / (1.0 + threshold)
    wide_up, wide_down = 1.0 + 2.0 * threshold, 1.0 / (1.0 + 2.0 * threshold)
    in_band = down <= ratio <= up
    if min(nb, nh) < min_samples:
        if in_band and wide_down <= h.min() / b.max() and h.max() / b.min() <= wide_up:
            return TimeStats(SAME, ratio, None, None, None, nb, nh, f"few samples ({nb} base, {nh} head)")
        reason = f"too few samples to test ({nb} base, {nh} head; need {min_samples})"
        return TimeStats(AMBIGUOUS, ratio, None, None, None, nb, nh, reason)
    if base_rounds and head_rounds and min(len(base_rounds), len(head_rounds)) >= 2:
        _, lo, hi = hierarchical_ratio_ci(base_rounds, head_rounds, alpha=alpha, n_boot=n_boot, seed=seed)
    else:
        _, lo, hi = bootstrap_ratio_ci(b, h, alpha=alpha, n_boot=n_boot, seed=seed)
    p = mann_whitney_p(b, h)
    ci = f"CI {lo:.3f}-{hi:.3f}, p={p:.2g}"
    if not in_band:
        slower = ratio > up
        margin_up, margin_down = 1.0 + threshold / 2.0, 1.0 / (1.0 + threshold / 2.0)
        if (lo > margin_up if slower else hi < margin_down) and p < alpha:
            return TimeStats(REGRESSED if slower else IMPROVED, ratio, lo, hi, p, nb, nh)
        why = f"{'slower' if slower else 'faster'} beyond {threshold:.0%} but not significant ({ci})"
        return TimeStats(AMBIGUOUS, ratio, lo, hi, p, nb, nh, why)
    if lo < wide_down or hi > wide_up:
        why = f"too noisy to rule out a {2 * threshold:.0%} change ({ci})"
        return TimeStats(AMBIGUOUS, ratio, lo, hi, p, nb, nh, why)
    return TimeStats(SAME, ratio, lo, hi, p, nb, nh)


def geomean(values: Sequence[float]) -> float:
    """Geometric mean of positive values (NaN for an empty sequence)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan
    return float(np.exp(np.mean(np.log(arr))))


@dataclass(frozen=True)
class Crossover:
    """Where a time ratio (variant / reference) drops below 1 for good.

    kind: "between" (length is the log-log interpolated crossover), "always" (faster at every
    measured length, so the crossover is <= lengths[0]), "never" (still slower at the longest
    measured length), or "none" (no length measured by both).
    """

    kind: str
    length: float | None
    lo: int | None = None  # bracketing measured lengths
    hi: int | None = None


def loglog_crossover(lengths: Sequence[int], ratios: Sequence[float]) -> Crossover:
    """Length N* at which `ratios` (variant time / reference time, at ascending `lengths`) crosses 1.

    Uses the last length where the variant is slower (ratio >= 1) and the next one (where it is
    faster), and interpolates log(ratio) linearly in log(N) between them; exact for power laws.
    """
    pairs = sorted((int(n), float(r)) for n, r in zip(lengths, ratios, strict=True) if r > 0)
    if not pairs:
        return Crossover("none", None)
    ns = [n for n, _ in pairs]
    rs = [r for _, r in pairs]
    slower = [i for i, r in enumerate(rs) if r >= 1.0]
    if not slower:
        return Crossover("always", float(ns[0]), None, ns[0])
    s = slower[-1]
    if s == len(rs) - 1:
        return Crossover("never", None, ns[-1], None)
    x0, x1 = math.log(ns[s]), math.log(ns[s + 1])
    y0, y1 = math.log(rs[s]), math.log(rs[s + 1])
    x = x0 + (0.0 - y0) * (x1 - x0) / (y1 - y0)
    return Crossover("between", math.exp(x), ns[s], ns[s + 1])
