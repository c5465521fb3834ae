"""Regression verdicts between two runs (base vs head); the Markdown is in compare_markdown.py.

Cases are matched by `case_id`, a hash of the case's full configuration (variant, impl, params,
problem, inputs, fit and accuracy settings; never the run id), so the same case has the same id
in every run. Each metric is judged as its `gate` in the metric registry says: deterministic ones
tightly (rel_err, CUDA peak memory, cost-model FLOPs), time on the raw samples with a bootstrap
CI of the median ratio plus a Mann-Whitney U test (only a confident change beyond the threshold
counts). A case that was
ok in base and is not in head is STATUS-CHANGED and counts as a regression. Only a confirmed
regression fails (`exit_code` 1); AMBIGUOUS never does. Bad input raises `CompareInputError`
(one line; the CLI maps it to exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.measure.metrics import Gate, Metric, gated_metrics
from harness.measure.stats import AMBIGUOUS, IMPROVED, REGRESSED, SAME, geomean, time_verdict
from harness.regress.runs import CompareInputError, RunData, load_run

NEW, MISSING, STATUS_CHANGED = "NEW", "MISSING", "STATUS-CHANGED"
VERDICTS = (REGRESSED, STATUS_CHANGED, IMPROVED, AMBIGUOUS, SAME, NEW, MISSING)
ENV_KEYS = ("cpu", "gpu", "gpu_driver", "cuda", "torch", "threads")  # = harness.measure.env.FINGERPRINT_KEYS
__all__ = ["AMBIGUOUS", "IMPROVED", "REGRESSED", "SAME", "CompareInputError", "RunData", "load_run"]


@dataclass
class Finding:
    """One metric's comparison for one case. ratio = head / base."""

    metric: str  # a gated metric's name (harness.measure.metrics), or "status"
    verdict: str
    base: Any
    head: Any
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    gated: bool = True  # False: reported, never decides the case verdict (time on CPU CI)
    reason: str = ""


@dataclass
class CaseComparison:
    case_id: str
    label: str
    variant: str
    seq_len: int
    dtype: str
    causal: bool
    mode: str
    verdict: str
    base_status: str | None = None  # None: the case is not in base (NEW)
    head_status: str | None = None  # None: the case is not in head (MISSING)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, rec: dict[str, Any], verdict: str, base_status: str | None, head_status: str | None):
        keys = (str(rec["case_id"]), str(rec["label"]), str(rec["variant"]), int(rec["seq_len"]))
        problem = (str(rec["dtype"]), bool(rec["causal"]), str(rec["mode"]))
        return cls(*keys, *problem, verdict, base_status, head_status)

    @property
    def is_regression(self) -> bool:
        """REGRESSED, or a status that was ok in base and is not in head."""
        return self.verdict == REGRESSED or (self.verdict == STATUS_CHANGED and self.base_status == "ok")

    def finding(self, metric: str) -> Finding | None:
        return next((f for f in self.findings if f.metric == metric), None)


@dataclass
class VariantTime:
    """Geometric mean of head/base median time over one configuration's cases ok in both runs."""

    label: str
    n: int
    geomean: float
    lo: float  # smallest per-case ratio
    hi: float  # largest per-case ratio


@dataclass
class ComparisonResult:
    base: RunData
    head: RunData
    threshold: float
    alpha: float
    gate_time: bool
    cases: list[CaseComparison]
    variants: list[VariantTime]
    env_warnings: list[str]

    @property
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS, 0)
        for c in self.cases:
            out[c.verdict] += 1
        return out

    @property
    def regressions(self) -> list[CaseComparison]:
        return [c for c in self.cases if c.is_regression]

    @property
    def verdict(self) -> str:
        """REGRESSED if any case regressed, else IMPROVED, AMBIGUOUS or SAME (first that occurs)."""
        if self.regressions:
            return REGRESSED
        counts = self.counts
        return next((v for v in (IMPROVED, AMBIGUOUS) if counts[v]), SAME)

    def by_verdict(self, verdict: str) -> list[CaseComparison]:
        return [c for c in self.cases if c.verdict == verdict]


# ----- per-case verdicts ----------------------------------------------------------------------
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


def _samples_finding(m: Metric, b: dict, h: dict, opts: dict[str, Any]) -> Finding | None:
    g = m.gate or Gate()
    bs, hs = b.get(g.samples) or [], h.get(g.samples) or []
    bm, hm = _num(b.get(m.name)), _num(h.get(m.name))
    if not (bs or hs or bm or hm):
        return None  # not measured in either run
    st = time_verdict(
        bs,
        hs,
        opts["threshold"],
        opts["alpha"],
        opts["min_samples"],
        opts["n_boot"],
        opts["seed"],
        base_rounds=b.get(g.rounds) if g.rounds else None,
        head_rounds=h.get(g.rounds) if g.rounds else None,
    )
    ratio = st.ratio
    if ratio is None and bm and hm:  # no raw samples: the medians' ratio, but never a verdict on it
        ratio = hm / bm
    ci = (st.ci_lo, st.ci_hi) if st.ci_lo is not None and st.ci_hi is not None else None
    return Finding(m.name, st.verdict, bm, hm, ratio, ci, st.p_value, opts["gate_time"], st.reason)


def gate_finding(m: Metric, b: dict, h: dict, opts: dict[str, Any]) -> Finding | None:
    """What the metric's gate says about one case ok in both runs; None when it does not apply."""
    g = m.gate
    if g is None:
        return None
    if g.kind == "samples":
        return _samples_finding(m, b, h, opts)
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


def compare_case(b: dict, h: dict, opts: dict[str, Any]) -> CaseComparison:
    """Verdict of one case present in both runs (b: base record, h: head record)."""
    sb, sh = str(b["status"]), str(h["status"])
    case = CaseComparison.of(h, SAME, sb, sh)
    if b.get("variant_version") != h.get("variant_version"):
        case.notes.append(f"variant version {b.get('variant_version')} -> {h.get('variant_version')}")
    if sb != sh:
        base_s = sb if sb == "ok" else f"{sb}: {b.get('reason') or 'no reason recorded'}"
        head_s = sh if sh == "ok" else f"{sh}: {h.get('reason') or 'no reason recorded'}"
        case.findings.append(Finding("status", STATUS_CHANGED, base_s, head_s, reason=f"{sb} -> {sh}"))
        case.verdict = STATUS_CHANGED
        return case
    if sb != "ok":
        case.notes.append(f"{sb} in both runs")
        return case
    found = [gate_finding(m, b, h, opts) for m in gated_metrics()]
    case.findings = [f for f in found if f is not None]
    gated = {f.verdict for f in case.findings if f.gated}
    case.verdict = next((v for v in (REGRESSED, IMPROVED, AMBIGUOUS) if v in gated), SAME)
    return case


def time_metric() -> Metric | None:
    """The first metric gated on raw samples (the median time)."""
    return next((m for m in gated_metrics() if m.gate is not None and m.gate.kind == "samples"), None)


def _variant_times(cases: list[CaseComparison]) -> list[VariantTime]:
    ratios: dict[str, list[float]] = {}
    timed = time_metric()
    for c in cases:
        f = c.finding(timed.name) if timed else None
        if f is not None and f.ratio is not None and f.ratio > 0:
            ratios.setdefault(c.label, []).append(f.ratio)
    return [VariantTime(lab, len(r), geomean(r), min(r), max(r)) for lab, r in ratios.items()]


def _env_warnings(base: RunData, head: RunData) -> list[str]:
    out = []
    for side in (base, head):
        if not side.env:
            out.append(f"{side.path}: no env.json; cannot check that the machines match")
    if base.env and head.env:
        diffs = [
            f"{k}: {base.env.get(k)!r} -> {head.env.get(k)!r}"
            for k in ENV_KEYS
            if base.env.get(k) != head.env.get(k)
        ]
        if diffs:
            out.append(f"environments differ ({'; '.join(diffs)}): time verdicts may reflect the machine")
    return out


def compare_runs(
    base_dir: Path,
    head_dir: Path,
    threshold: float = 0.05,
    alpha: float = 0.01,
    gate_time: bool = True,
    rel_err_budget: dict[str, float] | None = None,
    min_samples: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
) -> ComparisonResult:
    """Compare every case of `head_dir` with the same case (by case_id) of `base_dir`.

    threshold: relative time change that matters (0.05; 0.10 on shared machines); alpha: the
    CI is at 1 - alpha and Mann-Whitney must reach p < alpha; gate_time=False reports time
    verdicts without letting them decide a case (CPU CI); rel_err_budget: {variant or label: max
    rel_err}; min_samples: fewer raw time samples on a side give no time verdict; n_boot, seed:
    bootstrap replicates and its seed (the verdicts are deterministic for given inputs).
    """
    if not 0 < threshold < 10:
        raise CompareInputError(f"threshold must be in (0, 10), got {threshold}")
    if not 0 < alpha < 1:
        raise CompareInputError(f"alpha must be in (0, 1), got {alpha}")
    base, head = load_run(base_dir), load_run(head_dir)
    opts = {
        "threshold": threshold,
        "alpha": alpha,
        "gate_time": gate_time,
        "min_samples": min_samples,
        "n_boot": n_boot,
        "seed": seed,
        "budget": {"rel_err": dict(rel_err_budget or {})},
    }
    cases = []
    for cid, h in head.records.items():
        b = base.records.get(cid)
        cases.append(CaseComparison.of(h, NEW, None, h["status"]) if b is None else compare_case(b, h, opts))
    cases += [
        CaseComparison.of(b, MISSING, b["status"], None)
        for cid, b in base.records.items()
        if cid not in head.records
    ]
    warnings = _env_warnings(base, head)
    if not any(c.verdict not in (NEW, MISSING) for c in cases):
        warnings.append("no case in common (different scenarios?): nothing was compared")
    return ComparisonResult(base, head, threshold, alpha, gate_time, cases, _variant_times(cases), warnings)


def exit_code(result: ComparisonResult) -> int:
    """1 on a confirmed regression (incl. ok -> failing status), else 0; AMBIGUOUS never fails."""
    return 1 if result.regressions else 0
