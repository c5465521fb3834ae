"""Regression verdicts between two runs (base vs head); the Markdown is in compare_markdown.py.

Cases are matched by `case_id`, a hash of the case's full configuration (variant, impl, params,
problem, inputs, fit and accuracy settings; never the run id), so the same case has the same id
in every run. Deterministic metrics are gated tightly (rel_err, CUDA peak memory, cost-model
FLOPs); time is compared on the raw samples with a bootstrap CI of the median ratio plus a
Mann-Whitney U test, and only a confident change beyond the threshold counts. A case that was
ok in base and is not in head is STATUS-CHANGED and counts as a regression. Only a confirmed
regression fails (`exit_code` 1); AMBIGUOUS never does. Bad input raises `CompareInputError`
(one line; the CLI maps it to exit 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.measure.stats import AMBIGUOUS, IMPROVED, REGRESSED, SAME, geomean, time_verdict
from harness.results.records import SCHEMA_VERSION, read_records

NEW, MISSING, STATUS_CHANGED = "NEW", "MISSING", "STATUS-CHANGED"
VERDICTS = (REGRESSED, STATUS_CHANGED, IMPROVED, AMBIGUOUS, SAME, NEW, MISSING)
ENV_KEYS = ("cpu", "gpu", "gpu_driver", "cuda", "torch", "threads")  # = harness.measure.env.FINGERPRINT_KEYS
REQUIRED_KEYS = ("case_id", "status", "variant", "label", "seq_len", "dtype", "causal", "mode")
MIB = float(1 << 20)
REL_ERR_FACTOR, REL_ERR_ABS = 1.1, 1e-6  # rel_err regresses if head > base * 1.1 + 1e-6
MEM_FACTOR, MEM_ABS = 1.01, MIB  # CUDA peak memory regresses if head > base * 1.01 + 1 MiB
FLOPS_FACTOR = 1.01  # the analytic cost model of the same case grew by > 1 %


class CompareInputError(ValueError):
    """A run directory that cannot be compared; `str(err)` is one line."""


@dataclass
class RunData:
    path: Path
    run_id: str
    env: dict[str, Any]
    records: dict[str, dict[str, Any]]  # case_id -> record (the last one wins: resume re-runs)


@dataclass
class Finding:
    """One metric's comparison for one case. ratio = head / base."""

    metric: str  # time_ms | rel_err | peak_mem_bytes | flops | status
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
        return cls(
            str(rec["case_id"]),
            str(rec["label"]),
            str(rec["variant"]),
            int(rec["seq_len"]),
            str(rec["dtype"]),
            bool(rec["causal"]),
            str(rec["mode"]),
            verdict,
            base_status,
            head_status,
        )

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


# ----- input ----------------------------------------------------------------------------------
def load_run(run_dir: Path) -> RunData:
    """Records and env of one run directory; raises CompareInputError on anything unusable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CompareInputError(f"{run_dir}: no such run directory")
    path = run_dir / "records.jsonl"
    if not path.is_file():
        raise CompareInputError(f"{run_dir}: not a run directory (no records.jsonl)")
    try:
        rows = read_records(path)
    except (OSError, ValueError) as exc:
        raise CompareInputError(f"{path}: unreadable: {' '.join(str(exc).split())}") from exc
    if not rows:
        raise CompareInputError(f"{path}: no complete records")
    records: dict[str, dict[str, Any]] = {}
    for i, rec in enumerate(rows, 1):
        if not isinstance(rec, dict) or rec.get("schema_version") != SCHEMA_VERSION:
            got = rec.get("schema_version") if isinstance(rec, dict) else type(rec).__name__
            raise CompareInputError(
                f"{path}: record {i}: schema_version {got!r}, this attnbench reads {SCHEMA_VERSION}"
            )
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise CompareInputError(f"{path}: record {i}: missing field(s) {', '.join(missing)}")
        records[rec["case_id"]] = rec
    env: dict[str, Any] = {}
    if (run_dir / "env.json").is_file():
        try:
            loaded = json.loads((run_dir / "env.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CompareInputError(f"{run_dir / 'env.json'}: unreadable: {exc}") from exc
        env = loaded if isinstance(loaded, dict) else {}
    run_id = str(rows[-1].get("run_id") or run_dir.name)
    return RunData(run_dir, run_id, env, records)


# ----- per-case verdicts ----------------------------------------------------------------------
def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _deterministic(metric: str, b: float, h: float, factor: float, absolute: float) -> Finding:
    """REGRESSED above b*factor + absolute, IMPROVED below (b - absolute)/factor, else SAME."""
    ratio = h / b if b else None
    if h > b * factor + absolute:
        verdict = REGRESSED
    elif h < (b - absolute) / factor:
        verdict = IMPROVED
    else:
        verdict = SAME
    return Finding(metric, verdict, b, h, ratio)


def _time_finding(b: dict, h: dict, opts: dict[str, Any]) -> Finding | None:
    bs, hs = b.get("time_ms_samples") or [], h.get("time_ms_samples") or []
    bm, hm = _num(b.get("time_ms_median")), _num(h.get("time_ms_median"))
    if not (bs or hs or bm or hm):
        return None  # time was not measured in either run
    st = time_verdict(
        bs,
        hs,
        opts["threshold"],
        opts["alpha"],
        opts["min_samples"],
        opts["n_boot"],
        opts["seed"],
        base_rounds=b.get("time_ms_rounds"),
        head_rounds=h.get("time_ms_rounds"),
    )
    ratio = st.ratio
    if ratio is None and bm and hm:  # no raw samples: the medians' ratio, but never a verdict on it
        ratio = hm / bm
    ci = (st.ci_lo, st.ci_hi) if st.ci_lo is not None and st.ci_hi is not None else None
    return Finding("time_ms", st.verdict, bm, hm, ratio, ci, st.p_value, opts["gate_time"], st.reason)


def _rel_err_finding(b: dict, h: dict, budgets: dict[str, float]) -> Finding | None:
    be, he = _num(b.get("rel_err")), _num(h.get("rel_err"))
    if be is None or he is None:
        return None
    f = _deterministic("rel_err", be, he, REL_ERR_FACTOR, REL_ERR_ABS)
    if f.verdict == REGRESSED:
        f.reason = f"above base × {REL_ERR_FACTOR:g} + {REL_ERR_ABS:g}"
    budget = budgets.get(h["label"], budgets.get(h["variant"]))
    if budget is not None and he > budget:
        f.verdict, f.reason = REGRESSED, f"above the budget {budget:g}"
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
    found = [_time_finding(b, h, opts), _rel_err_finding(b, h, opts["budget"])]
    bp, hp = _num(b.get("peak_mem_bytes")), _num(h.get("peak_mem_bytes"))
    if h.get("device") == "cuda" and b.get("device") == "cuda" and bp is not None and hp is not None:
        found.append(_deterministic("peak_mem_bytes", bp, hp, MEM_FACTOR, MEM_ABS))
    bf, hf = _num(b.get("flops")), _num(h.get("flops"))
    if bf and hf:
        f = _deterministic("flops", bf, hf, FLOPS_FACTOR, 0.0)
        f.reason = "the analytic cost model changed" if f.verdict != SAME else ""
        found.append(f)
    case.findings = [f for f in found if f is not None]
    gated = {f.verdict for f in case.findings if f.gated}
    case.verdict = next((v for v in (REGRESSED, IMPROVED, AMBIGUOUS) if v in gated), SAME)
    return case


def _variant_times(cases: list[CaseComparison]) -> list[VariantTime]:
    ratios: dict[str, list[float]] = {}
    for c in cases:
        f = c.finding("time_ms")
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
        "budget": dict(rel_err_budget or {}),
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
