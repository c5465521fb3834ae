"""The life of one case, the same for every benchmark kind.

    new record -> skip reasons (the kind's, else the variant's capabilities and the input
    source's availability; the OOM rule) -> kind.measure under the hard timeout -> status from
    what was raised (timeout, oom, error with its traceback tail; --raise re-raises) -> non-finite
    results become `nan` -> kind.finish -> device cache released -> wall time

A kind implements only "measure this case into this record" (`harness.plugins.kinds`); nothing
raises out of `run_case` except KeyboardInterrupt, or the first failure under `--raise`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from harness import inputs
from harness.config.sweep import Case, static_skip_reasons
from harness.measure import hygiene
from harness.measure.failures import hard_timeout, is_oom, one_line, trace_tail
from harness.measure.timing import CaseTimeout
from harness.plugins.kinds import BenchmarkKind
from harness.results.case_record import new_record
from harness.results.records import Record


def skip_reasons(kind: BenchmarkKind, case: Case, oom_at: dict[str, int]) -> list[str]:
    """Why `case` does not run: the kind's own reasons (or the variant's capabilities and the input
    source's availability), and the OOM rule: a configuration that ran out of memory at some length
    skips the longer ones."""
    own = kind.skip_reasons(case)
    if own is None:
        source = inputs.get_source(case.inputs.dist)
        own = static_skip_reasons(case) + source.unavailable(case.inputs.options)
    reasons = list(own)
    if case.config_key in oom_at and case.problem.seq_len > oom_at[case.config_key]:
        reasons.append(
            f"{case.label} ran out of memory at seq_len {oom_at[case.config_key]}; longer lengths skipped"
        )
    return reasons


def run_case(kind: BenchmarkKind, case: Case, ctx: Any, oom_at: dict[str, int]) -> Record:
    """Run one case of `kind` and return its record. `ctx` is the worker's CaseContext; `oom_at`
    maps config_key -> the shortest seq_len that ran out of memory (updated here)."""
    t0 = time.perf_counter()
    hygiene.apply_threads(ctx.scenario.measure, case.problem.device)  # before new_record reads threads
    rec = new_record(case, ctx, kind.name)
    reasons = skip_reasons(kind, case, oom_at)
    if reasons:
        rec.status, rec.reason = "skipped", "; ".join(reasons)
        rec.wall_s = time.perf_counter() - t0
        return rec
    try:
        with hard_timeout(ctx.scenario.measure.timeout_s):
            kind.measure(case, rec, ctx)
    except CaseTimeout as exc:
        rec.status, rec.reason = "timeout", str(exc)
    except Exception as exc:  # a failing case must never stop the sweep: record it
        if ctx.raise_errors:  # --raise: the first failure propagates with its traceback
            raise
        if is_oom(exc):
            rec.status, rec.reason = "oom", one_line(exc)
            oom_at[case.config_key] = min(oom_at.get(case.config_key, math.inf), case.problem.seq_len)
        else:
            rec.status, rec.reason, rec.error_trace = "error", one_line(exc), trace_tail(exc)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    bad = kind.non_finite(rec) if rec.status == "ok" else None
    if bad is not None:
        rec.status, rec.reason = "nan", f"a measured result is not finite ({bad})"
    kind.finish(case, rec, ctx)
    rec.wall_s = time.perf_counter() - t0
    return rec
