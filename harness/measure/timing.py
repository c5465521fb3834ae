"""Timers for one benchmark case: warm-up, sampling, L2 flush, timeout, sample statistics.

Protocol (README, "Measurement protocol"):

1. Warm-up: call the step until `spec.warmup_ms` of wall time has passed (at least one call).
   The first call pays for compilation and autotuning; none of the warm-up calls is kept.
2. Sampling: time one call per sample until BOTH `spec.min_samples` samples are taken and
   `spec.rep_ms` of sampled time has accumulated, or `spec.max_samples` is reached.
   - CPU: `time.perf_counter` around each call.
   - CUDA: a `torch.cuda.Event(enable_timing=True)` pair around each call. Events of a round
     are all recorded first, then one `synchronize`, then `elapsed_time` per pair. When
     `spec.flush_l2`, a 256 MiB buffer (allocated once per process and device) is zeroed
     before each sample, outside the event pair, so every sample starts with a cold L2.
3. Timeout: when the wall time spent in the case (warm-up + sampling) exceeds `spec.timeout_s`,
   `CaseTimeout` is raised. The check runs between calls, so a single call longer than the
   limit is only detected when it returns (and, on CUDA, when the round is synchronized).

`make_step` builds the callable that one sample times, for modes `fwd`, `bwd`, `fwd_bwd`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

L2_FLUSH_BYTES = 256 * 1024 * 1024
GRAD_OUT_SEED = 0


class MeasureSpecLike(Protocol):
    """The fields of `harness.config.scenario.MeasureSpec` the timers read."""

    warmup_ms: float
    min_samples: int
    max_samples: int
    rep_ms: float
    flush_l2: bool
    timeout_s: float


class CaseTimeout(Exception):
    """The case spent more than `timeout_s` of wall time in warm-up and sampling."""


@dataclass
class TimingStats:
    """Summary of the raw per-call samples (milliseconds). `noise` = IQR / median."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    noise: float
    n: int
    samples_ms: list[float]


def summarize(samples_ms: Sequence[float]) -> TimingStats:
    """Median, p20, p80 and noise = (p75 - p25) / median, with numpy's linear interpolation.

    Noise is NaN when the median is 0 (no scale to relate the spread to).
    """
    if len(samples_ms) == 0:
        raise ValueError("summarize() needs at least one sample")
    x = np.asarray(samples_ms, dtype=np.float64)
    p20, p25, p50, p75, p80 = np.percentile(x, [20, 25, 50, 75, 80], method="linear")
    noise = float((p75 - p25) / p50) if p50 > 0 else math.nan
    return TimingStats(
        median_ms=float(p50),
        p20_ms=float(p20),
        p80_ms=float(p80),
        noise=noise,
        n=len(x),
        samples_ms=[float(s) for s in x],
    )


# ----------------------------------------------------------------------------- steps


def _reset_grads(tensors: Sequence[Tensor]) -> None:
    for t in tensors:
        t.grad = None


def _seeded_grad_out(out: Tensor) -> Tensor:
    """A fixed upstream gradient with the output's shape, dtype and device (seeded randn)."""
    gen = torch.Generator(device=out.device).manual_seed(GRAD_OUT_SEED)
    return torch.randn(out.shape, generator=gen, dtype=out.dtype, device=out.device)


def make_step(
    mode: str,
    fn: Callable[[], Tensor],
    inputs: Sequence[Tensor],
    params: Sequence[Tensor] = (),
) -> Callable[[], None]:
    """The callable one timing sample runs.

    fn: closure computing the attention output, e.g. `lambda: variant.forward(q, k, v, causal)`,
        output of any shape (typically (B, H, N, d)).
    inputs, params: the tensors whose `.grad` the step resets (those that require grad).

    Modes:
        "fwd":     `fn()` under `torch.no_grad()`, i.e. the inference cost: no autograd graph is
                   built and no activations are saved for backward.
        "fwd_bwd": reset grads, `out = fn()`, `out.backward(grad_out)`. `grad_out` is a seeded
                   randn of the output's shape and dtype, made once on the first call (a warm-up
                   call, so never inside a timed sample).
        "bwd":     `fn()` runs once here, now, with grad enabled (untimed); each step resets
                   grads and runs `out.backward(grad_out, retain_graph=True)` on that graph.
    Grads are reset by `t.grad = None`, so after a step they hold exactly one backward's grads.
    """
    grad_tensors = [t for t in (*inputs, *params) if t.requires_grad]
    if mode == "fwd":

        def fwd_step() -> None:
            with torch.no_grad():
                fn()

        return fwd_step

    if mode not in ("fwd_bwd", "bwd"):
        raise ValueError(f"unknown mode {mode!r}; expected one of 'fwd', 'bwd', 'fwd_bwd'")
    if not grad_tensors:
        raise ValueError(f"mode {mode!r} needs at least one input or param with requires_grad=True")

    if mode == "bwd":
        with torch.enable_grad():
            out = fn()
        grad_out = _seeded_grad_out(out)

        def bwd_step() -> None:
            _reset_grads(grad_tensors)
            out.backward(grad_out, retain_graph=True)

        return bwd_step

    cache: dict[str, Tensor] = {}

    def fwd_bwd_step() -> None:
        _reset_grads(grad_tensors)
        with torch.enable_grad():
            out = fn()
        if "grad_out" not in cache:
            cache["grad_out"] = _seeded_grad_out(out)
        out.backward(cache["grad_out"])

    return fwd_bwd_step


# ----------------------------------------------------------------------------- timers


class _CaseClock:
    """Wall clock of one case; `check` raises `CaseTimeout` past `timeout_s`."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.t0 = time.perf_counter()
        self.warmup_calls = 0

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    def check(self, n_samples: int) -> None:
        elapsed = self.elapsed_s()
        if elapsed > self.timeout_s:
            raise CaseTimeout(
                f"case exceeded timeout_s={self.timeout_s:g}: {elapsed:.3f} s elapsed after "
                f"{self.warmup_calls} warm-up calls and {n_samples} timed samples"
            )


def _validate(spec: MeasureSpecLike) -> None:
    if spec.max_samples < 1 or spec.min_samples < 0:
        raise ValueError(f"need max_samples >= 1 and min_samples >= 0, got {spec}")


def _done(samples_ms: Sequence[float], spec: MeasureSpecLike) -> bool:
    n = len(samples_ms)
    if n >= spec.max_samples:
        return True
    return n >= max(spec.min_samples, 1) and sum(samples_ms) >= spec.rep_ms


def _warmup(
    step: Callable[[], None], spec: MeasureSpecLike, clock: _CaseClock, sync: Callable[[], None]
) -> float:
    """Call `step` until `warmup_ms` of wall time has passed (>= 1 call); return the last call's ms."""
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        step()
        sync()
        t1 = time.perf_counter()
        clock.warmup_calls += 1
        clock.check(0)
        if (t1 - start) * 1e3 >= spec.warmup_ms:
            return (t1 - t0) * 1e3


def time_cpu(step: Callable[[], None], spec: MeasureSpecLike) -> TimingStats:
    """Warm up, then time each call of `step` with `time.perf_counter` (see module docstring)."""
    _validate(spec)
    clock = _CaseClock(spec.timeout_s)
    _warmup(step, spec, clock, sync=lambda: None)
    samples: list[float] = []
    while not _done(samples, spec):
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e3)
        clock.check(len(samples))
    return summarize(samples)


_L2_BUFFERS: dict[torch.device, Tensor] = {}


def _l2_flush_buffer(device: torch.device) -> Tensor:
    """A 256 MiB buffer per device, allocated once per process; zeroing it evicts L2."""
    if device not in _L2_BUFFERS:
        _L2_BUFFERS[device] = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    return _L2_BUFFERS[device]


def _round_size(samples_ms: Sequence[float], spec: MeasureSpecLike, est_ms: float) -> int:
    """Samples to record before the next synchronize: enough to reach min_samples and rep_ms."""
    by_time = math.ceil(max(spec.rep_ms - sum(samples_ms), 0.0) / max(est_ms, 1e-6))
    wanted = max(spec.min_samples - len(samples_ms), by_time, 1)
    return min(wanted, spec.max_samples - len(samples_ms))


def time_cuda(step: Callable[[], None], spec: MeasureSpecLike, device: str | torch.device) -> TimingStats:
    """Warm up, then time each call with a CUDA event pair (see module docstring).

    Samples are taken in rounds: the round size comes from the latest per-call estimate (the
    last warm-up call, then the median so far); each round records all its event pairs, then
    synchronizes once and reads them. Usually a single round suffices. Between launches the
    timeout check sees host time only; after each round's synchronize it sees the GPU time too.
    """
    _validate(spec)
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    with torch.cuda.device(dev):
        flush = _l2_flush_buffer(dev) if spec.flush_l2 else None
        torch.cuda.synchronize(dev)
        clock = _CaseClock(spec.timeout_s)
        est_ms = _warmup(step, spec, clock, sync=lambda: torch.cuda.synchronize(dev))
        samples: list[float] = []
        while not _done(samples, spec):
            pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
            for _ in range(_round_size(samples, spec, est_ms)):
                if flush is not None:
                    flush.zero_()
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                pairs.append((start, end))
                clock.check(len(samples))
            torch.cuda.synchronize(dev)
            samples.extend(start.elapsed_time(end) for start, end in pairs)
            clock.check(len(samples))
            est_ms = float(np.median(samples))
    return summarize(samples)


def time_step(step: Callable[[], None], spec: MeasureSpecLike, device: str | torch.device) -> TimingStats:
    """Dispatch to `time_cpu` or `time_cuda` on the device type ("cpu", "cuda", "cuda:1")."""
    kind = torch.device(device).type
    if kind == "cpu":
        return time_cpu(step, spec)
    if kind == "cuda":
        return time_cuda(step, spec, device)
    raise ValueError(f"no timer for device {device!r}; expected 'cpu' or 'cuda[:index]'")
