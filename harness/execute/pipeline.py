"""One case, start to finish: supports? -> inputs -> fit -> accuracy -> checks -> time -> memory.

Everything here fills a `Record`; nothing raises out of `run_case` except KeyboardInterrupt.
Failures become statuses: `skipped` (not supported), `oom`, `error`, `nan`, `timeout`, `leak`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
from torch import Tensor

from harness.config.scenario import Scenario
from harness.config.sweep import Case, static_skip_reasons
from harness.inputs import synthetic as inputs
from harness.measure import accuracy, memory, timing
from harness.measure.roofline import Roofline
from harness.plugins.contract import AttentionVariant, FitResult, Teacher
from harness.plugins.variants import VARIANTS
from harness.results.records import Record

OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "DefaultCPUAllocator")


class CaseContext:
    """Run-level facts every case needs."""

    def __init__(self, scenario: Scenario, run_id: str, git_sha: str, scenario_arg: str, device: str) -> None:
        self.scenario = scenario
        self.run_id = run_id
        self.git_sha = git_sha
        self.scenario_arg = scenario_arg
        self.device = device
        self.roofline: Roofline | None = None  # set by the runner when measure.roofline is on
        # fitted parameters per (variant config, problem minus mode): fwd and fwd_bwd cases of
        # the same configuration see the same inputs, so they share one fit (see `_fit`).
        self.fit_cache: dict[str, FittedState] = {}


@dataclass
class FittedState:
    """A finished fit: the parameters it produced and what it recorded."""

    state: dict[str, Tensor]
    result: FitResult
    unfitted_rel_err: float | None


def fit_cache_key(case: Case) -> str:
    """Everything a fit depends on: the case without its mode (inputs and fit spec are run-level)."""
    problem = dataclasses.replace(case.problem, mode="-")
    return json.dumps(
        [case.variant, case.impl, case.params, dataclasses.asdict(problem), str(case.fit), str(case.inputs)]
    )


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory failure of the CUDA or CPU allocator."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MARKERS)


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}"


@contextlib.contextmanager
def hard_timeout(seconds: float) -> Iterator[None]:
    """Raise `timing.CaseTimeout` in the main thread after `seconds` (SIGALRM; no-op elsewhere).

    Python checks signals between bytecodes, so a single long native call is interrupted only
    when it returns to Python; the timer loop in timing.py also checks its own budget.
    """
    if not hasattr(signal, "setitimer") or seconds <= 0:
        yield
        return
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise timing.CaseTimeout(f"case exceeded its {seconds:g} s limit")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def new_record(case: Case, ctx: CaseContext) -> Record:
    cls = VARIANTS.get(case.variant)
    p = case.problem
    sc = ctx.scenario
    return Record(
        case_id=case.case_id,
        run_id=ctx.run_id,
        scenario=sc.name,
        scenario_version=sc.version,
        variant=case.variant,
        variant_version=cls.version,
        impl=case.impl,
        params=case.params,
        label=case.label,
        config_key=case.config_key,
        batch=p.batch,
        heads=p.heads,
        seq_len=p.seq_len,
        head_dim=p.head_dim,
        feature_dim=cls.feature_dim(cls.make_params(case.params), p),
        dtype=p.dtype,
        device=p.device,
        causal=p.causal,
        mode=p.mode,
        input_dist=case.inputs.dist,
        input_scale=case.inputs.scale,
        input_seed=case.inputs.seed,
        git_sha=ctx.git_sha,
        threads=torch.get_num_threads(),
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        repro=f"python run_bench.py {ctx.scenario_arg} --device {p.device} --case {case.case_id}",
    )


def _cost_model(rec: Record, case: Case) -> None:
    """flops/bytes from the variant's analytic model, and the rates they imply at the median time."""
    cls = VARIANTS.get(case.variant)
    params = cls.make_params(case.params)
    seconds = rec.time_ms_median * 1e-3 if rec.time_ms_median else None
    try:
        rec.flops = float(cls.flops(case.problem, params))
        rec.tflops = rec.flops / seconds / 1e12 if seconds else None
    except NotImplementedError:
        pass
    try:
        rec.bytes_moved = float(cls.bytes_moved(case.problem, params))
        rec.gbps = rec.bytes_moved / seconds / 1e9 if seconds else None
    except NotImplementedError:
        pass


def _roofline_floor(rec: Record, roofline: Roofline | None) -> None:
    """floor_ms and time_over_floor from the run's measured device rates (when measured)."""
    if roofline is None:
        return
    rec.floor_ms = roofline.floor_ms(rec.flops, rec.bytes_moved, rec.dtype)
    if rec.floor_ms and rec.time_ms_median:
        rec.time_over_floor = rec.time_ms_median / rec.floor_ms


def _canonical_forward(variant: AttentionVariant, layout: str, causal: bool) -> Callable[..., Tensor]:
    """forward on canonical (B, H, N, d) tensors, whatever the variant's layout."""

    def fwd(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if layout == "bnhd":
            q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        return inputs.to_canonical(variant(q, k, v, causal), layout)

    return fwd


def _measure_accuracy(
    rec: Record, fwd: Callable[..., Tensor], qc: Tensor, kc: Tensor, vc: Tensor, ctx
) -> bool:
    """Fill accuracy fields; returns False (status nan) when the output is not finite."""
    spec = ctx.scenario.accuracy
    causal = rec.causal
    with torch.no_grad():
        out = fwd(qc, kc, vc)
    if not accuracy.is_finite(out):
        bad = int((~torch.isfinite(out)).sum())
        rec.status, rec.reason = "nan", f"output has {bad} non-finite values of {out.numel()}"
        return False
    if spec.enabled:
        acc = accuracy.accuracy_metrics(qc, kc, vc, out, causal, spec.rows, spec.seed)
        rec.rel_err, rec.max_abs_err, rec.cos_sim = acc.rel_err, acc.max_abs_err, acc.cos_sim
        rec.uniform_rel_err, rec.skill = acc.uniform_rel_err, acc.skill
        rec.softmax_entropy = inputs.softmax_row_entropy(qc, kc, causal, rows=spec.rows, seed=spec.seed)
    return True


def _run_checks(rec: Record, fwd: Callable[..., Tensor], qc: Tensor, kc: Tensor, vc: Tensor, ctx) -> None:
    checks = ctx.scenario.checks
    with torch.no_grad():
        if rec.causal and checks.causality:
            rec.causality_change = accuracy.causality_change(fwd, qc, kc, vc)
            if rec.causality_change > checks.tolerance:
                rec.status = "leak"
                rec.reason = (
                    f"causality leak: changing future keys/values moved past outputs by "
                    f"{rec.causality_change:.3g} (relative; tolerance {checks.tolerance:g})"
                )
        if checks.batch_independence and rec.batch > 1:
            rec.batch_change = accuracy.batch_change(fwd, qc, kc, vc)
            if rec.batch_change is not None and rec.batch_change > checks.tolerance and rec.status == "ok":
                rec.status = "leak"
                rec.reason = (
                    f"batch leak: sample 0's output moved by {rec.batch_change:.3g} when the other samples "
                    f"changed (relative; tolerance {checks.tolerance:g})"
                )


def _fit(rec: Record, variant: AttentionVariant, case: Case, fwd, qc, kc, vc, ctx) -> None:
    """Record the unfitted error, then distil the variant to exact softmax (untimed).

    A fit already done in this run for the same configuration and problem (another mode) is
    reused: its parameters are loaded and its steps, seconds and loss recorded again, with
    `info.fit_reused = true`.
    """
    sc = ctx.scenario
    key = fit_cache_key(case)
    cached = ctx.fit_cache.get(key)
    if cached is not None:
        variant.load_state_dict(cached.state)
        rec.unfitted_rel_err = cached.unfitted_rel_err
        result = cached.result
        rec.info["fit_reused"] = True
    else:
        if sc.accuracy.enabled:
            with torch.no_grad():
                out = fwd(qc, kc, vc)
            unfit = accuracy.accuracy_metrics(qc, kc, vc, out, rec.causal, sc.accuracy.rows, sc.accuracy.seed)
            rec.unfitted_rel_err = unfit.rel_err
        if case.fit.steps == 0:
            rec.fit_steps, rec.fit_s = 0, 0.0
            return
        calib = inputs.calibration_batches(case.problem, case.inputs, case.fit)
        result = variant.fit(calib, Teacher(rec.causal), case.fit)
        state = {name: t.detach().clone() for name, t in variant.state_dict().items()}
        ctx.fit_cache[key] = FittedState(state, result, rec.unfitted_rel_err)
    rec.fit_steps, rec.fit_s, rec.fit_loss = result.steps, result.seconds, result.final_loss


def _execute(rec: Record, case: Case, ctx: CaseContext) -> None:
    sc = ctx.scenario
    cls = VARIANTS.get(case.variant)
    layout = cls.layout_for(case.impl)
    problem = case.problem
    torch.manual_seed(case.inputs.seed)
    variant = cls(cls.make_params(case.params), case.impl, problem).to(problem.device)
    q, k, v = inputs.make_qkv(problem, case.inputs, layout=layout, requires_grad=problem.needs_backward)
    qc, kc, vc = (inputs.to_canonical(x.detach(), layout) for x in (q, k, v))
    rec.input_bytes = sum(x.numel() * x.element_size() for x in (q, k, v))
    fwd = _canonical_forward(variant, layout, problem.causal)

    if case.fit is not None:
        _fit(rec, variant, case, fwd, qc, kc, vc, ctx)
    if not _measure_accuracy(rec, fwd, qc, kc, vc, ctx):
        return
    _run_checks(rec, fwd, qc, kc, vc, ctx)
    rec.info.update(variant.info())

    params = [p for p in variant.parameters() if p.requires_grad]
    step = timing.make_step(problem.mode, lambda: variant(q, k, v, problem.causal), [q, k, v], params=params)
    stats = timing.time_step(step, sc.measure, problem.device)
    rec.time_ms_median, rec.time_ms_p20, rec.time_ms_p80 = stats.median_ms, stats.p20_ms, stats.p80_ms
    rec.time_ms_samples, rec.n_samples, rec.noise = stats.samples_ms, stats.n, stats.noise
    del step
    if sc.measure.memory:
        mem_step = timing.make_step(
            problem.mode, lambda: variant(q, k, v, problem.causal), [q, k, v], params=params
        )
        try:
            mem = memory.measure_memory(mem_step, problem.device)
            rec.peak_mem_bytes, rec.extra_mem_bytes, rec.mem_method = (
                mem.peak_bytes,
                mem.extra_bytes,
                mem.method,
            )
        except memory.MemoryMeasureError as exc:
            rec.mem_method = f"unavailable: {exc}"


def run_case(case: Case, ctx: CaseContext, oom_at: dict[str, int]) -> Record:
    """Run one case and return its record. `oom_at` maps config_key -> seq_len that ran out of memory."""
    t0 = time.perf_counter()
    rec = new_record(case, ctx)
    reasons = static_skip_reasons(case)
    if case.config_key in oom_at and case.problem.seq_len > oom_at[case.config_key]:
        reasons.append(
            f"{case.label} ran out of memory at seq_len {oom_at[case.config_key]}; longer lengths skipped"
        )
    if reasons:
        rec.status, rec.reason = "skipped", "; ".join(reasons)
        return rec
    try:
        with hard_timeout(ctx.scenario.measure.timeout_s):
            _execute(rec, case, ctx)
    except timing.CaseTimeout as exc:
        rec.status, rec.reason = "timeout", str(exc)
    except Exception as exc:  # a failing case must never stop the sweep: record it
        if is_oom(exc):
            rec.status, rec.reason = "oom", one_line(exc)
            oom_at[case.config_key] = min(oom_at.get(case.config_key, math.inf), case.problem.seq_len)
        else:
            rec.status, rec.reason = "error", one_line(exc)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if rec.status == "ok" and rec.rel_err is not None and not math.isfinite(rec.rel_err):
        rec.status, rec.reason = "nan", "error metric is not finite"
    _cost_model(rec, case)
    _roofline_floor(rec, ctx.roofline)
    rec.wall_s = time.perf_counter() - t0
    return rec
