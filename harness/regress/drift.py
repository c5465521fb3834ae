"""Drift between two runs: what the canary says, how sure it is, and a shift shared by every case.

Most of the time difference between two runs on a shared machine is drift between them (other
load, clocks, thermal state), which no statistic inside one run sees. Each run times a fixed
canary workload at intervals (harness/measure/canary.py); here:

- `canary_drift`: the head/base ratio of the canary's median times (geometric mean over its
  workloads), its own uncertainty (`ci`: CANARY_Z standard errors of that log ratio, from the
  spread of the canary points around their run's median), and how far the canary strays from its
  own run's median while the runs go on (`wander`).
- The correction is uncertain as a whole: the canary times the machine at other moments than a
  case, so the true machine change lies anywhere between none and the canary's ratio (widened by
  its `ci`): `Drift.correction_range`. `compare` confirms a time change only when it holds at the
  end of that range least favourable to it (`worst_scale`): a 2x slowdown with the canary at 1.07x
  is still >= 1.87x, a uniform 1.2x with the canary at 1.2x is nothing. There is no blanket veto:
  a large canary move only makes the evidence needed larger, by its own size.
- `with_floor`: the cases' noise between the runs, FLOOR_SIGMAS robust standard deviations of
  every case's (corrected) change around their median, from >= FLOOR_MIN_CASES cases (else the
  canary's wander stands in); `noise_reason` says when a change does not clear the threshold by
  more than that noise. Both the noise and the change judged against it are measured on the
  fastest FAST_QUANTILE of each case's samples (`fast_ratio`): load on a shared machine only ever
  adds time to a sample, and how many samples it hits, which moves a median, varies from run to
  run and case to case; a slowdown in code moves every sample, the fastest ones too.
- `lone_changes`: a confirmed change of one case that the other cases of its configuration do
  not share is AMBIGUOUS (a burst of load during that case's timing looks the same).
- `shared_shift`: when at least `SHARED_FRACTION` of the timed cases moved the same way, that is
  one finding (a global change, or drift the canary did not see), never many regressions;
  cases are then judged relative to the shift.
- `variant_times`: the per-configuration geometric mean of the (corrected) time ratios.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from harness.measure.canary import WORKLOADS, read_canary
from harness.measure.stats import AMBIGUOUS, IMPROVED, REGRESSED, SAME, geomean

SHARED_FRACTION = 0.75  # of the timed cases, moving the same way, make a shared shift
SHARED_MIN_CASES = 4  # fewer timed cases never make a shared shift
FLOOR_MIN_CASES = 6  # fewer timed cases give no cross-case noise floor (too few to estimate it)
FLOOR_SIGMAS = 2.5  # the cases' noise band, added to the threshold (one-sided, per case)
WANDER_SIGMAS = 2.0  # the wander band: this many robust standard deviations of the canary points
CANARY_Z = 2.576  # the canary ratio's uncertainty: a two-sided 99% normal interval of its log
FAST_QUANTILE = 0.1  # the cases' noise and a case's change against it: the fastest tenth of its samples


@dataclass(frozen=True)
class Drift:
    """The canary's head/base ratio (> 1: the head run's machine was slower), its uncertainty and
    its wander, and (after `with_floor`) the cases' noise between the runs."""

    ratio: float | None  # None: a run has no canary (recorded before it existed)
    workloads: dict[str, float] = field(default_factory=dict)  # workload -> head/base median ratio
    wander: float = 1.0  # >= 1: the band the canary strays within around its run's median
    n_base: int = 0  # canary points in each run
    n_head: int = 0
    threshold: float = 0.05
    floor: float = 1.0  # >= 1: the cases' noise band between the runs (`with_floor`)
    center: float = 1.0  # the median case change the floor is centred on
    floor_cases: int = 0  # cases the floor was measured on (0: too few; the wander stands in for it)
    ci: float = 0.0  # >= 0, log units: the canary ratio's own uncertainty (CANARY_Z standard errors)
    # label -> (floor, center, cases) measured on the other configurations' cases only
    floors: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """What head times are divided by for the reported (point) correction (1 without a canary)."""
        return self.ratio if self.ratio is not None else 1.0

    @property
    def moved(self) -> bool:
        """The canary moved more than half the threshold between the runs (described, never a veto)."""
        return self.ratio is not None and abs(math.log(self.ratio)) > math.log1p(self.threshold / 2)

    def correction_range(self) -> tuple[float, float]:
        """(lo, hi): the machine change between the runs lies between no change and the canary's
        ratio widened by its uncertainty, as factors head times may be divided by."""
        if self.ratio is None:
            return 1.0, 1.0
        c = math.log(self.ratio)
        return math.exp(min(0.0, c - self.ci)), math.exp(max(0.0, c + self.ci))

    def worst_scale(self, slower: bool) -> float:
        """The correction least favourable to a change in that direction: the largest factor for
        a slowdown (it shrinks it), the smallest for a speed-up."""
        lo, hi = self.correction_range()
        return hi if slower else lo

    def noise_band(self) -> float:
        """>= 1: how far beyond the threshold (as a factor) a case's change must reach: the cases'
        noise between the runs, else the canary's wander when too few cases give it."""
        return self.floor if self.floor_cases else self.wander

    def describe(self) -> str:
        if self.ratio is None:
            side = "base" if not self.n_base else "head"
            return f"no canary in the {side} run: drift between the runs is not corrected"
        parts = ", ".join(f"{k.removesuffix('_ms')} {v:.3f}×" for k, v in self.workloads.items())
        lo, hi = self.correction_range()
        text = (
            f"canary head/base {self.ratio:.3f}× ({parts}; {self.n_base} and {self.n_head} points; "
            f"the machine change is taken as anywhere in {lo:.3f}-{hi:.3f}×), wander ±{self.wander - 1:.1%}"
        )
        if self.floor_cases:
            text += (
                f"; the cases' noise ±{self.floor - 1:.1%} around {self.center:.3f}× "
                f"({self.floor_cases} cases)"
            )
        return text


def _point_index(point: dict, medians: dict[str, float]) -> float:
    """A canary point's speed relative to its run's medians (geometric mean over workloads)."""
    return geomean([float(point[w]) / medians[w] for w in WORKLOADS])


def canary_drift(base_dir: Path, head_dir: Path, threshold: float) -> Drift:
    """The canary drift between two run directories (their `canary.*.jsonl`)."""
    base, head = read_canary(Path(base_dir)), read_canary(Path(head_dir))
    if not base or not head:
        return Drift(None, {}, 1.0, len(base), len(head), threshold)
    meds = [{w: median(float(p[w]) for p in pts) for w in WORKLOADS} for pts in (base, head)]
    workloads = {w: meds[1][w] / meds[0][w] for w in WORKLOADS}
    devs = [abs(math.log(_point_index(p, m))) for pts, m in zip((base, head), meds, strict=True) for p in pts]
    sigma = float(np.median(devs)) / 0.6745  # robust: one preempted canary point does not set the band
    wander = math.exp(WANDER_SIGMAS * sigma)
    # the standard error of a difference of two medians of n_b and n_h points (1.2533 sigma / sqrt n)
    se = 1.2533 * sigma * math.sqrt(1.0 / len(base) + 1.0 / len(head))
    ratio = geomean(list(workloads.values()))
    return Drift(ratio, workloads, wander, len(base), len(head), threshold, ci=CANARY_Z * se)


def fast_ratio(base: list[float], head: list[float]) -> float | None:
    """head/base ratio of the FAST_QUANTILE quantile of each side's raw time samples ((n_b,), (n_h,)
    in ms); None without samples on a side or with a non-positive one.

    Interference on a shared machine (preemption, a neighbour evicting the caches) only ever adds
    time to a sample, and the fraction of samples it hits varies between runs and between the cases
    of one run: it moves a case's median (measured on a loaded 2-core VM, two serial runs of
    unchanged code: the cases' medians spread 2.5x wider than their fastest tenth). A slowdown in
    code moves every sample, the fastest ones too."""
    b, h = np.asarray(base, dtype=np.float64), np.asarray(head, dtype=np.float64)
    if b.size == 0 or h.size == 0 or not (b.min() > 0 and h.min() > 0):
        return None
    return float(fast_time(h) / fast_time(b))


def fast_time(samples: Any) -> float | None:
    """The FAST_QUANTILE quantile of raw time samples (ms; non-positive or non-numeric ones left
    out), None without any: what `fast_ratio` compares and `history` stores as `time_ms_fast`."""
    given = samples if samples is not None else ()  # an array has no truth value: no `samples or ()`
    vals = [float(x) for x in given if isinstance(x, int | float) and x > 0]
    return float(np.quantile(vals, FAST_QUANTILE)) if vals else None


def noise_reason(ratio: float | None, drift: Drift, label: str | None = None) -> str | None:
    """Why a confirmed time change (REGRESSED/IMPROVED) is not evidence: `ratio`, the head/base
    `fast_ratio` after the worst-case correction, does not clear the threshold by more than the
    cases' noise between the runs (relative to their median change), measured on the other
    configurations' cases when `label` has its own band (`with_floor`); None when it does."""
    if ratio is None or ratio <= 0:
        return None
    floor, center, cases = drift.floors.get(label or "", (drift.floor, drift.center, drift.floor_cases))
    band = floor if cases else drift.wander
    need = math.log1p(drift.threshold) + math.log(band)
    change = math.log(ratio / center) if cases else math.log(ratio)
    if abs(change) > need:
        return None
    if cases:
        return (
            f"its fastest {FAST_QUANTILE:.0%} of samples moved {ratio:.3f}×: that does not clear the "
            "threshold by more than the cases' noise between the runs "
            f"(±{band - 1:.1%} around {center:.3f}×, {cases} cases of other configurations)"
        )
    return (
        f"its fastest {FAST_QUANTILE:.0%} of samples moved {ratio:.3f}×: that does not clear the "
        f"threshold by more than the canary's wander (±{band - 1:.1%})"
    )


def _band(ratios: list[float]) -> tuple[float, float, int] | None:
    """(floor, center, cases): FLOOR_SIGMAS robust standard deviations (MAD) of the logs of these
    ratios around their median, and that median; None below FLOOR_MIN_CASES cases."""
    logs = np.log([r for r in ratios if r > 0])
    if logs.size < FLOOR_MIN_CASES:
        return None
    center = float(np.median(logs))
    sigma = 1.4826 * float(np.median(np.abs(logs - center)))
    return math.exp(FLOOR_SIGMAS * sigma), math.exp(center), int(logs.size)


def with_floor(drift: Drift, ratios: list[tuple[str, float]]) -> Drift:
    """`drift` with the cross-case noise band of these (label, canary-corrected head/base
    `fast_ratio`) pairs: FLOOR_SIGMAS robust standard deviations (MAD) of their logs around their median,
    from at least FLOOR_MIN_CASES cases; for each configuration, the band of the other
    configurations' cases (a change being judged never widens its own yardstick). Unchanged code
    changes most cases' times by run-to-run noise alone (measured here: 0.66-1.65x between two
    serial runs on a loaded 2-core CPU, canary steady; their fastest tenths less, but still by
    tens of percent), so a case must clear the threshold by more than that spread; a regression of
    one configuration among many stands out of it."""
    every = _band([r for _, r in ratios])
    if every is None:
        return drift
    floors = {}
    for label in {lab for lab, _ in ratios}:
        band = _band([r for lab, r in ratios if lab != label])
        if band is not None:
            floors[label] = band
    floor, center, cases = every
    return replace(drift, floor=floor, center=center, floor_cases=cases, floors=floors)


@dataclass(frozen=True)
class SharedShift:
    """A time change shared by most cases: one finding, not many regressions."""

    verdict: str  # REGRESSED (slower) or IMPROVED (faster)
    factor: float  # geometric mean of the moved cases' head/base ratios (canary-corrected)
    n: int  # cases that moved this way
    of: int  # cases with a time ratio
    canary: float | None

    def describe(self) -> str:
        way = "slower" if self.factor > 1 else "faster"
        canary = "no canary" if self.canary is None else f"canary {self.canary:.3f}×"
        return (
            f"{self.n} of {self.of} timed cases {self.factor:.3f}× {way} together ({canary}; each beyond the "
            "canary's uncertainty): a global change, or machine drift the canary did not see (cases are "
            "judged relative to this shift)"
        )


def shared_shift(timed: list[tuple[str, float]], canary: float | None) -> SharedShift | None:
    """A shift shared by at least SHARED_FRACTION of the timed cases ((verdict, ratio) pairs from a
    first pass), or None."""
    if len(timed) < SHARED_MIN_CASES:
        return None
    for verdict in (REGRESSED, IMPROVED):
        moved = [r for v, r in timed if v == verdict and r > 0]
        if len(moved) >= SHARED_FRACTION * len(timed):
            return SharedShift(verdict, geomean(moved), len(moved), len(timed), canary)
    return None


@dataclass
class VariantTime:
    """Geometric mean of head/base median time over one configuration's cases ok in both runs."""

    label: str
    n: int
    geomean: float
    lo: float  # smallest per-case ratio
    hi: float  # largest per-case ratio


def variant_times(ratios: list[tuple[str, float]]) -> list[VariantTime]:
    """(label, head/base time ratio) per case -> one VariantTime per label, in first-seen order."""
    by_label: dict[str, list[float]] = {}
    for label, ratio in ratios:
        if ratio > 0:
            by_label.setdefault(label, []).append(ratio)
    return [VariantTime(lab, len(r), geomean(r), min(r), max(r)) for lab, r in by_label.items()]


def lone_changes(cases: list, time_finding: Callable[[Any], Any], center: float = 1.0) -> None:
    """Downgrade, in place, a confirmed time change of one case that the other cases of its
    configuration (same label: other lengths, modes, dtypes) do not share, to AMBIGUOUS.

    A code change to a configuration moves its cases together; a burst of load on a shared
    machine moves the one case timed during it (measured here: one case of two serial A/A runs
    26% slower, its fastest sample too, every other case within 9%). `cases`: CaseComparison
    objects (`label`, `findings`, `verdict`), `time_finding(case)` their time Finding or None;
    each case's change is its Finding's `fast_ratio` (else its `ratio`), taken relative to
    `center` (the median change of every case). A configuration with one case is left alone."""

    def change(f: Any) -> float | None:
        r = getattr(f, "fast_ratio", None) or f.ratio
        return r if r is not None and r > 0 else None

    by_label: dict[str, list] = {}
    for c in cases:
        f = time_finding(c)
        if f is not None and change(f) is not None:
            by_label.setdefault(c.label, []).append((c, f))
    for items in by_label.values():
        for c, f in items:
            others = [math.log(change(g) / center) for d, g in items if d is not c]
            if f.verdict not in (REGRESSED, IMPROVED) or not others:
                continue
            mine, theirs = math.log(change(f) / center), float(np.median(others))
            if theirs * math.copysign(1.0, mine) >= abs(mine) / 2:
                continue  # the configuration moved with it
            f.verdict = AMBIGUOUS
            f.reason = (
                f"only this case of {c.label} moved ({change(f):.3f}× in its fastest {FAST_QUANTILE:.0%} "
                f"of samples; its {len(others)} other case(s) {math.exp(theirs) * center:.3f}×): a burst of "
                "load during its timing looks the same"
            )
            if f.gated:
                gated = {x.verdict for x in c.findings if x.gated}
                c.verdict = next((v for v in (REGRESSED, IMPROVED, AMBIGUOUS) if v in gated), SAME)
