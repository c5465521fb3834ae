"""Tests for harness.measure.memory: CPU profiler-timeline peaks against known allocations, CUDA path."""

from __future__ import annotations

import math

import pytest
import torch

from harness.measure.memory import MemoryMeasureError, MemoryResult, measure_memory
from harness.measure.timing import make_step

MB = 1_000_000


def test_known_allocation_plus_freed_temporary() -> None:
    def step() -> None:
        kept = torch.empty(10 * MB, dtype=torch.uint8)
        tmp = torch.empty(2 * MB, dtype=torch.uint8)  # alive together with `kept`, then freed
        del tmp
        kept.fill_(1)  # `kept` lives until the end of the step

    r = measure_memory(step, "cpu")
    assert isinstance(r, MemoryResult) and r.method == "torch_profiler_memory_timeline"
    assert r.extra_bytes == pytest.approx(12 * MB, rel=0.05)
    assert r.peak_bytes == r.extra_bytes  # nothing preexisting was used


def test_sequential_temporaries_report_max_not_sum() -> None:
    def step() -> None:
        a = torch.empty(4 * MB, dtype=torch.uint8)
        del a
        b = torch.empty(3 * MB, dtype=torch.uint8)
        del b

    r = measure_memory(step, "cpu")
    assert r.extra_bytes == pytest.approx(4 * MB, rel=0.05)


def test_base_counts_preexisting_input() -> None:
    x = torch.randn(1000, 1000)  # 4 MB, allocated before the step

    def step() -> None:
        y = x * 2  # one new 4 MB tensor
        del y

    r = measure_memory(step, "cpu")
    assert r.peak_bytes - r.extra_bytes == pytest.approx(4 * MB, rel=0.05)
    assert r.extra_bytes == pytest.approx(4 * MB, rel=0.05)


def test_in_place_mutation_is_not_an_allocation() -> None:
    x = torch.randn(1000, 1000)

    def step() -> None:
        x.add_(1.0)  # a new version of x's storage (INCREMENT_VERSION), no new bytes
        x.mul_(0.5)

    r = measure_memory(step, "cpu")
    assert r.extra_bytes < 1024  # at most the scalar operands
    assert r.peak_bytes - r.extra_bytes == pytest.approx(4 * MB, rel=0.05)


def attention_step(mode: str, b: int, h: int, n: int, d: int) -> tuple:
    """Plain softmax attention on (b, h, n, d) inputs as a make_step step, plus the q, k, v."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g).requires_grad_() for _ in range(3))

    def fn() -> torch.Tensor:
        s = q @ k.transpose(-1, -2) / math.sqrt(d)  # (b, h, n, n)
        return s.softmax(-1) @ v  # (b, h, n, d)

    return make_step(mode, fn, [q, k, v]), (q, k, v)


@pytest.mark.parametrize("shape", [(1, 2, 257, 32), (2, 2, 63, 16)])
def test_attention_fwd_bwd_peak_matches_autograd_analysis(shape: tuple[int, int, int, int]) -> None:
    b, h, n, d = shape
    scores, x = 4 * b * h * n * n, 4 * b * h * n * d  # bytes of one (n, n) and one (n, d) fp32 tensor
    step, qkv = attention_step("fwd_bwd", b, h, n, d)
    step()  # the first call makes grad_out and leaves grads behind
    r1 = measure_memory(step, "cpu", reset_grads=qkv)
    r2 = measure_memory(step, "cpu", reset_grads=qkv)
    assert r1 == r2  # deterministic
    assert r1.peak_bytes - r1.extra_bytes == 4 * x  # base: q, k, v and grad_out
    # Softmax backward holds P (saved), dP and dS at once: 3 score matrices, plus a few (n, d) grads.
    assert 3 * scores <= r1.extra_bytes <= 3 * scores + 4 * x
    assert all(t.grad is not None for t in qkv)


def test_attention_fwd_peak() -> None:
    b, h, n, d = 1, 2, 257, 32
    scores, x = 4 * b * h * n * n, 4 * b * h * n * d
    step, _ = attention_step("fwd", b, h, n, d)
    r = measure_memory(step, "cpu")
    # No saved activations: at most two score matrices live at once (q k^T and its scaled copy).
    assert 2 * scores <= r.extra_bytes <= 2 * scores + 2 * x
    assert r.peak_bytes - r.extra_bytes == 3 * x  # q, k, v


def test_reset_grads_clears_before_measuring() -> None:
    step, qkv = attention_step("fwd_bwd", 1, 1, 63, 8)
    step()
    assert all(t.grad is not None for t in qkv)
    measure_memory(lambda: None, "cpu", reset_grads=qkv)
    assert all(t.grad is None for t in qkv)


def test_private_api_failure_becomes_memory_measure_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object) -> None:
        raise AttributeError("no _memory_profile in this torch")

    monkeypatch.setattr(torch.profiler.profile, "_memory_profile", broken)
    with pytest.raises(MemoryMeasureError, match="private API.*AttributeError"):
        measure_memory(lambda: None, "cpu")


def test_step_errors_propagate_unchanged() -> None:
    def step() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom") as info:
        measure_memory(step, "cpu")
    assert info.type is RuntimeError


def test_unknown_device() -> None:
    with pytest.raises(ValueError, match="no memory measurement"):
        measure_memory(lambda: None, "meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_known_allocation() -> None:
    x = torch.empty(8 * MB, dtype=torch.uint8, device="cuda")

    def step() -> None:
        kept = torch.empty(10 * MB, dtype=torch.uint8, device="cuda")
        tmp = torch.empty(2 * MB, dtype=torch.uint8, device="cuda")
        del tmp
        kept.fill_(1)

    r = measure_memory(step, "cuda")
    assert r.method == "cuda_caching_allocator"
    assert r.extra_bytes == pytest.approx(12 * MB, rel=0.05)
    assert r.peak_bytes - r.extra_bytes >= x.numel()
