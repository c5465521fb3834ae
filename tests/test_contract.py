"""Contract tests run over the registry: every registered variant x each of its impls.

New variants are covered as soon as they register, in this repository or as an installed plugin
(entry-point group `attnbench.variants`): cases are built from `VARIANTS.names()` and each class's
`impls`, and every check is a function of `harness.plugins.conformance` that reads the reference
(`reference_for(impl)`), the tolerances (`tolerances`) and the documented upstream defects
(`known_defects`, strict xfails) from the class. A variant whose module does not import fails
`test_variant_imports` (and has no other cases until it does). Impls that cannot run on CPU fp32
here must say why, readably. `pytest tests/test_contract.py -k NAME` runs the checks of one variant.

Checks build each variant with its default params; a class's `contract_params` (extra params
dicts) also go through the reference, causality and FLOP-model checks (the last section below;
docs/plugins.md, "Which parameters the contract tests use").
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from harness.plugins import conformance as cf
from harness.plugins.contract import DTYPES, AttentionVariant
from harness.plugins.variants import VARIANTS

# (N, d) grid: every head dim at an odd N, and one long odd N at d = 48 (run at batch = heads = 1 to
# keep the O(N^2) references and LUNA's per-scalar MLP activations cheap).
SHAPES = [(63, 32), (63, 48), (63, 64), (63, 128), (1000, 48)]
LONG_N = 256
# the cost-model check: odd N with a partial last chunk of 128 (104 and 77 tokens), two head dims
FLOP_SHAPES = [(1000, 32), (333, 64)]
CAUSAL = pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
# impls whose cases compile (torch.compile + inductor: seconds per graph on CPU): `pytest -m slow`
SLOW_IMPLS = {"luna/compile"}


def _importable() -> list[str]:
    names = []
    for name in VARIANTS.names():
        try:
            VARIANTS.get(name)
        except ImportError:  # reported by test_variant_imports
            continue
        names.append(name)
    return names


def _impl_cases(runs_on_cpu: bool, check: str | None = None) -> list[Any]:
    """pytest params (name, impl) of the impls that run (or refuse to run) on CPU fp32, non-causal or
    (for a causal-only mixer such as deltanet) causal.

    With `check`, an impl whose class declares `known_defects["impl:check"]` (a documented upstream
    defect the harness measures) gets a strict xfail: a fix upstream shows up as XPASS.
    """
    cases = []
    for name in IMPORTABLE:
        cls = VARIANTS.get(name)
        for impl in cls.impls:
            params = cls.make_params({})
            refused = all(
                cls.not_supported_reasons(replace(cf.BASE, causal=c), params, impl) for c in (False, True)
            )
            if refused == runs_on_cpu:
                continue
            defect = cls.known_defects.get(f"{impl}:{check}") if check else None
            marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=defect)] if defect else []
            marks += [pytest.mark.slow] if f"{name}/{impl}" in SLOW_IMPLS else []
            cases.append(pytest.param(name, impl, id=f"{name}/{impl}", marks=marks))
    return cases


IMPORTABLE = _importable()  # at collection, before any test plants a fake variant
CPU_IMPLS = _impl_cases(runs_on_cpu=True)
CPU_REFUSED = _impl_cases(runs_on_cpu=False)
LOW_PRECISION = [
    pytest.param(*p.values, dtype, id=f"{p.id}-{dtype}", marks=p.marks)
    for p in CPU_IMPLS
    for dtype in VARIANTS.get(p.values[0]).tolerances
    if dtype in DTYPES and dtype != "fp32"
]


def _param_cases(check: str | None = None) -> list[Any]:
    """pytest params (name, impl, params) of every `contract_params` set of a class, on each of its
    CPU impls that takes that set (one that declines it has nothing to check), with the impl's marks
    and, with `check`, the strict xfail of a documented defect. Ids like `deltanet/torch-gated=True`.
    A set `make_params` refuses is left to `test_description_and_params`, which names it."""
    cases = []
    for p in CPU_IMPLS:
        name, impl = p.values
        cls = VARIANTS.get(name)
        for extra in cls.contract_params:
            try:
                made = cls.make_params(extra)
            except (KeyError, ValueError, TypeError):
                continue
            if all(cls.not_supported_reasons(replace(cf.BASE, causal=c), made, impl) for c in (False, True)):
                continue
            defect = cls.known_defects.get(f"{impl}:{check}") if check else None
            marks = [
                *p.marks,
                *([pytest.mark.xfail(strict=True, raises=AssertionError, reason=defect)] if defect else []),
            ]
            tag = ",".join(f"{k}={v}" for k, v in extra.items())
            cases.append(pytest.param(name, impl, extra, id=f"{p.id}-{tag}", marks=marks))
    return cases


PARAM_CASES = _param_cases()


def _known(check: str) -> dict[str, str]:
    """{case id: reason} of the strict xfails `_impl_cases(True, check)` declares."""
    cases = _impl_cases(True, check)
    return {p.id: p.marks[0].kwargs["reason"] for p in cases if p.marks and p.marks[0].name == "xfail"}


KNOWN_CAUSALITY_LEAKS = _known("causality")
KNOWN_BATCH_DEPENDENCE = _known("batch_independence")


def run(check: Any, *args: Any) -> None:
    """A conformance check; a case the variant declines is skipped with its reasons."""
    try:
        check(*args)
    except cf.NotApplicable as why:
        pytest.skip(str(why))


def variant(name: str) -> type[AttentionVariant]:
    return VARIANTS.get(name)


# ----- registry and description ------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS.names())
def test_variant_imports(name: str) -> None:
    assert issubclass(VARIANTS.get(name), AttentionVariant)  # an ImportError here is the failure


@pytest.mark.parametrize("name", IMPORTABLE)
def test_description_and_params(name: str) -> None:
    """name, version, paper, reference_impl, reference (imports), tolerances, known defects, Params."""
    cf.check_description(variant(name), name)


@CAUSAL
@pytest.mark.parametrize("name,impl", CPU_IMPLS + CPU_REFUSED)
def test_cost_model_positive(name: str, impl: str, causal: bool) -> None:
    cls = variant(name)
    if causal and not cls.capabilities_for(impl).causal:
        pytest.skip(f"{name}/{impl} has no causal form")
    if not causal and not cls.capabilities_for(impl).non_causal:
        pytest.skip(f"{name}/{impl} has no non-causal form")
    cf.check_cost_model(cls, impl, causal)


@pytest.mark.parametrize("name,impl", CPU_REFUSED)
def test_refused_impl_gives_readable_reason(name: str, impl: str) -> None:
    cf.check_readable_refusal(variant(name), impl)


def test_a_params_set_the_class_cannot_make_fails_the_description_check() -> None:
    bad = type("BadWindow", (variant("window"),), {"contract_params": ({"windw": 16},)})
    with pytest.raises(AssertionError, match="contract_params {'windw': 16}"):
        cf.check_description(bad, "window")


def test_every_variant_runs_on_cpu() -> None:
    """At least one impl of every importable variant runs on CPU fp32 (else nothing below covers it)."""
    assert {p.values[0] for p in CPU_IMPLS} == set(IMPORTABLE)


def test_documented_upstream_defects_are_declared() -> None:
    """The upstream defects the README documents are declared on the classes (so they xfail)."""
    expected = {"performer": "package:causality", "nystrom": "package:batch_independence"}
    for name, key in expected.items():
        if name in IMPORTABLE:
            assert key in variant(name).known_defects, f"{name}: declare known_defects[{key!r}]"


# ----- numerics ----------------------------------------------------------------------------------
@pytest.mark.sampled(5, per=("name", "impl"))  # each impl: every shape, both causalities; 10 in -m slow
@CAUSAL
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("name,impl", CPU_IMPLS)
def test_matches_reference(name: str, impl: str, n: int, d: int, causal: bool) -> None:
    """Output (shape, dtype, values) and gradients (inputs and learnable params) vs the class's
    reference at its fp32 tolerance; exact variants also vs exact softmax."""
    prob = cf.problem(n, d, causal) if n < LONG_N else cf.problem(n, d, causal, batch=1, heads=1)
    run(cf.check_matches_reference, variant(name), impl, prob)


@CAUSAL
@pytest.mark.parametrize("name,impl,dtype", LOW_PRECISION)
def test_low_precision_close_to_fp32(name: str, impl: str, dtype: str, causal: bool) -> None:
    """Each low-precision dtype the class declares a tolerance for, vs the same impl in fp32."""
    run(cf.check_low_precision, variant(name), impl, dtype, causal)


@pytest.mark.parametrize("name,impl", _impl_cases(True, "causality"))
def test_causality(name: str, impl: str) -> None:
    """Replacing q, k, v after position t (with larger values) leaves outputs 0..t unchanged."""
    run(cf.check_causality, variant(name), impl)


@CAUSAL
@pytest.mark.parametrize("name,impl", _impl_cases(True, "batch_independence"))
def test_batch_independence(name: str, impl: str, causal: bool) -> None:
    """Sample 0 computed alone equals its output within a batch of 3."""
    run(cf.check_batch_independence, variant(name), impl, causal)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("name,impl", CPU_IMPLS)
def test_deterministic_construction(name: str, impl: str, seed: int) -> None:
    run(cf.check_deterministic_construction, variant(name), impl, seed)


@CAUSAL
@pytest.mark.parametrize("name,impl", CPU_IMPLS)
def test_key_padding_mask(name: str, impl: str, causal: bool) -> None:
    """masking: right padding leaves real rows as on the truncated sequence and matches the reference
    with the mask; no masking: a masked case is declined and forward refuses a mask."""
    run(cf.check_masking, variant(name), impl, causal)


# ----- cost model --------------------------------------------------------------------------------
@pytest.mark.sampled(2, per=("name", "impl"))  # each impl: both shapes, causalities, modes; 8 in -m slow
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@CAUSAL
@pytest.mark.parametrize("n,d", FLOP_SHAPES)
@pytest.mark.parametrize("name,impl", CPU_IMPLS)
def test_flop_model_matches_flop_counter(
    name: str, impl: str, n: int, d: int, causal: bool, mode: str
) -> None:
    """FlopCounterMode around the impl's call (and backward) agrees with the model's matmul FLOPs
    within the class's flop_rtol: checks that the model counts what the impl executes."""
    run(cf.check_flop_model, variant(name), impl, n, d, causal, mode)


# ----- the classes' extra params sets (`contract_params`) ----------------------------------------
@CAUSAL
@pytest.mark.parametrize("name,impl,params", PARAM_CASES)
def test_matches_reference_with_contract_params(name: str, impl: str, params: dict, causal: bool) -> None:
    """As test_matches_reference, at (N, d) = (63, 32), for each params set the class lists."""
    run(cf.check_matches_reference, variant(name), impl, cf.problem(63, 32, causal), params)


@pytest.mark.parametrize("name,impl,params", _param_cases("causality"))
def test_causality_with_contract_params(name: str, impl: str, params: dict) -> None:
    run(cf.check_causality, variant(name), impl, params)


@CAUSAL
@pytest.mark.parametrize("name,impl,params", _param_cases("flops"))
def test_flop_model_with_contract_params(name: str, impl: str, params: dict, causal: bool) -> None:
    """As test_flop_model_matches_flop_counter, at (N, d) = (333, 64), fwd_bwd."""
    run(cf.check_flop_model, variant(name), impl, 333, 64, causal, "fwd_bwd", params)
