"""The harness's CUDA timer (events, L2 flush; harness/measure/timing.py) against
triton.testing.do_bench on the same call: medians within 5% (checks.timer_disagreement)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness.measure.timing import make_step, time_cuda
from tests.gpu.checks import timer_disagreement

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("size", [4096, 8192])
def test_cuda_timer_matches_do_bench(size: int) -> None:
    """A bf16 GEMM of size^3 (~0.1 and ~1 ms on an H100), both timers flushing L2 before each sample."""
    triton_testing = pytest.importorskip("triton.testing")
    gen = torch.Generator(device="cuda").manual_seed(0)
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))

    def call() -> torch.Tensor:
        return a @ b

    spec = SimpleNamespace(
        warmup_ms=100, min_samples=50, max_samples=2000, rep_ms=500, flush_l2=True, timeout_s=60
    )
    ours = time_cuda(make_step("fwd", call, []), spec, "cuda").median_ms
    theirs = triton_testing.do_bench(call, warmup=100, rep=500, return_mode="median")
    assert (why := timer_disagreement(ours, theirs)) is None, why
