"""The variant contract on CUDA: every registered variant x impl, in each dtype it declares a tolerance
for (fp32, bf16, fp16), plus causality, batch independence, key-padding masks and deterministic
construction (harness.plugins.conformance, the checks tests/test_contract.py runs on CPU).

An impl that cannot run a case on this GPU (a missing package, a dtype, a head dim) is skipped with
its reasons, as on CPU. Documented upstream defects (`known_defects`) are strict xfails here too.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.plugins import conformance as cf
from harness.plugins.contract import AttentionVariant
from harness.plugins.variants import VARIANTS
from tests.gpu.checks import check_reference_at_dtype

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
SHAPES = [(63, 48), (1000, 64)]  # odd lengths: partial blocks and chunks; head dims 48 and 64
CAUSAL = pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
# impls that compile a graph per dtype, causality and grad mode (tens of seconds each, cold, on a GPU
# host): checked last (test_compiled_impls_on_cuda), in bf16 only, the dtype the GPU scenarios use
COMPILED = ("luna/compile",)


def _variants() -> list[tuple[str, type[AttentionVariant]]]:
    out = []
    for name in VARIANTS.names():
        try:
            out.append((name, VARIANTS.get(name)))
        except ImportError:  # tests/test_contract.py::test_variant_imports reports it
            continue
    return out


def _dtypes(name: str, cls: type[AttentionVariant], impl: str) -> tuple[str, ...]:
    return tuple(dt for dt in ("fp32", "bf16", "fp16") if dt in cls.tolerances)


def check_dtype(name: str, cls: type[AttentionVariant], impl: str) -> str:
    """The dtype of the structural checks: fp32 where the impl runs it on CUDA (a different reduction
    order between batch sizes stays far below their 1e-6 bound; causal-only impls such as deltanet count),
    else its first half dtype."""
    dtypes = _dtypes(name, cls, impl)
    fp32 = [cf.problem(63, 32, causal, dtype="fp32", device=DEVICE) for causal in (False, True)]
    if "fp32" in dtypes and any(not cls.not_supported_reasons(p, cls.make_params({}), impl) for p in fp32):
        return "fp32"
    return next((dt for dt in dtypes if dt != "fp32"), dtypes[0])


def _cases(check: str | None = None, per_dtype: bool = False) -> list[Any]:
    cases = []
    for name, cls in _variants():
        for impl in (i for i in cls.impls if f"{name}/{i}" not in COMPILED):
            defect = cls.known_defects.get(f"{impl}:{check}") if check else None
            marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=defect)] if defect else []
            dtypes = _dtypes(name, cls, impl) if per_dtype else (check_dtype(name, cls, impl),)
            for dtype in dtypes:
                cases.append(pytest.param(name, impl, dtype, id=f"{name}/{impl}-{dtype}", marks=marks))
    return cases


def run(check: Any, *args: Any, **kwargs: Any) -> None:
    try:
        check(*args, **kwargs)
    except cf.NotApplicable as why:
        pytest.skip(str(why))


@CAUSAL
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("name,impl,dtype", _cases("reference", per_dtype=True))
def test_reference_on_cuda(name: str, impl: str, dtype: str, n: int, d: int, causal: bool) -> None:
    """fp32: vs the reference at the fp32 tolerance (exact variants also vs exact softmax); fp16 and
    bf16: output and q, k, v gradients vs the fp32 reference on the rounded inputs."""
    cls = VARIANTS.get(name)
    prob = cf.problem(n, d, causal, dtype=dtype, device=DEVICE, batch=2, heads=2)
    if dtype == "fp32":
        run(cf.check_matches_reference, cls, impl, prob)
    else:
        run(check_reference_at_dtype, cls, impl, prob)


@pytest.mark.parametrize("name,impl,dtype", _cases("causality"))
def test_causality_on_cuda(name: str, impl: str, dtype: str) -> None:
    run(cf.check_causality, VARIANTS.get(name), impl, device=DEVICE, dtype=dtype)


@CAUSAL
@pytest.mark.parametrize("name,impl,dtype", _cases("batch_independence"))
def test_batch_independence_on_cuda(name: str, impl: str, dtype: str, causal: bool) -> None:
    run(cf.check_batch_independence, VARIANTS.get(name), impl, causal, device=DEVICE, dtype=dtype)


@CAUSAL
@pytest.mark.parametrize("name,impl,dtype", _cases("masking"))
def test_key_padding_mask_on_cuda(name: str, impl: str, dtype: str, causal: bool) -> None:
    run(cf.check_masking, VARIANTS.get(name), impl, causal, device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("name,impl,dtype", _cases("determinism"))
def test_deterministic_construction_on_cuda(name: str, impl: str, dtype: str) -> None:
    run(cf.check_deterministic_construction, VARIANTS.get(name), impl, 0, device=DEVICE, dtype=dtype)


@CAUSAL
@pytest.mark.parametrize("name_impl", COMPILED)
def test_compiled_impls_on_cuda(name_impl: str, causal: bool) -> None:
    """bf16 at N = 1000, head dim 64: output and q, k, v gradients vs the fp32 reference."""
    name, impl = name_impl.split("/")
    prob = cf.problem(1000, 64, causal, dtype="bf16", device=DEVICE, batch=2, heads=2)
    run(check_reference_at_dtype, VARIANTS.get(name), impl, prob)
