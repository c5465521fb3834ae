"""The variant contract's conformance checks, for any variant class (built-in or an installed plugin).

Each `check_*` builds the variant as the runner does (`torch.manual_seed(seed)`, then
`cls(params, impl, heads, head_dim, device, dtype)`), calls it on seeded Gaussian inputs in
`cls.layout_for(impl)` and raises AssertionError with a readable message on a breach of the
contract; a case the variant declines raises `NotApplicable` with its reasons. References and
tolerances come from the class. No pytest, no `attentions`: tests/test_contract.py runs these.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from harness.plugins.contract import DTYPES, AttentionVariant, Problem, Tolerance
from harness.plugins.registry import load_target

SEED, BASE = 0, Problem(batch=2, heads=2, seq_len=63, head_dim=64, dtype="fp32", causal=False, mode="fwd_bwd")
EXACT_RTOL, CAUSAL_RTOL, BATCH_RTOL = 1e-5, 1e-6, 1e-6  # vs exact softmax; past when future moves; alone
CHECKS = ("reference", "low_precision", "causality", "batch_independence", "determinism", "masking", "flops")


class NotApplicable(Exception):
    """The variant declines this case (the message holds its reasons): the check cannot run."""


def problem(n: int = 63, d: int = 32, causal: bool = False, **kw: Any) -> Problem:
    """BASE with these sequence length, head dim, causality and other fields."""
    return dataclasses.replace(BASE, seq_len=n, head_dim=d, causal=causal, **kw)


def build(
    cls: type[AttentionVariant], impl: str, prob: Problem, seed: int = SEED, params: dict | None = None
) -> AttentionVariant:
    """The variant with `params` (a scenario `params:` dict; None: the defaults) as the runner builds
    it; NotApplicable with its reasons."""
    params = cls.make_params(params or {})
    if reasons := cls.not_supported_reasons(prob, params, impl):
        raise NotApplicable("; ".join(reasons))
    torch.manual_seed(seed)
    return cls(params, impl, prob.heads, prob.head_dim, prob.device, prob.dtype).to(prob.device)


def make_qkv(prob: Problem, seed_offset: int = 0, requires_grad: bool = False) -> list[Tensor]:
    """Canonical (B, H, N, d) q, k, v ~ N(0, 1), drawn in fp32 from a seeded generator, in prob's dtype."""
    gen = torch.Generator().manual_seed(SEED + 1000 * seed_offset)
    shape = (prob.batch, prob.heads, prob.seq_len, prob.head_dim)
    return [
        torch.randn(shape, generator=gen).to(prob.device, DTYPES[prob.dtype]).requires_grad_(requires_grad)
        for _ in range(3)
    ]


def call(
    variant: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None = None
) -> Tensor:
    """forward on canonical (B, H, N, d) tensors through the impl's layout; canonical output."""
    bnhd = type(variant).layout_for(variant.impl) == "bnhd"
    if bnhd:
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    out = variant(q, k, v, causal) if mask is None else variant(q, k, v, causal, key_padding_mask=mask)
    return out.transpose(1, 2) if bnhd else out


def reference_fn(cls: type[AttentionVariant], impl: str) -> Callable[..., Tensor]:
    """The impl's fp32 reference function, imported from its "module:function"."""
    assert cls.reference_for(impl), f"{cls.name}/{impl}: set `reference` (a 'module:function' string)"
    return load_target(cls.reference_for(impl))


def tolerance(cls: type[AttentionVariant], dtype: str) -> Tolerance:
    """cls.tolerances[dtype], which must be a Tolerance."""
    tol = cls.tolerances.get(dtype)
    assert isinstance(tol, Tolerance), f"{cls.name}: tolerances[{dtype!r}] must be a Tolerance, got {tol!r}"
    return tol


def rel_err(out: Tensor, ref: Tensor) -> float:
    """Relative Frobenius error in fp64 (0 when both are 0)."""
    diff = (out.detach().double() - ref.detach().double()).norm().item()
    return diff / ref.detach().double().norm().item() if diff else 0.0


def outputs_and_grads(
    fn: Callable[..., Tensor], leaves: list[Tensor], *args: Tensor, rows: Tensor | None = None
):
    """fn(*args) and the grads of sum(out * w) (w fixed, N(0, 1), zero outside `rows` (B, N) bool)."""
    out = fn(*args)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    if rows is not None:
        w = w * rows[:, None, :, None]
    grads = torch.autograd.grad((out.float() * w).sum(), leaves, allow_unused=True)
    return (out.detach(), *(torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)))  # noqa: B905


def exact_softmax(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """Exact attention in fp64, written here so the check depends on no variant. (B, H, N, d)."""
    q, k, v = (x.detach().double() for x in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1) & causal
    return torch.softmax(scores.masked_fill(future, -math.inf), dim=-1) @ v


def _compare(what: str, out: tuple[Tensor, ...], ref: tuple[Tensor, ...], tol: Tolerance) -> None:
    """Output (index 0) and gradients of `out` against `ref`, at the tolerance."""
    err = rel_err(out[0], ref[0])
    assert err < tol.output, f"{what}: output rel_err {err:.2e} >= {tol.output:g}"
    for i, (g, rg) in enumerate(zip(out[1:], ref[1:], strict=True)):
        err = rel_err(g, rg)
        leaf = "qkv"[i] if i < 3 else f"parameter {i - 3}"
        assert err < tol.grad, f"{what}: grad of {leaf} rel_err {err:.2e} >= {tol.grad:g}"


# ----- description ---------------------------------------------------------------------------------
def check_description(cls: type[AttentionVariant], name: str) -> None:
    """Required attributes, impls, references that import, tolerances, known defects, Params."""
    assert issubclass(cls, AttentionVariant) and cls.name == name, f"{cls!r} registered as {name!r}"
    assert cls.impls and len(set(cls.impls)) == len(cls.impls), f"impls: unique, non-empty: {cls.impls}"
    assert cls.version >= 1, "version must be >= 1"
    for attr in ("paper", "reference_impl", "reference"):
        assert isinstance(getattr(cls, attr), str) and getattr(cls, attr).strip(), f"{name}: set `{attr}`"
    assert set(cls.impl_references) <= set(cls.impls), f"impl_references: unknown impls {cls.impl_references}"
    assert all(callable(reference_fn(cls, impl)) for impl in cls.impls), "a reference is not callable"
    tolerance(cls, "fp32")
    assert set(cls.tolerances) <= set(DTYPES), f"tolerances keys must be dtypes {tuple(DTYPES)}"
    for key, why in cls.known_defects.items():
        impl, _, check = key.partition(":")
        assert impl in cls.impls and check in CHECKS and why.strip(), f"known_defects[{key!r}]: 'impl:check'"
    assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen, "Params: frozen"
    params, fields = cls.make_params({}), dataclasses.fields(cls.Params)
    frozen = _raises(dataclasses.FrozenInstanceError, setattr, params, fields[0].name if fields else "x", 0)
    assert frozen, "Params instances must be immutable"
    assert _raises(KeyError, cls.make_params, {"no_such_param": 1}), "make_params accepted an unknown name"
    assert (cls.feature_dim(BASE, params) is None) == cls.capabilities.exact, "feature_dim None iff exact"
    for extra in cls.contract_params:
        assert isinstance(extra, dict) and extra, f"contract_params: non-empty params dicts, found {extra!r}"
        try:
            cls.make_params(extra)
        except (KeyError, ValueError, TypeError) as err:
            raise AssertionError(f"contract_params {extra!r}: {err}") from None


def _raises(exc: type[Exception], fn: Callable[..., Any], *args: Any) -> bool:
    """Whether fn(*args) raises `exc`."""
    try:
        fn(*args)
    except exc:
        return True
    return False


def check_cost_model(cls: type[AttentionVariant], impl: str, causal: bool) -> None:
    """flops and bytes_moved are finite and > 0, grow with the backward, fwd + bwd = fwd_bwd."""
    params, costs = cls.make_params({}), {}
    for mode in ("fwd", "bwd", "fwd_bwd"):
        prob = problem(1024, 64, causal, mode=mode)
        costs[mode] = (cls.flops(prob, params, impl), cls.bytes_moved(prob, params, impl))
        matmul = cls.flops(prob, params, impl, matmul_only=True)
        assert 0 <= matmul <= costs[mode][0], f"{mode}: matmul part {matmul} outside [0, {costs[mode][0]}]"
        for value in costs[mode]:
            assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (mode, value)
    assert costs["fwd_bwd"][0] > costs["fwd"][0] and costs["fwd_bwd"][1] > costs["fwd"][1]
    assert math.isclose(costs["fwd"][0] + costs["bwd"][0], costs["fwd_bwd"][0], rel_tol=1e-12)


def check_readable_refusal(cls: type[AttentionVariant], impl: str, prob: Problem = BASE) -> None:
    """An impl that declines a case says why: one-line reasons naming the variant."""
    reasons = cls.not_supported_reasons(prob, cls.make_params({}), impl)
    assert reasons and all(isinstance(r, str) and r.strip() and "\n" not in r for r in reasons), reasons
    assert any(cls.name in r for r in reasons), f"no reason names {cls.name!r}: {reasons}"


# ----- numerics ------------------------------------------------------------------------------------
def check_matches_reference(
    cls: type[AttentionVariant], impl: str, prob: Problem, params: dict | None = None
) -> None:
    """Output (shape, dtype, values) and gradients (q, k, v, learnable parameters) vs the reference, fp32.
    params: a params dict (None: the defaults)."""
    var = build(cls, impl, prob, params=params)
    reference = reference_fn(cls, impl)
    q, k, v = make_qkv(prob, requires_grad=True)
    leaves = [q, k, v, *(p for p in var.parameters() if p.requires_grad)]
    out = outputs_and_grads(lambda *x: call(var, *x, prob.causal), leaves, q, k, v)
    ref = outputs_and_grads(lambda *x: reference(var, *x, prob.causal), leaves, q, k, v)
    assert out[0].shape == q.shape and out[0].dtype == q.dtype, f"output {out[0].shape} {out[0].dtype}"
    _compare(f"{cls.name}/{impl} vs its reference", out, ref, tolerance(cls, "fp32"))
    if cls.capabilities_for(impl).exact:
        err = rel_err(out[0], exact_softmax(q, k, v, prob.causal))
        assert err < EXACT_RTOL, f"an exact variant is {err:.2e} from exact softmax"


def check_low_precision(cls: type[AttentionVariant], impl: str, dtype: str, causal: bool) -> None:
    """In `dtype`: output and input grads in `dtype`, close to the same impl in fp32 on the rounded inputs."""
    prob = problem(63, 64, causal, dtype=dtype)
    var = build(cls, impl, prob)
    q, k, v = make_qkv(prob, requires_grad=True)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    out = outputs_and_grads(lambda *x: call(var, *x, causal), [q, k, v], q, k, v)
    ref = outputs_and_grads(lambda *x: call(var, *x, causal), [q32, k32, v32], q32, k32, v32)
    assert all(t.dtype == DTYPES[dtype] for t in out), f"outputs and input grads must stay {dtype}"
    assert out[0].shape == q.shape
    _compare(f"{cls.name}/{impl} in {dtype} vs fp32", out, ref, tolerance(cls, dtype))


def check_causality(cls: type[AttentionVariant], impl: str, params: dict | None = None, **where: Any) -> None:
    """Replacing q, k, v after t (by larger values) leaves outputs 0..t unchanged. params: a params
    dict (None: the defaults); where: device, dtype."""
    n = 200  # crosses a chunk of 128 tokens
    prob = problem(n, 32, causal=True, mode="fwd", **where)
    var = build(cls, impl, prob, params=params)
    q, k, v = make_qkv(prob)
    fresh = [3.0 * x for x in make_qkv(prob, seed_offset=1)]
    with torch.no_grad():
        out = call(var, q, k, v, True)
        for t in (0, 63, 127, 128, n - 2):
            past = (torch.arange(n, device=prob.device) <= t)[:, None]  # (N, 1): 0..t keep their tokens
            mixed = [torch.where(past, x, y) for x, y in zip((q, k, v), fresh, strict=True)]
            err = rel_err(call(var, *mixed, True)[:, :, : t + 1], out[:, :, : t + 1])
            assert err <= CAUSAL_RTOL, f"outputs 0..{t} moved by {err:.2e} when later tokens changed"


def check_batch_independence(cls: type[AttentionVariant], impl: str, causal: bool, **where: Any) -> None:
    """Sample 0 computed alone equals its output within a batch of 3. where: device, dtype."""
    prob = problem(63, 32, causal, batch=3, mode="fwd", **where)
    var = build(cls, impl, prob)
    q, k, v = make_qkv(prob)
    with torch.no_grad():
        err = rel_err(call(var, q[:1], k[:1], v[:1], causal), call(var, q, k, v, causal)[:1])
    assert err <= BATCH_RTOL, f"sample 0 alone differs by {err:.2e} from sample 0 in a batch"


def check_deterministic_construction(cls: type[AttentionVariant], impl: str, seed: int, **where: Any) -> None:
    """Two builds after torch.manual_seed(seed) hold the same state and give identical outputs."""
    causal = not cls.capabilities_for(impl).non_causal  # a causal-only mixer (deltanet) runs causal
    prob = problem(63, 32, causal, mode="fwd", **where)
    first, second = build(cls, impl, prob, seed), build(cls, impl, prob, seed)
    state_1, state_2 = first.state_dict(), second.state_dict()
    assert state_1.keys() == state_2.keys() and all(map(torch.equal, state_1.values(), state_2.values()))
    q, k, v = make_qkv(prob)
    with torch.no_grad():
        assert torch.equal(call(first, q, k, v, causal), call(second, q, k, v, causal)), "outputs differ"


def right_padded(prob: Problem, lengths: list[int]) -> tuple[list[Tensor], Tensor]:
    """q, k, v (B, H, N, d) whose padded positions hold 3x larger values, and the mask (B, N)."""
    mask = (torch.arange(prob.seq_len)[None, :] < torch.tensor(lengths)[:, None]).to(prob.device)
    noise = make_qkv(prob, seed_offset=2)
    qkv = [torch.where(mask[:, None, :, None], x, 3 * y) for x, y in zip(make_qkv(prob), noise, strict=True)]
    return qkv, mask.to(prob.device)


def check_masking(cls: type[AttentionVariant], impl: str, causal: bool, **where: Any) -> None:
    """With masking: right padding changes no real row (equal to the call on the truncated sequence)
    and matches the reference with the mask (outputs at real rows, all gradients). Without: a masked
    case is declined with a reason, and forward refuses a mask instead of ignoring it."""
    lengths = [63, 40, 17]
    prob = problem(63, 32, causal, batch=len(lengths), masked=True, **where)  # where: device, dtype
    if not cls.capabilities_for(impl).masking:
        reasons = cls.not_supported_reasons(prob, cls.make_params({}), impl)
        assert any("mask" in r for r in reasons), f"a masked case needs a reason naming the mask: {reasons}"
        var = build(cls, impl, dataclasses.replace(prob, masked=False))
        (q, k, v), mask = right_padded(prob, lengths)
        try:
            call(var, q, k, v, causal, mask)
        except (ValueError, TypeError, NotImplementedError) as err:
            assert str(err), "refusing a mask needs a message"
            return
        raise AssertionError(f"{cls.name}/{impl} declares no masking but accepted a key_padding_mask")
    var = build(cls, impl, prob)
    tol = tolerance(cls, prob.dtype)
    (q, k, v), mask = right_padded(prob, lengths)
    with torch.no_grad():
        out = call(var, q, k, v, causal, mask)
        for b, n in enumerate(lengths):
            alone = call(var, q[b : b + 1, :, :n], k[b : b + 1, :, :n], v[b : b + 1, :, :n], causal)
            err = rel_err(out[b, :, :n], alone[0])
            assert err < tol.output, f"sample {b}: real rows with padding differ by {err:.2e} from truncated"
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    leaves = [q, k, v, *(p for p in var.parameters() if p.requires_grad)]
    reference = reference_fn(cls, impl)
    got = outputs_and_grads(lambda *x: call(var, *x, causal, mask), leaves, q, k, v, rows=mask)
    ref = outputs_and_grads(lambda *x: reference(var, *x, causal, mask), leaves, q, k, v, rows=mask)
    real = mask[:, None, :, None]
    got, ref = (got[0] * real, *got[1:]), (ref[0] * real, *ref[1:])
    _compare(f"{cls.name}/{impl} masked vs its reference", got, ref, tol)


# ----- cost model ----------------------------------------------------------------------------------
def check_flop_model(
    cls: type[AttentionVariant],
    impl: str,
    n: int,
    d: int,
    causal: bool,
    mode: str,
    params: dict | None = None,
) -> None:
    """FlopCounterMode around the call (and its backward) agrees with `flops(matmul_only=True)`
    within `cls.flop_rtol` (inputs and learnable parameters need gradients, as in the runner).
    params: a params dict (None: the defaults)."""
    prob = problem(n, d, causal, batch=1, heads=1, mode=mode)
    var = build(cls, impl, prob, params=params)
    q, k, v = make_qkv(prob, requires_grad=prob.needs_backward)
    formulas = cls.flop_counter_formulas(impl)
    with (
        FlopCounterMode(display=False, custom_mapping=formulas) as counter,
        torch.set_grad_enabled(prob.needs_backward),
    ):  # fwd runs under no_grad, as the runner times it
        out = call(var, q, k, v, causal)
        if prob.needs_backward:
            out.backward(torch.ones_like(out))
    counted = counter.get_total_flops()
    model = cls.flops(prob, var.params, impl, matmul_only=True)
    assert counted > 0, "FlopCounterMode saw no matmul: declare fused ops in flop_counter_formulas"
    gap = abs(model - counted) / counted
    assert gap <= cls.flop_rtol, f"matmul FLOPs: model {model:.6g}, counted {counted:.6g}: {gap:.2%} apart"
