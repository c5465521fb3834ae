"""Regression verdicts between two runs (base vs head) and the Markdown verdict report.

Cases are matched by `case_id`. Deterministic metrics are gated tightly (rel_err, CUDA peak
memory, cost-model FLOPs); time is compared on the raw samples with a bootstrap CI of the
median ratio plus Mann-Whitney U, and only a confident change beyond the threshold counts.
Only a confirmed regression fails (`exit_code` 1); AMBIGUOUS never does. Bad input raises
`CompareInputError` (one line; the CLI maps it to exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.records import SCHEMA_VERSION, read_records
from harness.stats import AMBIGUOUS, IMPROVED, REGRESSED, SAME, geomean, time_verdict

NEW, MISSING, STATUS_CHANGED = "NEW", "MISSING", "STATUS-CHANGED"
VERDICTS = (REGRESSED, IMPROVED, SAME, AMBIGUOUS, NEW, MISSING, STATUS_CHANGED)
ENV_KEYS = ("gpu", "cpu", "torch", "cuda", "gpu_driver", "threads")
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
    records: dict[str, dict[str, Any]]  # case_id -> record (the last one wins)


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
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def finding(self, metric: str) -> Finding | None:
        return next((f for f in self.findings if f.metric == metric), None)


@dataclass
class VariantTime:
    """Geometric mean of head/base median time over the variant's cases ok in both runs."""

    variant: str
    n: int
    geomean: float
    lo: float
    hi: float


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
    def verdict(self) -> str:
        counts = self.counts
        for v in (REGRESSED, IMPROVED, STATUS_CHANGED, AMBIGUOUS):
            if counts[v]:
                return v
        return SAME

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
        raise CompareInputError(f"{path}: unreadable: {exc}") from exc
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
    ratio = h / b if b else None
    if h > b * factor + absolute:
        verdict = REGRESSED
    elif h < (b - absolute) / factor:
        verdict = IMPROVED
    else:
        verdict = SAME
    return Finding(metric, verdict, b, h, ratio)


def _time_finding(b: dict, h: dict, opts: dict[str, Any]) -> Finding:
    bs, hs = b.get("time_ms_samples") or [], h.get("time_ms_samples") or []
    st = time_verdict(bs, hs, opts["threshold"], opts["alpha"], opts["min_samples"], opts["n_boot"], opts["seed"])
    ratio = st.ratio
    bm, hm = _num(b.get("time_ms_median")), _num(h.get("time_ms_median"))
    if ratio is None and bm and hm:  # no raw samples: the medians' ratio, but never a verdict on it
        ratio = hm / bm
    ci = (st.ci_lo, st.ci_hi) if st.ci_lo is not None else None
    base_v = float(sorted(bs)[len(bs) // 2]) if bs else bm
    head_v = float(sorted(hs)[len(hs) // 2]) if hs else hm
    return Finding("time_ms", st.verdict, base_v, head_v, ratio, ci, st.p_value, opts["gate_time"], st.reason)


def compare_case(b: dict, h: dict, opts: dict[str, Any]) -> CaseComparison:
    """Verdict of one case present in both runs."""
    case = CaseComparison(
        h["case_id"], h["label"], h["variant"], int(h["seq_len"]), h["dtype"], bool(h["causal"]), h["mode"], SAME
    )
    sb, sh = b["status"], h["status"]
    if b.get("variant_version") != h.get("variant_version"):
        case.notes.append(f"variant version {b.get('variant_version')} -> {h.get('variant_version')}")
    if sb != sh:
        verdict = REGRESSED if sb == "ok" else IMPROVED if sh == "ok" else STATUS_CHANGED
        base_s = sb if sb == "ok" else f"{sb}: {b.get('reason', '')}"
        head_s = sh if sh == "ok" else f"{sh}: {h.get('reason', '')}"
        case.findings.append(Finding("status", verdict, base_s, head_s, reason=f"status {sb} -> {sh}"))
    elif sb == "ok":
        case.findings.append(_time_finding(b, h, opts))
        be, he = _num(b.get("rel_err")), _num(h.get("rel_err"))
        if be is not None and he is not None:
            f = _deterministic("rel_err", be, he, REL_ERR_FACTOR, REL_ERR_ABS)
            budget = opts["budget"].get(h["label"], opts["budget"].get(h["variant"]))
            if budget is not None and he > budget:
                f.verdict, f.reason = REGRESSED, f"above the budget {budget:g}"
            case.findings.append(f)
        bp, hp = _num(b.get("peak_mem_bytes")), _num(h.get("peak_mem_bytes"))
        if h.get("device") == "cuda" and b.get("device") == "cuda" and bp is not None and hp is not None:
            case.findings.append(_deterministic("peak_mem_bytes", bp, hp, MEM_FACTOR, MEM_ABS))
        bf, hf = _num(b.get("flops")), _num(h.get("flops"))
        if bf and hf:
            f = _deterministic("flops", bf, hf, FLOPS_FACTOR, 0.0)
            f.reason = "the analytic cost model changed" if f.verdict != SAME else ""
            case.findings.append(f)
    else:
        case.notes.append(f"{sb} in both runs")
    gated = {f.verdict for f in case.findings if f.gated}
    case.verdict = next((v for v in (REGRESSED, STATUS_CHANGED, IMPROVED, AMBIGUOUS) if v in gated), SAME)
    return case


def _variant_times(cases: list[CaseComparison]) -> list[VariantTime]:
    ratios: dict[str, list[float]] = {}
    for c in cases:
        f = c.finding("time_ms")
        if f is not None and f.ratio is not None and f.ratio > 0:
            ratios.setdefault(c.variant, []).append(f.ratio)
    return [VariantTime(v, len(r), geomean(r), min(r), max(r)) for v, r in sorted(ratios.items())]


def _env_warnings(base: RunData, head: RunData) -> list[str]:
    out = []
    for side in (base, head):
        if not side.env:
            out.append(f"{side.path}: no env.json; cannot check that the machines match")
    if base.env and head.env:
        diffs = [f"{k}: {base.env.get(k)!r} -> {head.env.get(k)!r}" for k in ENV_KEYS if base.env.get(k) != head.env.get(k)]
        if diffs:
            out.append("environments differ (" + "; ".join(diffs) + "): time verdicts may reflect the machine")
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
    verdicts without letting them decide a case (CPU CI); rel_err_budget: {variant or label: max}.
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
        if b is None:
            cases.append(CaseComparison(cid, h["label"], h["variant"], int(h["seq_len"]), h["dtype"],
                                        bool(h["causal"]), h["mode"], NEW))
        else:
            cases.append(compare_case(b, h, opts))
    for cid, b in base.records.items():
        if cid not in head.records:
            cases.append(CaseComparison(cid, b["label"], b["variant"], int(b["seq_len"]), b["dtype"],
                                        bool(b["causal"]), b["mode"], MISSING))
    warnings = _env_warnings(base, head)
    if not any(c.verdict not in (NEW, MISSING) for c in cases):
        warnings.append("no case in common (different scenarios?): nothing was compared")
    return ComparisonResult(base, head, threshold, alpha, gate_time, cases, _variant_times(cases), warnings)


def exit_code(result: ComparisonResult) -> int:
    """1 on a confirmed regression, else 0 (AMBIGUOUS, NEW and MISSING never fail)."""
    return 1 if result.counts[REGRESSED] else 0
