"""`history check`: change points in each case's series across commits, with `ruptures`.

A series is one case (case_id) on one machine and one gated metric (every metric with a gate that
the stored runs carry: `runs.gated_metrics_for`), one value per stored run in commit order, on a
log scale. Before the search, times are normalised twice:

- by the run's canary (its speed index: the geometric mean over the canary workloads of the run's
  median against the machine's median), so a run on a slower moment of the machine is scaled back;
- by the run's median case change (when the run has >= RUN_EFFECT_MIN_CASES cases): what every
  case of a run shares is the machine, not one configuration's code. That shared part is its own
  series, `(every case)`, so a global step is still found, once.

Each point is weighed by its noise: its weight is 1 / max(tau^2, s_i^2), tau the series' own
run-to-run noise (robust, from its successive differences; a step moves one difference, not their
median absolute deviation) and s_i the point's own standard error (from the record's IQR / median
and sample count). `ruptures.Pelt` (exact penalized segmentation) with a weighted least-squares
cost (`WeightedL2`) and `min_size` = MIN_POINTS finds the change points, with a BIC-like penalty
PEN_FACTOR * log(n) (the weighted residuals have unit variance). A change point is a confirmed step
only when the segments on both sides hold >= MIN_POINTS points, their weighted means differ by more
than the threshold (for an exact metric, by more than its gate) AND by more than NOISE_K standard
errors, their medians too (one outlier moves a mean, not a median), and at least MIN_POINTS points
after it sit beyond half the shift. `history check` fails (exit 1) when the newest segment of some
series is a confirmed change for the worse that started within the last `recent` points; older
steps are listed, not failed on. Each step says its metric, case, commit range, size and confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.measure.canary import WORKLOADS
from harness.measure.stats import IMPROVED, REGRESSED
from harness.plugins.metrics import Metric, metric
from harness.regress.runs import gated_metrics_for

MIN_POINTS = 3  # a persistent step: at least this many points on each side
PEN_FACTOR = 3.0  # x log(n), on unit-variance weighted residuals: a little above BIC (2)
NOISE_K = 4.0  # a step's shift must exceed this many standard errors
SIGMA_FLOOR = 1e-3  # log units (0.1%): deterministic series (memory) have no noise at all
RUN_EFFECT_MIN_CASES = 6  # fewer cases in a run: no run effect is taken out
EVERY_CASE = "(every case)"  # the series of the runs' shared change


@dataclass(frozen=True)
class Step:
    """A confirmed step in one series: `after` / `before` (weighted means, back on the metric's
    scale), from point `start` on."""

    machine: str
    case: str  # label[N=..,dtype,causal,mode], or EVERY_CASE
    metric: str
    start: int  # index in the series of the first point after the change
    commit: str  # commit of that point
    before: float
    after: float
    n_before: int
    n_after: int
    latest: bool  # the step's segment runs to the newest point
    commit_before: str = ""  # commit of the last point before the change
    z: float = 0.0  # the shift in standard errors
    worse: bool = True  # a change for the worse in the metric's direction
    normalised: str = ""  # what the values were divided by

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before else math.inf

    @property
    def verdict(self) -> str:
        return REGRESSED if self.worse else IMPROVED

    @property
    def p_value(self) -> float:
        """Two-sided normal p-value of the shift (z standard errors)."""
        return math.erfc(self.z / math.sqrt(2.0))

    def describe(self) -> str:
        way = "higher" if self.ratio > 1 else "lower"
        if self.metric.startswith("time"):
            way = "slower" if self.ratio > 1 else "faster"
        now = " (to the latest point)" if self.latest else ""
        commits = f"{self.commit_before[:12] or '?'}..{self.commit[:12] or '?'}"
        norm = f"; normalised by {self.normalised}" if self.normalised else ""
        return (
            f"{self.metric} of {self.case} on {self.machine}: {self.ratio:.3f}× {way} "
            f"({'worse' if self.worse else 'better'}) between {commits} "
            f"({self.before:.4g} -> {self.after:.4g}; "
            f"{self.n_before} runs before, {self.n_after} after{now}; {self.z:.1f} standard errors, "
            f"p = {self.p_value:.1g}{norm})"
        )


def noise_sigma(y: np.ndarray) -> float:
    """Robust per-point noise of a series: 1.4826 x MAD of successive differences / sqrt(2)."""
    if y.size < 3:
        return SIGMA_FLOOR
    d = np.diff(y)
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(1.4826 * mad / math.sqrt(2.0), SIGMA_FLOOR)


def _weighted_l2():
    """ruptures' cost class for a weighted least-squares fit of a piecewise-constant mean (ruptures
    has none with per-point weights); built lazily so importing this module needs no ruptures."""
    from ruptures.base import BaseCost

    class WeightedL2(BaseCost):
        """Cost of a segment: sum w_i (y_i - weighted mean)^2. signal: (n, 2) columns y and w."""

        model = "weighted_l2"
        min_size = MIN_POINTS

        def fit(self, signal: np.ndarray) -> WeightedL2:
            self.signal = signal  # ruptures reads its length
            y, w = signal[:, 0], signal[:, 1]
            self.cw = np.concatenate([[0.0], np.cumsum(w)])
            self.cwy = np.concatenate([[0.0], np.cumsum(w * y)])
            self.cwy2 = np.concatenate([[0.0], np.cumsum(w * y * y)])
            return self

        def error(self, start: int, end: int) -> float:
            sw = self.cw[end] - self.cw[start]
            swy = self.cwy[end] - self.cwy[start]
            return float(self.cwy2[end] - self.cwy2[start] - swy * swy / sw)

    return WeightedL2


def find_steps(
    values: Sequence[float],
    threshold: float,
    point_se: Sequence[float] | None = None,
    beyond: float | None = None,
) -> list[tuple[int, float, float, int, int, float]]:
    """Confirmed steps of one series of log values: (start, weighted mean before, after, points
    before, points after, z) per change point, in order. point_se: each point's own standard error
    (log units; None: none known); beyond: the log shift a step must exceed (default log1p(threshold))."""
    import ruptures

    y = np.asarray(values, dtype=np.float64)
    n = y.size
    if n < 2 * MIN_POINTS:
        return []
    tau = noise_sigma(y)
    se = np.zeros(n) if point_se is None else np.nan_to_num(np.asarray(point_se, dtype=np.float64))
    w = 1.0 / np.maximum(tau**2, se**2)
    algo = ruptures.Pelt(custom_cost=_weighted_l2()(), min_size=MIN_POINTS, jump=1)
    bounds = [0, *algo.fit(np.column_stack([y, w])).predict(pen=PEN_FACTOR * math.log(n))]
    need = math.log1p(threshold) if beyond is None else beyond
    steps = []
    for i in range(1, len(bounds) - 1):
        a, b, c = bounds[i - 1], bounds[i], bounds[i + 1]
        pre, post, wpre, wpost = y[a:b], y[b:c], w[a:b], w[b:c]
        shift = float(np.average(post, weights=wpost) - np.average(pre, weights=wpre))
        z = abs(shift) / math.sqrt(1.0 / wpre.sum() + 1.0 / wpost.sum())
        median_shift = float(np.median(post) - np.median(pre))
        moved = int(np.sum((post - np.median(pre)) * math.copysign(1.0, shift) > abs(shift) / 2))
        big = abs(shift) > need and abs(median_shift) > need and median_shift * shift > 0
        if min(pre.size, post.size) >= MIN_POINTS and big and z > NOISE_K and moved >= MIN_POINTS:
            before, after = float(np.average(pre, weights=wpre)), float(np.average(post, weights=wpost))
            steps.append((b, before, after, int(pre.size), int(post.size), z))
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
    metrics: tuple[str, ...] = ()

    @property
    def failing(self) -> list[Step]:
        """Changes for the worse that the latest points start (the newest segment, at most `recent`
        points old)."""
        return [s for s in self.steps if s.latest and s.worse and s.n_after <= self.recent]


def canary_index(rows: pd.DataFrame) -> pd.Series:
    """Per run (`point`), the machine's speed at that run from its canary: the geometric mean over
    workloads of the run's canary median against the median of every run's (1.0 without a canary)."""
    runs = rows.drop_duplicates("point").set_index("point")
    logs = []
    for w in WORKLOADS:
        col = runs.get(f"canary_{w}")
        if col is None or not col.notna().any():
            return pd.Series(1.0, index=runs.index)
        logs.append(np.log(col) - np.log(col.median()))
    index = np.exp(sum(logs) / len(logs))
    return index.fillna(1.0)


def _point_se(rows: pd.DataFrame) -> np.ndarray:
    """Each record's standard error of its log median time: 1.2533 x (IQR/1.349) / median / sqrt(n),
    from its stored noise (IQR / median) and sample count; 0 when unknown."""
    noise = pd.to_numeric(rows.get("noise"), errors="coerce") if "noise" in rows else None
    if noise is None:
        return np.zeros(len(rows))
    n = pd.to_numeric(rows["n_samples"], errors="coerce").clip(lower=1)
    return np.nan_to_num((1.2533 * noise / 1.349 / np.sqrt(n)).to_numpy(dtype=np.float64))


def _judged_column(rows: pd.DataFrame, name: str, timed: bool) -> tuple[str, str]:
    """The store column a metric's series is judged on, and how the finding names it: a time
    metric on `time_ms_fast` (the fastest tenth of each case's samples: load only ever adds time,
    so those samples move with the code, not with the machine), when every stored run has it; a
    store written before that column existed is judged on the medians, and the finding says so."""
    if timed and "time_ms_fast" in rows and rows["time_ms_fast"].notna().all():
        return "time_ms_fast", "on the fastest tenth of each case's samples"
    return name, ("on the medians (runs stored before time_ms_fast)" if timed else "")


def _gate_beyond(m: Metric, threshold: float, level: float) -> float:
    """The log shift a step of metric `m` must exceed: the threshold for time, the gate for an exact
    metric (factor, and its absolute tolerance at the series' level)."""
    if m.gate is None or m.gate.kind == "samples":
        return math.log1p(threshold)
    return max(math.log(m.gate.factor), math.log1p(m.gate.abs / level) if level > 0 else 0.0, 1e-9)


def _is_worse(m: Metric, shift: float) -> bool:
    return shift < 0 if m.direction == "higher" else shift > 0


def _series_steps(
    machine: str, name: str, m: Metric, pts: pd.DataFrame, y: np.ndarray, se, threshold, norm
) -> list[Step]:
    level = float(np.exp(np.median(y)))
    commits = list(pts["commit"])
    out = []
    for start, before, after, nb, na, z in find_steps(y, threshold, se, _gate_beyond(m, threshold, level)):
        out.append(
            Step(
                machine, name, m.name, start, commits[start], math.exp(before), math.exp(after), nb, na,
                start + na == len(y), commits[start - 1], z, _is_worse(m, after - before), norm,
            )
        )  # fmt: skip
    return out


def check_history(
    df: pd.DataFrame,
    threshold: float = 0.05,
    metrics: Sequence[str] | None = None,
    recent: int = 5,
) -> CheckResult:
    """Steps in every (machine, case, metric) series of a store frame (history.load_store).
    metrics: the metrics to check (default: every gated metric the store's runs carry)."""
    if recent < MIN_POINTS:
        raise ValueError(f"recent must be >= {MIN_POINTS} (a step needs {MIN_POINTS} points), got {recent}")
    if metrics is None:
        chosen = [m for m in gated_metrics_for(df.to_dict("records")) if m.name in df.columns]
    else:
        chosen = [metric(name) for name in metrics]
    steps: list[Step] = []
    checked = short = 0
    ok = df[df["status"] == "ok"]
    for machine, rows in ok.groupby("machine", sort=True):
        for m in chosen:
            timed = m.gate is not None and m.gate.kind == "samples"
            column, measure = _judged_column(rows, m.name, timed)
            vals = rows[["point", "case_id", "commit", column]].copy()
            vals = vals[pd.to_numeric(vals[column], errors="coerce") > 0]
            if vals.empty:
                continue
            vals["y"] = np.log(vals[column].astype(np.float64))
            vals["se"] = _point_se(rows.loc[vals.index]) if timed else 0.0
            norm = ""
            if timed:
                vals["y"] -= np.log(vals["point"].map(canary_index(rows)).astype(np.float64))
                norm = f"the canary; {measure}"
                per_run = vals.groupby("point")["case_id"].nunique()
                if per_run.min() >= RUN_EFFECT_MIN_CASES:
                    dev = vals["y"] - vals.groupby("case_id")["y"].transform("median")
                    effect = dev.groupby(vals["point"]).median()
                    vals["y"] -= vals["point"].map(effect)
                    norm = f"the canary and the run's median case change; {measure}"
                    shared = vals.drop_duplicates("point").sort_values("point")
                    checked += 1  # the shared change as a speed index (1 = a typical run)
                    steps += _series_steps(
                        str(machine), EVERY_CASE, m, shared,
                        shared["point"].map(effect).to_numpy(), None, threshold, "the canary",
                    )  # fmt: skip
            for _, s in vals.groupby("case_id", sort=True):
                s = s.sort_values("point")
                checked += 1
                if len(s) < 2 * MIN_POINTS:
                    short += 1
                    continue
                name = series_name(rows.loc[s.index[0]])
                steps += _series_steps(
                    str(machine), name, m, s, s["y"].to_numpy(), s["se"].to_numpy(), threshold, norm
                )
    return CheckResult(steps, checked, short, recent, tuple(m.name for m in chosen))
