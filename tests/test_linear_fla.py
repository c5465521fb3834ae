"""linear impl "fla" on CPU: what can be checked without CUDA.

fla-core's Triton kernels need a GPU (tests/gpu/test_gpu_contract.py runs them there). Here the
wrapper around them is checked: its declared limits and readable refusals, and its arithmetic (the
elu+1 features, the (B, N, H, d) layout, the fp32 denominator with the variant's eps, the mask)
with the kernel `fla.ops.linear_attn.chunk_linear_attn` replaced by fla's own reference of the same
function (`fla.ops.linear_attn.naive.naive_recurrent_linear_attn`) when fla is installed, else by the
plain definition below. Compared with `attentions/linear/naive.py`, outputs and gradients.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch
from torch import Tensor

from attentions.linear.naive import linear_attention
from attentions.linear.variant import LinearAttention, LinearParams
from harness.plugins import conformance as cf
from harness.plugins.contract import Problem


def recurrent_linear_attn(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, normalize: bool = False, **_: object
) -> tuple[Tensor, None]:
    """fla's documented function without normalization: o_t = scale q_t . sum_{s<=t} k_s v_s^T.
    q, k: (B, T, H, K), v (B, T, H, V) -> (B, T, H, V) in v's dtype, computed in fp32."""
    assert not normalize
    qf, kf, vf = (x.float() for x in (q, k, v))
    weights = torch.einsum("bthk,bshk->bhts", qf * (scale or 1.0), kf).tril()  # (B, H, T, S)
    return torch.einsum("bhts,bshv->bthv", weights, vf).to(v.dtype), None


@pytest.fixture
def kernel_on_cpu(monkeypatch: pytest.MonkeyPatch) -> str:
    """Replace fla's chunked kernel by a CPU reference of it; returns which one."""
    if importlib.util.find_spec("fla") is not None:
        from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

        module, name, fn = importlib.import_module("fla.ops.linear_attn"), "fla", naive_recurrent_linear_attn
    else:
        module, name, fn = types.ModuleType("fla.ops.linear_attn"), "plain", recurrent_linear_attn
        monkeypatch.setitem(sys.modules, "fla.ops.linear_attn", module)
    calls: list[int] = []

    def kernel(q, k, v, scale=None, normalize=True, **kwargs):
        assert q.dim() == 4 and q.dtype == v.dtype and scale == 1.0 and normalize is False
        calls.append(q.shape[1])
        return fn(q, k, v, scale=scale, normalize=False)

    monkeypatch.setattr(module, "chunk_linear_attn", kernel, raising=False)
    return name


def build(dtype: str = "fp32", eps: float = 1e-6) -> LinearAttention:
    return LinearAttention(LinearParams(eps=eps), "fla", heads=2, head_dim=32, device="cpu", dtype=dtype)


def test_declared_limits_and_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = LinearAttention.capabilities_for("fla")
    assert caps.devices == ("cuda",) and caps.dtypes == ("fp16", "bf16") and not caps.non_causal
    assert LinearAttention.layout_for("fla") == "bnhd" and LinearAttention.layout_for("torch") == "bhnd"
    cuda = Problem(batch=1, heads=2, seq_len=64, head_dim=32, dtype="bf16", device="cuda", causal=False)
    assert "linear/fla is causal only" in LinearAttention.not_supported_reasons(cuda, LinearParams(), "fla")
    cf.check_readable_refusal(LinearAttention, "fla")  # CPU fp32: names linear/fla, one line each
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fla" else object())
    reasons = LinearAttention.not_supported_reasons(cf.BASE, LinearParams(), "fla")
    assert any("not installed: fla" in r for r in reasons), reasons
    with pytest.raises(ValueError, match="causal kernels only"):
        build()(*(torch.ones(1, 4, 2, 32) for _ in range(3)), causal=False)


@pytest.mark.parametrize("n", [63, 200])
def test_wrapper_matches_reference(kernel_on_cpu: str, n: int) -> None:
    """fp32: outputs and q, k, v gradients vs naive.py within the fp32 tolerance (eps 1e-6 included)."""
    prob = cf.problem(n, 32, causal=True, heads=2)
    var = build()
    q, k, v = cf.make_qkv(prob, requires_grad=True)
    bnhd = [x.transpose(1, 2) for x in (q, k, v)]
    got = cf.outputs_and_grads(lambda *x: var(*x, True).transpose(1, 2), [q, k, v], *bnhd)
    ref = cf.outputs_and_grads(lambda *x: linear_attention(*x, True, 1e-6), [q, k, v], q, k, v)
    cf._compare(f"linear/fla ({kernel_on_cpu} kernel) vs naive", got, ref, LinearAttention.tolerances["fp32"])


def test_eps_is_the_variants(kernel_on_cpu: str) -> None:
    """A large eps changes the output as naive.py's does (fla's own normalize would add 1e-10)."""
    q, k, v = (torch.randn(1, 2, 40, 32, generator=torch.Generator().manual_seed(s)) for s in range(3))
    out = build(eps=50.0)(*(x.transpose(1, 2) for x in (q, k, v)), causal=True).transpose(1, 2)
    assert cf.rel_err(out, linear_attention(q, k, v, True, 50.0)) < 1e-6
    assert cf.rel_err(out, linear_attention(q, k, v, True, 1e-6)) > 1e-3


def test_bf16_and_mask(kernel_on_cpu: str) -> None:
    """bf16 in, bf16 out within the bf16 tolerance; padded keys get no weight (real rows as naive.py's)."""
    prob = cf.problem(63, 32, causal=True, batch=3, heads=2)
    (q, k, v), mask = cf.right_padded(prob, [63, 40, 17])
    qb, kb, vb = (x.bfloat16().transpose(1, 2) for x in (q, k, v))
    out = build("bf16")(qb, kb, vb, True, key_padding_mask=mask).transpose(1, 2)
    ref = linear_attention(*(x.transpose(1, 2) for x in (qb, kb, vb)), True, 1e-6, mask)
    real = mask[:, None, :, None]
    assert out.dtype == torch.bfloat16
    assert cf.rel_err(out.float() * real, ref * real) < LinearAttention.tolerances["bf16"].output
