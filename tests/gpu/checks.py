"""Checks the GPU tests use that have no home in harness.plugins.conformance: plain functions, so
their logic is tested on CPU too (tests/test_gpu_helpers.py).

- `check_reference_at_dtype`: an impl in fp16/bf16 on its device against the variant's fp32
  reference on the same rounded inputs, at the class's tolerance for that dtype (on CUDA some impls
  run no fp32, so conformance.check_low_precision's comparison with the same impl in fp32 cannot
  run there).
- `timer_disagreement`: do two timers' medians of the same call agree?
"""

from __future__ import annotations

from harness.plugins import conformance as cf
from harness.plugins.contract import DTYPES, AttentionVariant, Problem

TIMER_RTOL = 0.05  # the harness's CUDA timer and triton.testing.do_bench: medians within 5%


def check_reference_at_dtype(cls: type[AttentionVariant], impl: str, prob: Problem) -> None:
    """Output (shape, dtype) and q, k, v gradients of `impl` in prob.dtype, vs the fp32 reference on the
    same (rounded) inputs, at cls.tolerances[prob.dtype]. NotApplicable when the impl declines."""
    var = cf.build(cls, impl, prob)
    q, k, v = cf.make_qkv(prob, requires_grad=True)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    reference = cf.reference_fn(cls, impl)
    out = cf.outputs_and_grads(lambda *x: cf.call(var, *x, prob.causal), [q, k, v], q, k, v)
    ref = cf.outputs_and_grads(lambda *x: reference(var, *x, prob.causal), [q32, k32, v32], q32, k32, v32)
    assert out[0].shape == q.shape, f"output shape {tuple(out[0].shape)}, expected {tuple(q.shape)}"
    assert all(t.dtype == DTYPES[prob.dtype] for t in out), f"output and input grads must stay {prob.dtype}"
    where = f"{cls.name}/{impl} {prob.dtype} on {prob.device} vs the fp32 reference"
    cf._compare(where, out, ref, cf.tolerance(cls, prob.dtype))


def timer_disagreement(ours_ms: float, reference_ms: float, rtol: float = TIMER_RTOL) -> str | None:
    """None when |ours / reference - 1| <= rtol, else a one-line reason with both medians."""
    if not (ours_ms > 0 and reference_ms > 0):
        raise ValueError(f"medians must be > 0 ms, got {ours_ms!r} and {reference_ms!r}")
    ratio = ours_ms / reference_ms
    if abs(ratio - 1.0) <= rtol:
        return None
    return (
        f"harness median {ours_ms:.4f} ms vs do_bench {reference_ms:.4f} ms: "
        f"ratio {ratio:.3f}, outside 1 +- {rtol:g}"
    )
