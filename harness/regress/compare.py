"""Regression verdicts between two runs (base vs head); the Markdown is in compare_markdown.py.

Cases are matched by `case_id`, a hash of the case's full configuration (variant, impl, params,
problem, inputs, fit and accuracy settings; never the run id), so the same case has the same id
in every run. Each metric is judged as its `gate` in the metric registry says: deterministic ones
tightly (rel_err, CUDA peak memory, cost-model FLOPs), time on the raw samples with a bootstrap
CI of the median ratio plus a Mann-Whitney U test (only a confident change beyond the threshold
counts), on drift-corrected samples (harness/regress/drift.py: head times divided by the canary's
head/base ratio; a change is confirmed only when it holds at the least favourable end of the
canary's correction range and clears the threshold by more than the cases' noise; a shift shared
by most cases is one finding). A case ok in
base and not in head is STATUS-CHANGED and counts as a regression. Only a confirmed regression
fails (`exit_code` 1); AMBIGUOUS never does, nor heads the verdict. Bad input raises
`CompareInputError` (one line; the CLI maps it to exit 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.measure.stats import AMBIGUOUS, IMPROVED, REGRESSED, SAME
from harness.plugins.metrics import Metric, gated_metrics
from harness.regress import drift as dr
from harness.regress import runs
from harness.regress.findings import Finding, gate_finding
from harness.regress.runs import ENV_KEYS, CompareInputError, RunData, env_warnings, load_run

VariantTime = dr.VariantTime
NEW, MISSING, STATUS_CHANGED = "NEW", "MISSING", "STATUS-CHANGED"
NOTHING_COMPARED = "NOTHING-COMPARED"  # a run-level verdict only (exit 2), never a case's
VERDICTS = (REGRESSED, STATUS_CHANGED, IMPROVED, AMBIGUOUS, SAME, NEW, MISSING)
__all__ = [
    "AMBIGUOUS", "ENV_KEYS", "IMPROVED", "REGRESSED", "SAME", "CompareInputError", "Finding", "VariantTime",
    "gate_finding",
]  # fmt: skip


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
class ComparisonResult:
    base: RunData
    head: RunData
    threshold: float
    alpha: float
    gate_time: bool
    cases: list[CaseComparison]
    variants: list[VariantTime]
    env_warnings: list[str]
    drift: dr.Drift = field(default_factory=lambda: dr.Drift(None))
    shift: dr.SharedShift | None = None  # a time change shared by most cases: one finding
    rounds: int = 0  # interleaved rounds per side (`ab`); 0: two single runs (`compare`)

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
    def regressed(self) -> bool:
        """A confirmed regression: a regressed case, or a slowdown shared by most cases while the
        canary held still. When the machine itself moved (the canary beyond half the threshold and
        its own uncertainty), a shift of every case is not attributable to the code: measured here,
        an A/A pair of serial runs on a loaded 2-core VM had 5 of 6 cases 1.29x slower beyond a
        1.18x canary. The shift is then reported, and `ab` (interleaved rounds) decides."""
        shifted = self.shift is not None and self.shift.verdict == REGRESSED and self.canary_steady
        return bool(self.regressions) or shifted

    @property
    def canary_steady(self) -> bool:
        """The canary did not move between the runs (or a run has none): within half the threshold,
        or within its own uncertainty when that is wider."""
        d = self.drift
        if d is None or d.ratio is None:
            return True
        return abs(math.log(d.ratio)) <= max(math.log1p(d.threshold / 2), d.ci)

    @property
    def nothing_compared(self) -> str:
        """Why no case could be judged ('' when some could): see `runs.nothing_compared`."""
        statuses = [(c.base_status, c.head_status) for c in self.cases]
        return runs.nothing_compared(statuses, len(self.base.records), len(self.head.records))

    @property
    def verdict(self) -> str:
        """REGRESSED (confirmed), else NOTHING-COMPARED, IMPROVED (confirmed), AMBIGUOUS (some case
        undecided, none confirmed) or SAME (every compared case SAME): never SAME without one."""
        if self.regressed:
            return REGRESSED
        if self.nothing_compared:
            return NOTHING_COMPARED
        shift_up = self.shift is not None and self.shift.verdict == IMPROVED
        if self.counts[IMPROVED] or shift_up:
            return IMPROVED
        return AMBIGUOUS if self.counts[AMBIGUOUS] or not self.counts[SAME] else SAME

    @property
    def undecided(self) -> list[CaseComparison]:
        """Cases whose time change is AMBIGUOUS (ok in both runs, neither confirmed nor SAME)."""
        return [c for c in self.cases if c.verdict == AMBIGUOUS]

    def by_verdict(self, verdict: str) -> list[CaseComparison]:
        return [c for c in self.cases if c.verdict == verdict]


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
        "drift": dr.canary_drift(base.path, head.path, threshold),
        "shift": 1.0,
    }
    cases = _judge_all(base, head, opts)
    timed = [(c.label, f.verdict, f.ratio) for c in cases if (f := _time_finding(c)) is not None and f.ratio]
    shift = dr.shared_shift([(v, r) for _, v, r in timed], opts["drift"].ratio)
    opts["shift"] = shift.factor if shift is not None else 1.0  # one finding; cases judged relative to it
    fast = [(c.label, f.fast_ratio) for c in cases if (f := _time_finding(c)) is not None and f.fast_ratio]
    opts["drift"] = dr.with_floor(opts["drift"], [(lab, r / opts["shift"]) for lab, r in fast])
    if shift is not None or opts["drift"].floor > 1.0:
        cases = _judge_all(base, head, opts)
    dr.lone_changes(cases, _time_finding, opts["drift"].center)  # a burst of load hits one case
    warnings = env_warnings(base, head)
    variants = dr.variant_times([(c.label, f.ratio) for c in cases if (f := _time_finding(c)) and f.ratio])
    return ComparisonResult(
        base, head, threshold, alpha, gate_time, cases, variants, warnings, opts["drift"], shift
    )


def _time_finding(case: CaseComparison) -> Finding | None:
    timed = time_metric()
    return case.finding(timed.name) if timed else None


def _judge_all(base: RunData, head: RunData, opts: dict[str, Any]) -> list[CaseComparison]:
    """Every head case against the same base case, then the base cases missing from head."""
    cases = []
    for cid, h in head.records.items():
        b = base.records.get(cid)
        cases.append(CaseComparison.of(h, NEW, None, h["status"]) if b is None else compare_case(b, h, opts))
    cases += [
        CaseComparison.of(b, MISSING, b["status"], None)
        for cid, b in base.records.items()
        if cid not in head.records
    ]
    return cases


def exit_code(result: ComparisonResult) -> int:
    """1 on a confirmed regression (incl. ok -> failing status, and a slowdown shared by most
    cases), else 2 when nothing could be compared (`nothing_compared`), else 0; AMBIGUOUS never fails."""
    return 1 if result.regressed else 2 if result.nothing_compared else 0  # a wrong baseline fails a gate
