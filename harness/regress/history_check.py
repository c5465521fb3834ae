"""`history check`: change points in each case's series across commits, with `ruptures`.

Each series is one case (case_id) on one machine, one metric (median time by default), one value
per stored run in commit order. On log values, `ruptures.Pelt` (exact penalized segmentation,
least-squares cost, `min_size` = MIN_POINTS so no segment is shorter than a persistent step) finds
the change points; the penalty is BIC-like, PEN_FACTOR * sigma^2 * log(n), with sigma the series'
own noise estimated robustly from its successive differences (a step moves one difference, not
their median absolute deviation). A change point is a confirmed step only when the segments on
both sides hold >= MIN_POINTS points and their medians differ by more than the threshold AND by
more than NOISE_K standard errors of a difference of medians, and at least MIN_POINTS points after
it sit beyond half the shift: one outlier moves neither median, and two points are not yet a step.
`history check` fails (exit 1) when the newest segment of some series is a confirmed slowdown
that started within the last `recent` points, i.e. the latest commits start a regression; older
steps are listed, not failed on (they were there before).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.measure.stats import IMPROVED, REGRESSED

MIN_POINTS = 3  # a persistent step: at least this many points on each side
PEN_FACTOR = 3.0  # x sigma^2 x log(n): a little above BIC (2), so noise alone rarely splits
NOISE_K = 5.0  # a step's median shift must exceed this many standard errors
SIGMA_FLOOR = 1e-3  # log units (0.1%): deterministic series (memory) have no noise at all


@dataclass(frozen=True)
class Step:
    """A confirmed step in one series: `after` / `before` medians, from point `start` on."""

    machine: str
    case: str  # label[N=..,dtype,causal,mode]
    metric: str
    start: int  # index in the series of the first point after the change
    commit: str  # commit of that point
    before: float
    after: float
    n_before: int
    n_after: int
    latest: bool  # the step's segment runs to the newest point

    @property
    def ratio(self) -> float:
        return self.after / self.before

    @property
    def verdict(self) -> str:
        return REGRESSED if self.ratio > 1 else IMPROVED

    def describe(self) -> str:
        way = "slower" if self.ratio > 1 else "faster"
        now = " (to the latest point)" if self.latest else ""
        sha = self.commit[:12] or "?"
        return (
            f"{self.machine} {self.case} {self.metric}: {self.ratio:.3f}× {way} from {sha} on "
            f"({self.before:.4g} -> {self.after:.4g}, {self.n_before} before, {self.n_after} after{now})"
        )


def noise_sigma(y: np.ndarray) -> float:
    """Robust per-point noise of a series: 1.4826 x MAD of successive differences / sqrt(2)."""
    if y.size < 3:
        return SIGMA_FLOOR
    d = np.diff(y)
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(1.4826 * mad / math.sqrt(2.0), SIGMA_FLOOR)


def find_steps(values: Sequence[float], threshold: float) -> list[tuple[int, float, float, int, int]]:
    """Confirmed steps of one series of positive values: (start, median before, median after,
    points before, points after) per change point, in order."""
    import ruptures

    y = np.log(np.asarray(values, dtype=np.float64))
    n = y.size
    if n < 2 * MIN_POINTS:
        return []
    sigma = noise_sigma(y)
    algo = ruptures.Pelt(model="l2", min_size=MIN_POINTS, jump=1).fit(y.reshape(-1, 1))
    bounds = [0, *algo.predict(pen=PEN_FACTOR * sigma**2 * math.log(n))]  # ends at n
    steps = []
    for i in range(1, len(bounds) - 1):
        pre, post = y[bounds[i - 1] : bounds[i]], y[bounds[i] : bounds[i + 1]]
        shift = float(np.median(post) - np.median(pre))
        se = 1.2533 * sigma * math.sqrt(1.0 / pre.size + 1.0 / post.size)  # s.e. of a median difference
        moved = int(np.sum((post - np.median(pre)) * math.copysign(1.0, shift) > abs(shift) / 2))
        big = abs(shift) > max(math.log1p(threshold), NOISE_K * se)
        if min(pre.size, post.size) >= MIN_POINTS and big and moved >= MIN_POINTS:
            before, after = math.exp(float(np.median(pre))), math.exp(float(np.median(post)))
            steps.append((bounds[i], before, after, int(pre.size), int(post.size)))
    return steps


def series_name(row: pd.Series) -> str:
    causal = "causal" if bool(row["causal"]) else "non-causal"
    return f"{row['label']}[N={int(row['seq_len'])},{row['dtype']},{causal},{row['mode']}]"


@dataclass
class CheckResult:
    steps: list[Step]
    series: int  # series checked
    too_short: int  # series with fewer than 2 x MIN_POINTS points
    recent: int

    @property
    def failing(self) -> list[Step]:
        """Slowdowns that the latest points start: the newest segment, at most `recent` points old."""
        return [s for s in self.steps if s.latest and s.verdict == REGRESSED and s.n_after <= self.recent]


def check_history(
    df: pd.DataFrame, threshold: float = 0.05, metrics: Sequence[str] = ("time_ms_median",), recent: int = 5
) -> CheckResult:
    """Steps in every (machine, case, metric) series of a store frame (history.load_store)."""
    if recent < MIN_POINTS:
        raise ValueError(f"recent must be >= {MIN_POINTS} (a step needs {MIN_POINTS} points), got {recent}")
    steps: list[Step] = []
    checked = short = 0
    ok = df[df["status"] == "ok"]
    for (machine, _), rows in ok.groupby(["machine", "case_id"], sort=True):
        rows = rows.sort_values("point")
        for metric in metrics:
            s = rows[["point", "commit", metric]].dropna()
            s = s[s[metric] > 0]
            checked += 1
            if len(s) < 2 * MIN_POINTS:
                short += 1
                continue
            commits = list(s["commit"])
            for start, before, after, nb, na in find_steps(list(s[metric]), threshold):
                latest = start + na == len(s)
                name = series_name(rows.iloc[0])
                steps.append(
                    Step(str(machine), name, metric, start, commits[start], before, after, nb, na, latest)
                )
    return CheckResult(steps, checked, short, recent)
