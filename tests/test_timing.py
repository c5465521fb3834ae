"""Tests for harness.measure.timing: statistics, the sampling protocol, timeouts and the step modes."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from harness.config.scenario import MeasureSpec
from harness.measure.timing import (
    CaseTimeout,
    TimingStats,
    make_step,
    summarize,
    time_cpu,
    time_cuda,
    time_step,
)


def spec(**kw: float) -> MeasureSpec:
    """A fast MeasureSpec: no warm-up time, no rep time, unless a test asks for them."""
    base = dict(warmup_ms=0.0, min_samples=1, max_samples=1000, rep_ms=0.0, flush_l2=False, timeout_s=60.0)
    base.update(kw)
    return MeasureSpec(**base)


@dataclass
class Recorder:
    """A step that records the perf_counter time of each call and optionally sleeps."""

    sleep_s: float = 0.0
    first_sleep_s: float = 0.0

    def __post_init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self) -> None:
        self.calls.append(time.perf_counter())
        time.sleep(self.first_sleep_s if len(self.calls) == 1 else self.sleep_s)


# ----------------------------------------------------------------------------- summarize


@pytest.mark.parametrize(
    "samples",
    [[1.0, 2.0, 3.0, 4.0, 5.0], [10.0], [3.5, 1.25, 9.0, 2.0], list(np.linspace(0.1, 7.3, 37))],
)
def test_summarize_matches_numpy(samples: list[float]) -> None:
    stats = summarize(samples)
    x = np.asarray(samples)
    assert stats.median_ms == pytest.approx(np.median(x))
    assert stats.p20_ms == pytest.approx(np.percentile(x, 20))
    assert stats.p80_ms == pytest.approx(np.percentile(x, 80))
    iqr = np.percentile(x, 75) - np.percentile(x, 25)
    assert stats.noise == pytest.approx(iqr / np.median(x))
    assert stats.n == len(samples)
    assert stats.samples_ms == samples


def test_summarize_known_values() -> None:
    # 1..5: median 3, p20 = 1.8, p80 = 4.2, IQR = 4 - 2 = 2 -> noise 2/3 (linear interpolation)
    stats = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (stats.median_ms, stats.p20_ms, stats.p80_ms) == pytest.approx((3.0, 1.8, 4.2))
    assert stats.noise == pytest.approx(2 / 3)
    assert isinstance(stats, TimingStats)


def test_summarize_empty_raises() -> None:
    with pytest.raises(ValueError):
        summarize([])


# ----------------------------------------------------------------------------- time_cpu protocol


@pytest.mark.parametrize("min_samples", [1, 7, 25])
def test_min_samples_honoured_with_no_rep_time(min_samples: int) -> None:
    step = Recorder()
    stats = time_cpu(step, spec(min_samples=min_samples))
    assert stats.n == min_samples
    assert len(step.calls) == min_samples + 1  # warmup_ms=0 still makes exactly one warm-up call


@pytest.mark.parametrize("max_samples", [1, 5])
def test_max_samples_caps_sampling(max_samples: int) -> None:
    step = Recorder()
    stats = time_cpu(step, spec(min_samples=50, rep_ms=1e9, max_samples=max_samples))
    assert stats.n == max_samples
    assert len(step.calls) == max_samples + 1


def test_sampling_stops_once_rep_ms_reached() -> None:
    step = Recorder(sleep_s=0.002)
    stats = time_cpu(step, spec(min_samples=2, rep_ms=20.0))
    assert sum(stats.samples_ms) >= 20.0
    assert sum(stats.samples_ms[:-1]) < 20.0  # one fewer sample would not have been enough
    assert stats.median_ms >= 2.0  # the sample covers the sleep


def test_warmup_runs_for_warmup_ms_before_first_sample() -> None:
    step = Recorder(sleep_s=0.005)
    stats = time_cpu(step, spec(warmup_ms=30.0, min_samples=3))
    n_warm = len(step.calls) - stats.n
    assert 2 <= n_warm <= 7  # 30 ms of 5 ms calls
    assert (step.calls[n_warm] - step.calls[0]) * 1e3 >= 30.0


def test_slow_first_call_is_not_sampled() -> None:
    step = Recorder(first_sleep_s=0.1, sleep_s=0.0)
    stats = time_cpu(step, spec(min_samples=5))
    assert max(stats.samples_ms) < 50.0


@pytest.mark.parametrize("warmup_ms", [0.0, 1000.0])  # timeout hit while sampling / during warm-up
def test_case_timeout(warmup_ms: float) -> None:
    step = Recorder(sleep_s=0.02)
    t0 = time.perf_counter()
    with pytest.raises(CaseTimeout, match=r"timeout_s=0.05: 0\.\d+ s elapsed .* samples"):
        time_cpu(step, spec(warmup_ms=warmup_ms, min_samples=100, timeout_s=0.05))
    assert time.perf_counter() - t0 < 0.5
    assert len(step.calls) <= 5


def test_time_step_dispatch() -> None:
    stats = time_step(Recorder(), spec(min_samples=3), "cpu")
    assert stats.n == 3
    with pytest.raises(ValueError, match="no timer"):
        time_step(Recorder(), spec(), "meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("flush_l2", [False, True])
def test_time_cuda_matmul(flush_l2: bool) -> None:
    a = torch.randn(1024, 1024, device="cuda")
    stats = time_cuda(
        lambda: a @ a, spec(warmup_ms=5.0, min_samples=10, rep_ms=20.0, flush_l2=flush_l2), "cuda"
    )
    assert stats.n >= 10 and (sum(stats.samples_ms) >= 20.0 or stats.n == 1000)
    assert all(s > 0 for s in stats.samples_ms)
    assert time_step(lambda: a @ a, spec(min_samples=4), "cuda:0").n == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_time_cuda_measures_gpu_time() -> None:
    a = torch.randn(4096, 4096, device="cuda")
    one = time_cuda(lambda: a @ a, spec(min_samples=10), "cuda").median_ms
    four = time_cuda(lambda: [a @ a for _ in range(4)], spec(min_samples=10), "cuda").median_ms
    assert 2.5 < four / one < 6.0


# ----------------------------------------------------------------------------- make_step


def test_fwd_runs_without_grad() -> None:
    x = torch.randn(4, 5, requires_grad=True)
    seen: list[bool] = []

    def fn() -> torch.Tensor:
        seen.append(torch.is_grad_enabled())
        return x * 2

    step = make_step("fwd", fn, [x])
    step()
    step()
    assert seen == [False, False]
    assert x.grad is None


def test_bwd_runs_backward_only() -> None:
    x = torch.randn(3, 6, requires_grad=True)
    w = torch.randn(6, 2, requires_grad=True)
    forwards = []

    def fn() -> torch.Tensor:
        forwards.append(1)
        return torch.tanh(x @ w)

    step = make_step("bwd", fn, [x], params=[w])
    assert len(forwards) == 1  # the graph is built once, at make_step time
    step()
    gx, gw = x.grad.clone(), w.grad.clone()
    for _ in range(3):
        step()
    assert len(forwards) == 1
    torch.testing.assert_close(x.grad, gx)  # reset each step, not accumulated
    torch.testing.assert_close(w.grad, gw)


def test_fwd_bwd_grad_is_one_backward_with_seeded_grad_out() -> None:
    x = torch.randn(2, 3, 7, requires_grad=True)
    forwards = []

    def fn() -> torch.Tensor:
        forwards.append(1)
        return x * 3.0

    step = make_step("fwd_bwd", fn, [x])
    for _ in range(4):
        step()
    assert len(forwards) == 4
    grad_out = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.grad, 3.0 * grad_out)  # one backward, not four


def test_fwd_bwd_resets_param_grads() -> None:
    lin = torch.nn.Linear(5, 4)
    x = torch.randn(3, 5)
    step = make_step("fwd_bwd", lambda: lin(x), [x], params=list(lin.parameters()))
    step()
    first = lin.weight.grad.clone()
    step()
    step()
    torch.testing.assert_close(lin.weight.grad, first)
    assert x.grad is None  # x does not require grad and is left alone


def test_fwd_bwd_keeps_output_dtype() -> None:
    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    step = make_step("fwd_bwd", lambda: x.float().exp().to(torch.bfloat16), [x])
    step()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_make_step_rejects_bad_mode_and_missing_grads() -> None:
    x = torch.randn(3)
    with pytest.raises(ValueError, match="unknown mode"):
        make_step("backward", lambda: x, [x])
    with pytest.raises(ValueError, match="requires_grad"):
        make_step("fwd_bwd", lambda: x * 2, [x])
