"""pytest-benchmark suite: every registered variant and impl, forward only, at a fixed shape.

Not part of the default `pytest` run (testpaths = ["tests"]); run it as

    pytest benchmarks --benchmark-autosave                 # stores .benchmarks/<machine>/NNNN_*.json
    pytest benchmarks --benchmark-compare --benchmark-compare-fail=median:10%   # vs the last save

Shapes: (B, H, N, d) = (1, 2, 256, 32) fp32 on CPU (one intra-op thread, as attnbench times
CPU cases), (2, 8, 4096, 64) bf16 on CUDA. An impl that cannot run here (a missing package, a
CUDA-only kernel) is skipped with the variant's own reason, never replaced by another impl.
Learnable variants are timed unfitted: their forward's cost does not depend on the fitted values.
"""

from __future__ import annotations

import pytest
import torch

from harness.plugins.contract import Problem
from harness.plugins.variants import VARIANTS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPE = {"cpu": (1, 2, 256, 32, "fp32"), "cuda": (2, 8, 4096, 64, "bf16")}[DEVICE]


def _impls() -> list:
    return [
        pytest.param(name, impl, id=f"{name}-{impl}")
        for name in VARIANTS.names()
        for impl in VARIANTS.get(name).impls
    ]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """CPU timings with one intra-op thread (attnbench's default `measure.threads`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("name", "impl"), _impls())
def test_forward(benchmark, name: str, impl: str) -> None:
    """Time one forward of `name`/`impl` on q, k, v (B, H, N, d) in the impl's layout."""
    batch, heads, n, d, dtype = SHAPE
    cls = VARIANTS.get(name)
    problem = Problem(batch, heads, n, d, dtype=dtype, device=DEVICE, causal=False, mode="fwd")
    params = cls.make_params({})
    reasons = cls.not_supported_reasons(problem, params, impl)
    if reasons:
        pytest.skip("; ".join(reasons))
    torch.manual_seed(0)
    model = cls(params, impl, heads, d, DEVICE, dtype).to(DEVICE).eval()
    shape = (batch, n, heads, d) if cls.layout_for(impl) == "bnhd" else (batch, heads, n, d)
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=problem.torch_dtype) for _ in range(3))
    benchmark.group = f"forward N={n} d={d} {dtype} {DEVICE}"
    benchmark.extra_info.update(variant=name, impl=impl, shape=list(shape), device=DEVICE, dtype=dtype)

    def step() -> torch.Tensor:
        with torch.no_grad():
            out = model(q, k, v, False)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    out = benchmark(step)
    assert out.shape == q.shape and torch.isfinite(out.float()).all()
