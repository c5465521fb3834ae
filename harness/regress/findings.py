"""One metric's finding for one case of a comparison: deterministic gates and the time verdict.

`gate_finding` applies a metric's `gate` (harness.plugins.metrics) to a case ok in both runs: an
exact gate compares the two values (factor x base + abs, in the metric's direction); a samples
gate judges the raw time samples (`samples_finding`): the change is measured on head samples
divided by the canary's ratio (and a shared shift) and is confirmed only when it still holds at
the end of the canary's correction range least favourable to it and, measured on its fastest
samples, clears the threshold by more than the cases' noise between the runs
(harness/regress/drift.py); otherwise AMBIGUOUS, with the numbers in its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.measure.stats import AMBIGUOUS, IMPROVED, REGRESSED, SAME, time_verdict
from harness.plugins.metrics import Gate, Metric
from harness.regress import drift as dr


@dataclass
class Finding:
    """One metric's comparison for one case. ratio = head / base."""

    metric: str  # a gated metric's name (harness.plugins.metrics), or "status"
    verdict: str
    base: Any
    head: Any
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    gated: bool = True  # False: reported, never decides the case verdict (time on CPU CI)
    reason: str = ""
    fast_ratio: float | None = None  # time: head/base of the fastest samples (drift.fast_ratio), corrected


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _deterministic(m: Metric, b: float, h: float) -> Finding:
    """REGRESSED when head is worse than base beyond the gate (factor x base + abs), IMPROVED when
    better by as much, else SAME; `worse` follows the metric's direction."""
    g = m.gate or Gate()
    up, down = h > b * g.factor + g.abs, h < (b - g.abs) / g.factor
    worse, better = (down, up) if m.direction == "higher" else (up, down)
    verdict = REGRESSED if worse else IMPROVED if better else SAME
    reason = g.reason if g.reason and verdict != SAME else m.gate_rule() if worse else ""
    return Finding(m.name, verdict, b, h, h / b if b else None, reason=reason)


def _judge_time(g: Gate, b: dict, h: dict, bs: list, hs: list, scale: float, opts: dict[str, Any]):
    """`time_verdict` of base samples against head samples divided by `scale` (rounds too)."""
    h_rounds = h.get(g.rounds) if g.rounds else None
    return time_verdict(
        bs,
        [x / scale for x in hs],
        opts["threshold"],
        opts["alpha"],
        opts["min_samples"],
        opts["n_boot"],
        opts["seed"],
        base_rounds=b.get(g.rounds) if g.rounds else None,
        head_rounds=[[x / scale for x in r] for r in h_rounds] if h_rounds else None,
    )


def samples_finding(m: Metric, b: dict, h: dict, opts: dict[str, Any]) -> Finding | None:
    """A time verdict that scales with the evidence. The change is measured on head samples
    divided by the canary's ratio (and a shared shift); it is confirmed only when it still holds
    at the end of the canary's correction range least favourable to it (no correction at all, or
    the canary's ratio widened by its own uncertainty) and its fastest samples' change
    (`drift.fast_ratio`) clears the threshold by more than the cases' noise between the runs
    (drift.noise_reason). Otherwise AMBIGUOUS, with the numbers."""
    g = m.gate or Gate()
    bs, hs = b.get(g.samples) or [], h.get(g.samples) or []
    bm, hm = _num(b.get(m.name)), _num(h.get(m.name))
    if not (bs or hs or bm or hm):
        return None  # not measured in either run
    if bs and list(bs) == list(hs):  # the same samples (a run compared with itself): nothing moved
        return Finding(m.name, SAME, bm, hm, 1.0, (1.0, 1.0), 1.0, opts["gate_time"], "identical samples")
    drift: dr.Drift = opts["drift"]
    shift = opts["shift"]  # the run-level shift, removed before judging
    st = _judge_time(g, b, h, bs, hs, drift.scale * shift, opts)
    ratio, verdict, reason = st.ratio, st.verdict, st.reason
    fast = dr.fast_ratio(bs, hs)  # raw; the change judged against the cases' noise
    if verdict in (REGRESSED, IMPROVED):
        worst_scale = drift.worst_scale(slower=verdict == REGRESSED) * shift
        worst = st if worst_scale == drift.scale * shift else _judge_time(g, b, h, bs, hs, worst_scale, opts)
        if worst.verdict != verdict:
            lo, hi = drift.correction_range()
            verdict = AMBIGUOUS
            reason = (
                f"{ratio:.3f}× with the canary's correction ({drift.scale:.3f}×), but {worst.ratio:.3f}× "
                f"({worst.reason or worst.verdict}) when the machine changed by {worst_scale / shift:.3f}× "
                f"(the canary's range {lo:.3f}-{hi:.3f}×)"
            )
        else:
            why = dr.noise_reason(fast / worst_scale if fast else worst.ratio, drift, str(h.get("label")))
            if why:
                verdict, reason = AMBIGUOUS, why
    if ratio is None and bm and hm:  # no raw samples: the medians' ratio, but never a verdict on it
        ratio = hm / bm
    ci = (st.ci_lo, st.ci_hi) if st.ci_lo is not None and st.ci_hi is not None else None
    fast = fast / (drift.scale * shift) if fast else None
    return Finding(m.name, verdict, bm, hm, ratio, ci, st.p_value, opts["gate_time"], reason, fast)


def gate_finding(m: Metric, b: dict, h: dict, opts: dict[str, Any]) -> Finding | None:
    """What the metric's gate says about one case ok in both runs; None when it does not apply."""
    g = m.gate
    if g is None:
        return None
    if g.kind == "samples":
        return samples_finding(m, b, h, opts)
    if g.devices is not None and not (b.get("device") in g.devices and h.get("device") in g.devices):
        return None
    bv, hv = _num(b.get(m.name)), _num(h.get(m.name))
    if bv is None or hv is None:
        return None
    f = _deterministic(m, bv, hv)
    budget = opts["budget"].get(m.name, {})
    limit = budget.get(h["label"], budget.get(h["variant"]))
    if limit is not None and m.is_better(limit, hv):
        f.verdict, f.reason = (
            REGRESSED,
            f"{'below' if m.direction == 'higher' else 'above'} the budget {limit:g}",
        )
    return f
