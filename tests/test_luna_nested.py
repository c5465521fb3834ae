"""`luna_nested` (Luna, linear unified nested attention): variant vs naive forms, causality, fit, costs.

Comparisons run in float64 (the variant's parameters cast with `.double()`). The causal form is
checked three ways against the variant's chunked one: explicit (N, N) weights, explicit prefix
sums in the official code's order, and a per-step recurrence written from `LunarCausalAttention`
+ `efficient_causal_attention_seq` (fairseq-apollo).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attentions.luna_nested import naive
from attentions.luna_nested.fit import kl_rows, noncausal_rows
from attentions.luna_nested.variant import UNTIED_CAUSAL_REASON, LunaNestedAttention, LunaNestedParams
from harness.plugins.contract import FitSpec, Problem, Teacher
from tests.shapes import HEAD_DIMS, SEQ_LENS

B, H = 1, 2
F64_RTOL = 1e-10


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def problem(n: int = 63, d: int = 32, causal: bool = False, mode: str = "fwd") -> Problem:
    return Problem(batch=B, heads=H, seq_len=n, head_dim=d, causal=causal, mode=mode)


def make_model(
    n: int, d: int, causal: bool, dtype: torch.dtype = torch.float64, **params
) -> LunaNestedAttention:
    torch.manual_seed(0)
    return LunaNestedAttention(LunaNestedParams(**params), "chunked", H, d).to(dtype)


def make_qkv(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, d, generator=gen, dtype=dtype).requires_grad_() for _ in range(3)]


def out_and_grads(fn, model: LunaNestedAttention, q, k, v) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn(q, k, v) and the grads of q, k, v and the model's parameters for sum(out * w), w fixed."""
    out = fn(q, k, v)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    leaves = [q, k, v, *model.parameters()]
    grads = torch.autograd.grad((out * w).sum(), leaves, allow_unused=True)
    return out.detach(), list(grads)


def check_against(
    reference, model: LunaNestedAttention, n: int, d: int, causal: bool, mask: torch.Tensor | None = None
) -> None:
    """Output and all gradients of `model` equal those of `reference` (q, k, v) -> out, in float64.

    With pack_len 1 the unpack softmax is over one slot, so the output depends on neither q nor W_k.
    """
    q, k, v = make_qkv(n, d)
    no_grad = {"q", "W_k"} if model.params.pack_len == 1 else set()
    ref, ref_grads = out_and_grads(reference, model, q, k, v)
    real = 1.0 if mask is None else mask[:, None, :, None]  # outputs at padded rows are unspecified
    out, grads = out_and_grads(lambda *x: model(*x, causal, mask) * real, model, q, k, v)
    assert out.shape == q.shape and out.dtype == torch.float64
    assert rel_err(out, ref) < F64_RTOL
    names = ["q", "k", "v"] + [name for name, _ in model.named_parameters()]
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        assert g is not None and rg is not None, f"grad of {name} missing"
        if name in no_grad:
            assert g.abs().max() < 1e-12 and rg.abs().max() < 1e-12
            continue
        assert rg.norm() > 0 and rel_err(g, rg) < F64_RTOL, f"grad of {name}"


# ----- non-causal: pack then unpack -----------------------------------------------------------
@pytest.mark.sampled(5)  # of 16
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("n", SEQ_LENS)
def test_noncausal_matches_naive(n: int, d: int, tied: bool) -> None:
    model = make_model(n, d, False, pack_len=16, tied=tied)

    def reference(q, k, v):
        return naive.luna_nested_noncausal(q, k, v, model.P_q, model.W_k, model.W_v)

    check_against(reference, model, n, d, False)


@pytest.mark.parametrize("pack_len", [1, 7, 64, 100])  # 100 > N: longer than the sequence
def test_noncausal_pack_lengths(pack_len: int) -> None:
    model = make_model(63, 48, False, pack_len=pack_len, tied=False)
    assert model.P_q.shape == (H, pack_len, 48)

    def reference(q, k, v):
        return naive.luna_nested_noncausal(q, k, v, model.P_q, model.W_k, model.W_v)

    check_against(reference, model, 63, 48, False)


def test_noncausal_effective_weights_are_row_stochastic() -> None:
    model = make_model(63, 32, False, pack_len=8, tied=False)
    q, k, v = (x.detach() for x in make_qkv(63, 32))
    rows = torch.arange(63)
    with torch.no_grad():
        w_eff, out = noncausal_rows(q, k, v, model.P_q, model.W_k, model.W_v, rows)
        assert rel_err(out, model(q, k, v, False)) < F64_RTOL
    assert (w_eff >= 0).all() and torch.allclose(w_eff.sum(-1), torch.ones(()).double())


# ----- causal: the official recurrences, chunked ----------------------------------------------
def official_sequential(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, P_q: torch.Tensor) -> torch.Tensor:
    """Per-step recurrence of `LunarCausalAttention` (fairseq-apollo, luna_attention.py) with
    `efficient_causal_attention_seq`: pq and q pre-scaled by d^-1/2, pattn = softplus_{ln 2}(k pq^T),
    two accumulators (d x l and l x d), each read divided by the 1-based step."""
    d = q.shape[-1]
    pattn = F.softplus(k @ (P_q * d**-0.5).transpose(-1, -2), beta=math.log(2.0))  # (B, H, N, l)
    qs = q * d**-0.5
    key_acc = q.new_zeros(*q.shape[:2], d, P_q.shape[1])
    value_acc = q.new_zeros(*q.shape[:2], P_q.shape[1], d)
    outs = []
    for t in range(q.shape[-2]):
        key_acc = key_acc + k[:, :, t, :, None] * pattn[:, :, t, None, :]
        attn = torch.softmax((qs[:, :, t, None, :] @ key_acc).squeeze(-2) / (t + 1), dim=-1)  # (B, H, l)
        value_acc = value_acc + pattn[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((attn[:, :, None, :] @ value_acc).squeeze(-2) / (t + 1))
    return torch.stack(outs, dim=2)


@pytest.mark.sampled(4)  # of 8
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("n", SEQ_LENS)
def test_causal_chunked_matches_naive(n: int, d: int) -> None:
    chunk = 16 if n == 63 else 128  # several blocks and a partial (padded) last one
    model = make_model(n, d, True, pack_len=16, chunk=chunk)
    check_against(lambda q, k, v: naive.luna_nested_causal(q, k, v, model.P_q), model, n, d, True)


@pytest.mark.parametrize("chunk,pack_len", [(1, 16), (7, 1), (64, 64), (2000, 16), (21, 100)])
def test_causal_chunk_and_pack_len(chunk: int, pack_len: int) -> None:
    model = make_model(63, 48, True, pack_len=pack_len, chunk=chunk)
    check_against(lambda q, k, v: naive.luna_nested_causal(q, k, v, model.P_q), model, 63, 48, True)


def test_causal_naive_forms_agree_with_official_recurrence() -> None:
    model = make_model(63, 32, True, pack_len=8)
    q, k, v = (x.detach() for x in make_qkv(63, 32))
    with torch.no_grad():
        ref = official_sequential(q, k, v, model.P_q)
        assert rel_err(naive.luna_nested_causal(q, k, v, model.P_q), ref) < 1e-12
        assert rel_err(naive.luna_nested_causal_prefix(q, k, v, model.P_q), ref) < 1e-12
        assert rel_err(model(q, k, v, True), ref) < 1e-12


def test_causal_effective_weights_are_not_row_stochastic() -> None:
    """Documented property of the official causal form: W[t, j] = (1/t) alpha_t . A_j."""
    model = make_model(63, 32, True, pack_len=8)
    q, k, v = (x.detach() for x in make_qkv(63, 32))
    with torch.no_grad():
        w = naive.causal_effective_weights(q, k, model.P_q)
    assert (w >= 0).all() and (w.triu(1) == 0).all()
    assert (w.sum(-1) - 1).abs().max() > 1e-3  # the non-causal form's rows sum to 1 within 1e-15


def test_causal_outputs_ignore_the_future() -> None:
    n, t0 = 63, 40  # t0 inside a 16-token block
    model = make_model(n, 32, True, pack_len=8, chunk=16)
    q, k, v = (x.detach() for x in make_qkv(n, 32))
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t0 + 1 :] += 3.0 * torch.randn_like(k2[:, :, t0 + 1 :])
    v2[:, :, t0 + 1 :] += 3.0 * torch.randn_like(v2[:, :, t0 + 1 :])
    with torch.no_grad():
        base, moved, non_causal = model(q, k, v, True), model(q, k2, v2, True), model(q, k2, v2, False)
    assert (base[:, :, : t0 + 1] - moved[:, :, : t0 + 1]).abs().max() < 1e-12
    assert (base[:, :, t0 + 1 :] - moved[:, :, t0 + 1 :]).abs().max() > 1e-3
    assert (non_causal[:, :, : t0 + 1] - model(q, k, v, False)[:, :, : t0 + 1]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask_matches_naive(causal: bool) -> None:
    """Padding anywhere (float64, chunk 16): the chunked forms equal naive.py with the mask at the real
    rows, gradients included; padded tokens, however loud, change no real row."""
    n, d = 63, 32
    model = make_model(n, d, causal, pack_len=8, chunk=16, tied=causal)  # untied: non-causal only
    mask = torch.rand(B, n, generator=torch.Generator().manual_seed(4)) > 0.3
    mask[:, 0] = True
    real = mask[:, None, :, None]

    def reference(q, k, v):
        return naive.luna_nested_attention(q, k, v, model.P_q, causal, model.W_k, model.W_v, mask) * real

    check_against(reference, model, n, d, causal, mask)
    q, k, v = (x.detach() for x in make_qkv(n, d))
    loud = [torch.where(real, x, 10 * x) for x in (q, k, v)]
    with torch.no_grad():
        out, out_loud = model(q, k, v, causal, mask), model(*loud, causal, mask)
    assert rel_err(out_loud * real, out * real) < F64_RTOL


def test_untied_causal_refused() -> None:
    params = LunaNestedParams(tied=False)
    assert LunaNestedAttention.not_supported_reasons(problem(causal=True), params, "chunked") == [
        UNTIED_CAUSAL_REASON
    ]
    assert LunaNestedAttention.not_supported_reasons(problem(causal=False), params, "chunked") == []
    assert (
        LunaNestedAttention.not_supported_reasons(problem(causal=True), LunaNestedParams(), "chunked") == []
    )
    model = make_model(63, 32, True, dtype=torch.float32, tied=False)
    q, k, v = make_qkv(63, 32, dtype=torch.float32)
    with pytest.raises(ValueError, match="causal"):
        model(q, k, v, True)


@pytest.mark.parametrize("bad", [{"pack_len": 0}, {"pack_len": 2.0}, {"tied": 1}, {"eps": 0.0}, {"chunk": 0}])
def test_params_are_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        LunaNestedParams(**bad)
    assert LunaNestedAttention.feature_dim(problem(), LunaNestedParams(pack_len=32)) == 32


def test_low_precision_inputs() -> None:
    model = make_model(63, 32, True, dtype=torch.float32, pack_len=8)
    q, k, v = (x.detach() for x in make_qkv(63, 32, dtype=torch.float32))
    with torch.no_grad():
        out = model(*(x.bfloat16() for x in (q, k, v)), True)
        ref = model(*(x.bfloat16().float() for x in (q, k, v)), True)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2


# ----- fit ------------------------------------------------------------------------------------
def clustered_qkv(seed: int, n: int = 128, d: int = 32, clusters: int = 4) -> tuple[torch.Tensor, ...]:
    """q, k, v near a few fixed per-head centres (a token's key and value share one).

    On i.i.d. Gaussian q, k, v a per-head pack cannot generalize: the tied unpack keys are packed
    *values*, which carry no information about q . k. Real layers project k and v from the same
    token, which this distribution imitates.
    """
    centres = torch.randn(H, clusters, d, generator=torch.Generator().manual_seed(123))
    centres = centres / centres.norm(dim=-1, keepdim=True) * 2 * d**0.25  # |c|^2 / sqrt(d) = 4
    gen = torch.Generator().manual_seed(seed)

    def near(z: torch.Tensor) -> torch.Tensor:
        return centres.expand(B, H, clusters, d).gather(
            2, z[..., None].expand(B, H, n, d)
        ) + 0.5 * torch.randn(B, H, n, d, generator=gen)

    zq, zk = (torch.randint(clusters, (B, H, n), generator=gen) for _ in range(2))
    return near(zq), near(zk), near(zk)


def softmax_rel_err(model: LunaNestedAttention, qkv: tuple[torch.Tensor, ...], causal: bool) -> float:
    q, k, v = qkv
    with torch.no_grad():
        return rel_err(model(q, k, v, causal), Teacher(causal).outputs(q, k, v, torch.arange(q.shape[-2])))


def fitted(causal: bool, spec: FitSpec, **params) -> tuple[LunaNestedAttention, list[float]]:
    model = make_model(128, 32, causal, dtype=torch.float32, **params)
    result = model.fit([clustered_qkv(1), clustered_qkv(2)], Teacher(causal), spec)
    assert result.steps == spec.steps and result.final_loss == result.losses[-1]
    return model, result.losses


@pytest.mark.parametrize("causal,tied", [(False, True), (False, False), (True, True)])
def test_fit_lowers_held_out_error(causal: bool, tied: bool) -> None:
    spec = FitSpec(steps=20, lr=5e-2, rows=64, seed=7, mse_weight=1.0)
    held_out = clustered_qkv(99)
    unfitted = make_model(128, 32, causal, dtype=torch.float32, pack_len=8, tied=tied)
    model, losses = fitted(causal, spec, pack_len=8, tied=tied)
    before, after = softmax_rel_err(unfitted, held_out, causal), softmax_rel_err(model, held_out, causal)
    assert after < 0.9 * before, (before, after)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("causal", [False, True])
def test_fit_is_deterministic(causal: bool) -> None:
    spec = FitSpec(steps=4, lr=1e-2, rows=32, seed=3)
    (a, losses_a), (b, losses_b) = (fitted(causal, spec, pack_len=8) for _ in range(2))
    assert losses_a == losses_b and torch.equal(a.P_q, b.P_q)
    c, _ = fitted(causal, FitSpec(steps=4, lr=1e-2, rows=32, seed=4), pack_len=8)
    assert not torch.equal(a.P_q, c.P_q), "another seed samples other rows"


def test_fit_noncausal_objective() -> None:
    """First loss = KL(softmax || W_eff) + mse_weight * output MSE, W_eff from the naive pieces."""
    spec = FitSpec(steps=1, lr=1e-2, rows=16, seed=5, mse_weight=0.5)
    model = make_model(64, 32, False, dtype=torch.float32, pack_len=8, tied=False)
    q, k, v = clustered_qkv(1, n=64)
    rows = torch.randperm(64, generator=torch.Generator().manual_seed(spec.seed))[: spec.rows].sort().values
    with torch.no_grad():
        target = Teacher(False).weights(q, k, rows)
        packed = naive.pack_weights(k, model.P_q) @ v
        keys, _ = naive.unpack_kv(packed, model.W_k, model.W_v)
        alpha = torch.softmax(q[:, :, rows] @ keys.transpose(-1, -2) / 32**0.5, dim=-1)
        w_eff = alpha @ naive.pack_weights(k, model.P_q)
        kl = (target * (target.log() - w_eff.clamp_min(1e-6).log())).sum(-1).mean()
        mse = (model(q, k, v, False)[:, :, rows] - target @ v).pow(2).mean()
        assert math.isclose(kl_rows(target, w_eff, 1e-6).item(), kl.item(), rel_tol=1e-5)
    loss = model.fit([(q, k, v)], Teacher(False), spec).losses[0]
    assert math.isclose(loss, (kl + spec.mse_weight * mse).item(), rel_tol=1e-5)


# ----- cost model -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "causal,tied,pack_len,chunk",
    [
        (False, True, 1, 128),
        (False, True, 16, 128),
        (False, False, 16, 128),
        (True, True, 16, 128),
        (True, True, 1, 16),
    ],
)
@pytest.mark.parametrize("n", SEQ_LENS)
def test_flops_match_flop_counter(n: int, causal: bool, tied: bool, pack_len: int, chunk: int) -> None:
    """`flops` counts matmuls only, so it equals FlopCounterMode exactly: on the naive forward when
    non-causal; on the variant's chunked forward when causal (the naive causal forms are O(N^2) or
    O(N d l) memory, not what is measured; padded positions of the last block are counted)."""
    d = 48
    params = LunaNestedParams(pack_len=pack_len, tied=tied, chunk=chunk)
    prob = problem(n, d, causal)
    model = make_model(n, d, causal, dtype=torch.float32, pack_len=pack_len, tied=tied, chunk=chunk)
    q, k, v = (x.detach() for x in make_qkv(n, d, dtype=torch.float32))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if causal:
            model(q, k, v, True)
        else:
            naive.luna_nested_attention(q, k, v, model.P_q, False, model.W_k, model.W_v)
    expected = LunaNestedAttention.flops(prob, params, "chunked", matmul_only=True)
    assert counter.get_total_flops() == expected
    if not causal:
        assert expected == B * H * (8 * n * pack_len * d + (0 if tied else 4 * pack_len * d * d))
    for mode, factor in (("bwd", 2.0), ("fwd_bwd", 3.0)):
        assert (
            LunaNestedAttention.flops(problem(n, d, causal, mode), params, "chunked", matmul_only=True)
            == factor * expected
        )


def test_bytes_moved_counts_io_and_parameters() -> None:
    prob = problem(1000, 64)
    io = 4 * B * H * 1000 * 64 * 4
    for tied in (True, False):
        params = LunaNestedParams(pack_len=16, tied=tied)
        n_params = sum(p.numel() for p in make_model(1000, 64, False, **params.__dict__).parameters())
        assert LunaNestedAttention.bytes_moved(prob, params, "chunked") == io + 4 * n_params
