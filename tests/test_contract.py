"""Contract tests run over the registry: every registered variant x each of its impls.

New variants are covered as soon as they register: cases are built from `VARIANTS.names()` and each
class's `impls`. A variant whose module does not import fails `test_variant_imports` (and has no
other cases until it does). Impls that cannot run on CPU fp32 here must say why, readably.

Inputs are built as the runner builds them (`harness.execute.pipeline`): `torch.manual_seed(seed)` then
`cls(params, impl, problem)`, q, k, v from `harness.inputs.synthetic.make_qkv` in the canonical layout,
converted to `cls.layout_for(impl)` for the call and back with `to_canonical`.

The naive reference of each variant (its `naive.py`, fed the instance's parameters) is looked up
in `NAIVE` by "name/impl", then by "name"; a registered variant missing there fails its test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from attentions.flash.naive import exact_attention
from attentions.linear.naive import linear_attention
from attentions.luna.naive import luna_attention
from attentions.luna_nested.naive import luna_nested_attention
from attentions.performer.naive import favor_attention
from attentions.softmax.naive import softmax_attention
from harness.config.scenario import InputSpec
from harness.inputs import synthetic as inputs
from harness.plugins.contract import AttentionVariant, Problem
from harness.plugins.variants import VARIANTS

B, H = 2, 2
SEED = 0
SPEC = InputSpec(dist="gaussian", scale=1.0, seed=SEED)
BASE = Problem(batch=B, heads=H, seq_len=63, head_dim=64, dtype="fp32", causal=False, mode="fwd_bwd")
# (N, d) grid: every head dim at an odd N, and one long N at d = 48 (run at batch = heads = 1 to keep
# the O(N^2) naive references and LUNA's per-scalar MLP activations cheap).
SHAPES = [(63, 32), (63, 48), (63, 64), (63, 128), (1000, 48)]
LONG_N = 256

# Relative Frobenius error of each impl vs its fp32 naive reference, (output, gradients). Measured
# worst cases over SHAPES x causal: ~5e-7 output and ~5e-6 gradients for most; luna_nested's grad
# of q reaches 5e-5 at d = 128 (its softmax over l packed keys is near uniform, so dL/dq is a small
# difference of large terms). Exact variants must also match exact softmax to EXACT_RTOL.
DEFAULT_RTOL = (1e-5, 1e-4)
RTOL = {"luna_nested": (1e-5, 3e-4)}
EXACT_RTOL = 1e-5
# bf16 vs the same impl in fp32 on the bf16-rounded inputs (bf16 unit roundoff 3.9e-3). Measured at
# N = 63, d = 64: outputs <= 6.4e-3 (nystrom) and 1.0e-2 (performer/package, which computes in bf16),
# gradients <= 8e-3 and 2.7e-2 (performer/package); the bounds leave 2x room.
BF16_RTOL = 2e-2
CAUSAL_RTOL = 1e-6
BATCH_RTOL = 1e-6

NaiveFn = Callable[[AttentionVariant, Tensor, Tensor, Tensor, bool], Tensor]

# Documented upstream behaviour kept on purpose (the harness measures it): strict xfails, so a
# change upstream that fixes it shows up as XPASS.
KNOWN_CAUSALITY_LEAKS = {
    "performer/package": "performer-pytorch stabilizes keys with a max over the whole sequence and adds "
    "eps = 1e-4 after it, so future keys reach past outputs (upstream issue #82)",
}
KNOWN_BATCH_DEPENDENCE = {
    "nystrom/package": "nystrom-attention scales the pseudo-inverse init by maxima over the whole "
    "(B, H) batch, so a sample's output depends on the other samples",
}


# ----- naive references --------------------------------------------------------------------------
def _softmax(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    return softmax_attention(q, k, v, causal)


def _flash(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    return exact_attention(q, k, v, causal)


def _linear(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    return linear_attention(q, k, v, causal, eps=var.params.eps)


def _performer(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    assert var.params.eps == 0, "naive FAVOR+ has no eps; compare at the default eps = 0"
    return favor_attention(q, k, v, var.projection, causal)


def _performer_package(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """performer-pytorch 1.1.4 `FastAttention` written out (it is not the naive FAVOR+ estimator).

    phi(x) = M^(-1/2) (exp(x' W^T - |x'|^2 / 2 - s) + 1e-4), x' = x d^(-1/4), with s the max of
    x' W^T over features (queries) or over all keys and features of a (batch, head) (keys).
    Causal denominators add 1e-6 to every feature of the key prefix sum. fp32 (B, H, N, d).
    """
    W, d = var.projection.float(), q.shape[-1]

    def features(x: Tensor, dims: tuple[int, ...]) -> Tensor:
        xs = x.float() * d**-0.25
        proj = xs @ W.T  # (B, H, N, M)
        stab = proj.amax(dim=dims, keepdim=True).detach()
        return (torch.exp(proj - (xs * xs).sum(-1, keepdim=True) / 2 - stab) + 1e-4) / math.sqrt(W.shape[0])

    phi_q, phi_k = features(q, (-1,)), features(k, (-1, -2))
    weights = phi_q @ phi_k.transpose(-1, -2)  # (B, H, N, N)
    if not causal:
        return (weights @ v.float()) / weights.sum(-1, keepdim=True)
    weights = weights.tril()
    return (weights @ v.float()) / (weights.sum(-1, keepdim=True) + 1e-6 * phi_q.sum(-1, keepdim=True))


def _luna(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    p, w = var.params, var.weights()
    return luna_attention(
        q, k, v, *w[:6], causal=causal, nonneg=p.nonneg, eps=p.eps, ch_rms=p.ch_rms,
        env_a=w.env_a, env_c=w.env_c,
    )  # fmt: skip


def _luna_nested(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    return luna_nested_attention(q, k, v, var.P_q, causal, var.W_k, var.W_v)


def _nystrom(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    from attentions.nystrom.naive import nystrom_attention_naive

    return nystrom_attention_naive(q, k, v, var.params.landmarks, var.params.pinv_iters)


def _nystrom_package(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """naive.py's Nyström with nystrom-attention's `moore_penrose_iter_pinv` (Z_0 scaled by maxima
    over the whole (B, H) batch) in place of the per-matrix `iterative_pinv`. fp32 (B, H, N, d)."""
    from nystrom_attention.nystrom_attention import moore_penrose_iter_pinv

    from attentions.nystrom.naive import segment_means

    q, k, v = q.float(), k.float(), v.float()
    m, scale = min(var.params.landmarks, q.shape[-2]), q.shape[-1] ** -0.5
    q_land, k_land = segment_means(q, m), segment_means(k, m)  # (B, H, m, d)
    kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2) * scale, dim=-1)  # (B, H, N, m)
    kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2) * scale, dim=-1)  # (B, H, m, m)
    kernel_3 = torch.softmax(q_land @ k.transpose(-1, -2) * scale, dim=-1)  # (B, H, m, N)
    return kernel_1 @ (moore_penrose_iter_pinv(kernel_2, var.params.pinv_iters) @ (kernel_3 @ v))


NAIVE: dict[str, NaiveFn] = {
    "softmax": _softmax,
    "flash": _flash,
    "linear": _linear,
    "performer": _performer,
    "performer/package": _performer_package,
    "luna": _luna,
    "luna_nested": _luna_nested,
    "nystrom": _nystrom,
    "nystrom/package": _nystrom_package,
}


# ----- cases -------------------------------------------------------------------------------------
def _importable() -> list[str]:
    names = []
    for name in VARIANTS.names():
        try:
            VARIANTS.get(name)
        except ImportError:  # reported by test_variant_imports
            continue
        names.append(name)
    return names


def _impl_cases(runs_on_cpu: bool, xfails: dict[str, str] | None = None) -> list[Any]:
    """pytest params (name, impl) of the impls that run (or refuse to run) on CPU fp32.

    `xfails` maps "name/impl" to a documented upstream defect: a strict xfail for that case.
    """
    cases = []
    for name in IMPORTABLE:
        cls = VARIANTS.get(name)
        for impl in cls.impls:
            if bool(cls.not_supported_reasons(BASE, cls.make_params({}), impl)) == runs_on_cpu:
                continue
            key = f"{name}/{impl}"
            marks = (
                [pytest.mark.xfail(strict=True, raises=AssertionError, reason=xfails[key])]
                if key in (xfails or {})
                else []
            )
            cases.append(pytest.param(name, impl, id=key, marks=marks))
    return cases


IMPORTABLE = _importable()  # at collection, before any test plants a fake variant
CPU_IMPLS = _impl_cases(runs_on_cpu=True)
CPU_REFUSED = _impl_cases(runs_on_cpu=False)


def problem(n: int = 63, d: int = 32, causal: bool = False, batch: int = B, **kw: Any) -> Problem:
    return dataclasses.replace(BASE, batch=batch, seq_len=n, head_dim=d, causal=causal, **kw)


def build(name: str, impl: str, prob: Problem, seed: int = SEED) -> AttentionVariant:
    """The variant as the runner builds it, after skipping (with its reasons) what it cannot run."""
    cls = VARIANTS.get(name)
    params = cls.make_params({})
    reasons = cls.not_supported_reasons(prob, params, impl)
    if reasons:
        pytest.skip("; ".join(reasons))
    torch.manual_seed(seed)
    return cls(params, impl, prob).to(prob.device)


def qkv(prob: Problem, seed_offset: int = 0, requires_grad: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Canonical (B, H, N, d) inputs in the problem's dtype."""
    return inputs.make_qkv(prob, SPEC, seed_offset=seed_offset, requires_grad=requires_grad)


def call(var: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """forward on canonical tensors through the impl's layout; canonical (B, H, N, d) output."""
    layout = type(var).layout_for(var.impl)
    if layout == "bnhd":
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    return inputs.to_canonical(var(q, k, v, causal), layout)


def naive_fn(name: str, impl: str) -> NaiveFn:
    fn = NAIVE.get(f"{name}/{impl}") or NAIVE.get(name)
    if fn is None:
        pytest.fail(f"no naive reference for {name}/{impl}: add one to NAIVE in {__name__}")
    return fn


def rel_err(out: Tensor, ref: Tensor) -> float:
    """Relative Frobenius error in fp64 (0 when both are 0)."""
    ref64 = ref.detach().double()
    diff = (out.detach().double() - ref64).norm().item()
    return diff / ref64.norm().item() if diff else 0.0


def outputs_and_grads(fn: Callable[..., Tensor], leaves: list[Tensor], *args: Tensor) -> tuple[Tensor, ...]:
    """fn(*args) and the grads of sum(out * w) (w fixed, N(0, 1)) with respect to `leaves`."""
    out = fn(*args)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out.float() * w).sum(), leaves)
    return (out.detach(), *grads)


# ----- registry and description ------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS.names())
def test_variant_imports(name: str) -> None:
    cls = VARIANTS.get(name)  # an ImportError here is the failure
    assert issubclass(cls, AttentionVariant) and cls.name == name
    assert cls.impls and len(set(cls.impls)) == len(cls.impls)
    assert cls.version >= 1 and cls.paper and cls.reference_impl


@pytest.mark.parametrize("name", IMPORTABLE)
def test_params_contract(name: str) -> None:
    cls = VARIANTS.get(name)
    assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen
    params = cls.make_params({})
    fields = dataclasses.fields(params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(params, fields[0].name if fields else "anything", None)
    with pytest.raises(KeyError, match="no_such_param"):
        cls.make_params({"no_such_param": 1})
    assert (cls.feature_dim(params, BASE) is None) == cls.capabilities.exact


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", IMPORTABLE)
def test_cost_model_positive(name: str, causal: bool) -> None:
    cls = VARIANTS.get(name)
    params = cls.make_params({})
    if causal and not cls.capabilities.causal:
        pytest.skip(f"{name} has no causal form")
    costs = {}
    for mode in ("fwd", "fwd_bwd"):
        prob = problem(1024, 64, causal=causal, mode=mode)
        costs[mode] = (cls.flops(prob, params), cls.bytes_moved(prob, params))
        for value in costs[mode]:
            assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (mode, value)
    assert costs["fwd_bwd"][0] > costs["fwd"][0] and costs["fwd_bwd"][1] > costs["fwd"][1]


@pytest.mark.parametrize("name,impl", CPU_REFUSED)
def test_refused_impl_gives_readable_reason(name: str, impl: str) -> None:
    cls = VARIANTS.get(name)
    reasons = cls.not_supported_reasons(BASE, cls.make_params({}), impl)
    assert reasons and all(isinstance(r, str) and r.strip() and "\n" not in r for r in reasons), reasons
    assert any(name in r for r in reasons), reasons


def test_every_variant_runs_on_cpu() -> None:
    """At least one impl of every importable variant runs on CPU fp32 (else nothing below covers it)."""
    covered = {p.values[0] for p in CPU_IMPLS}
    assert covered == set(IMPORTABLE)


# ----- numerics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("name,impl", CPU_IMPLS)
def test_matches_naive(name: str, impl: str, n: int, d: int, causal: bool) -> None:
    """Output (shape, dtype, values) and gradients (inputs and learnable params) vs naive.py, fp32."""
    prob = problem(n, d, causal) if n < LONG_N else problem(n, d, causal, batch=1, heads=1)
    var = build(name, impl, prob)
    naive = naive_fn(name, impl)
    q, k, v = qkv(prob, requires_grad=True)
    leaves = [q, k, v, *(p for p in var.parameters() if p.requires_grad)]
    out, *grads = outputs_and_grads(lambda *x: call(var, *x, causal), leaves, q, k, v)
    ref, *ref_grads = outputs_and_grads(lambda *x: naive(var, *x, causal), leaves, q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    fwd_tol, grad_tol = RTOL.get(name, DEFAULT_RTOL)
    assert rel_err(out, ref) < fwd_tol
    for i, (g, rg) in enumerate(zip(grads, ref_grads, strict=True)):
        assert rel_err(g, rg) < grad_tol, f"grad of leaf {i} ({'qkv'[i] if i < 3 else 'param'})"
    if VARIANTS.get(name).capabilities.exact:
        assert rel_err(out, softmax_attention(q, k, v, causal)) < EXACT_RTOL


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("name,impl", CPU_IMPLS)
def test_bf16_close_to_fp32(name: str, impl: str, causal: bool) -> None:
    prob = problem(63, 64, causal, dtype="bf16")
    var = build(name, impl, prob)
    q, k, v = qkv(prob, requires_grad=True)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    out, *grads = outputs_and_grads(lambda *x: call(var, *x, causal), [q, k, v], q, k, v)
    ref, *ref_grads = outputs_and_grads(lambda *x: call(var, *x, causal), [q32, k32, v32], q32, k32, v32)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert rel_err(out, ref) < BF16_RTOL
    for g, rg in zip(grads, ref_grads, strict=True):
        assert g.dtype == torch.bfloat16 and rel_err(g, rg) < 3 * BF16_RTOL


@pytest.mark.parametrize("name,impl", _impl_cases(True, KNOWN_CAUSALITY_LEAKS))
def test_causality(name: str, impl: str) -> None:
    """Replacing q, k, v after position t (with larger values) leaves outputs 0..t unchanged."""
    n = 200  # crosses the default chunk (128) of the chunked impls
    prob = problem(n, 32, causal=True, mode="fwd")
    var = build(name, impl, prob)
    q, k, v = qkv(prob)
    fresh = [3.0 * x for x in qkv(prob, seed_offset=1)]
    with torch.no_grad():
        out = call(var, q, k, v, True)
        for t in (0, 63, 127, 128, n - 2):
            changed = [
                torch.cat([x[:, :, : t + 1], y[:, :, t + 1 :]], dim=2)
                for x, y in zip((q, k, v), fresh, strict=True)
            ]
            past = call(var, *changed, True)[:, :, : t + 1]
            assert rel_err(past, out[:, :, : t + 1]) <= CAUSAL_RTOL, f"t={t}"


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("name,impl", _impl_cases(True, KNOWN_BATCH_DEPENDENCE))
def test_batch_independence(name: str, impl: str, causal: bool) -> None:
    """Sample 0 computed alone equals its output within a batch of 3."""
    prob = problem(63, 32, causal, batch=3, mode="fwd")
    var = build(name, impl, prob)
    q, k, v = qkv(prob)
    with torch.no_grad():
        batched = call(var, q, k, v, causal)[:1]
        alone = call(var, q[:1], k[:1], v[:1], causal)
    assert rel_err(alone, batched) <= BATCH_RTOL


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("name,impl", CPU_IMPLS)
def test_deterministic_construction(name: str, impl: str, seed: int) -> None:
    """Two builds after torch.manual_seed(seed) hold the same state and give identical outputs."""
    prob = problem(63, 32, mode="fwd")
    first, second = build(name, impl, prob, seed), build(name, impl, prob, seed)
    state_1, state_2 = first.state_dict(), second.state_dict()
    assert state_1.keys() == state_2.keys()
    assert all(torch.equal(state_1[key], state_2[key]) for key in state_1)
    q, k, v = qkv(prob)
    with torch.no_grad():
        assert torch.equal(call(first, q, k, v, False), call(second, q, k, v, False))
