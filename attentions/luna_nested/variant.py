"""Luna nested attention plugin (`luna_nested`): Ma et al. 2021, "Luna: Linear Unified Nested Attention".

Not to be confused with `luna` (LUNA, learnable-kernel linear attention). The math is written out
in `naive.py`; this module computes the same functions at linear cost:

- non-causal: pack P' = softmax(P_q k^T / sqrt(d)) v, unpack softmax(q K'^T / sqrt(d)) V' directly;
- causal: the official `LunarCausalAttention` recurrences, chunked: per block of c tokens an
  intra-block masked (c x c) product plus two carried states, sum_j k_j A_j^T (d x l) and
  sum_j A_j v_j^T (l x d), taken as exclusive prefix sums over blocks (N/c of them, never N).

Arithmetic is in the parameters' dtype, fp32 (inputs are cast to it, the output back to the
input dtype); tests run the same functions with fp64 parameters. Key-padding mask: padded keys
take no pack weight (non-causal) or have A = 0 and do not count in the 1/t averages (causal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attentions.luna_nested.fit import fit_luna_nested
from harness.measure.costs import by_mode, io_bytes_for_mode, matmul_flops
from harness.plugins.contract import (
    AttentionVariant,
    Capabilities,
    FitResult,
    FitSpec,
    Problem,
    Teacher,
    Tolerance,
)

SOFTPLUS_BETA = math.log(2.0)
UNPACK_INIT_NOISE = 1e-2  # std of the noise added to the identity init of W_k, W_v (untied)
UNTIED_CAUSAL_REASON = (
    "luna_nested tied=False (learned unpack projections W_k, W_v) has no causal form: "
    "the official causal attention has no packed sequence to project"
)


@dataclass(frozen=True)
class LunaNestedParams:
    """Hyperparameters of Luna nested attention.

    pack_len: l, length of the packed sequence (the paper uses 16-256).
    tied:     unpack keys = values = P' (True); False adds learned per-head (d x d) projections
              W_k, W_v on P' (init identity + N(0, 1e-4) noise). Non-causal only: the causal form
              has no packed sequence.
    eps:      floor of the effective weights inside the log of the fit's KL loss.
    chunk:    block length c of the chunked causal form.
    """

    pack_len: int = 64
    tied: bool = True
    eps: float = 1e-6
    chunk: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.pack_len, int) or isinstance(self.pack_len, bool) or self.pack_len < 1:
            raise ValueError(f"pack_len must be a positive int, got {self.pack_len!r}")
        if not isinstance(self.tied, bool):
            raise ValueError(f"tied must be a bool, got {self.tied!r}")
        if not isinstance(self.eps, int | float) or isinstance(self.eps, bool) or not 0 < self.eps < 1:
            raise ValueError(f"eps must be a float in (0, 1), got {self.eps!r}")
        if not isinstance(self.chunk, int) or isinstance(self.chunk, bool) or self.chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {self.chunk!r}")


def noncausal_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    P_q: Tensor,
    W_k: Tensor | None,
    W_v: Tensor | None,
    mask: Tensor | None = None,
) -> Tensor:
    """Pack then unpack. q, k, v: (B, H, N, d); P_q: (H, l, d); W_k, W_v: (H, d, d) | None; mask (B, N)
    bool, True = real key. Returns (B, H, N, d) in P_q's dtype.
    """
    scale = q.shape[-1] ** -0.5
    q, k, v = (x.to(P_q.dtype) for x in (q, k, v))
    logits = (P_q * scale) @ k.transpose(-1, -2)  # (B, H, l, N)
    if mask is not None:  # padded keys get no pack weight (lowest float: finite with no real key)
        logits = logits.masked_fill(~mask[:, None, None, :], torch.finfo(logits.dtype).min)
    pack = torch.softmax(logits, dim=-1)  # (B, H, l, N)
    packed = pack @ v  # (B, H, l, d)
    keys = packed if W_k is None else packed @ W_k
    values = packed if W_v is None else packed @ W_v
    alpha = torch.softmax((q * scale) @ keys.transpose(-1, -2), dim=-1)  # (B, H, N, l)
    return alpha @ values


def _exclusive_block_prefix(x: Tensor) -> Tensor:
    """Sum of the earlier blocks' states. x: (B, H, nc, a, b) -> same shape, block 0 gets zeros."""
    return torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, :-1]], dim=2).cumsum(dim=2)


def causal_chunked_forward(
    q: Tensor, k: Tensor, v: Tensor, P_q: Tensor, chunk: int, mask: Tensor | None = None
) -> Tensor:
    """Causal Luna nested attention by blocks. q, k, v: (B, H, N, d); P_q: (H, l, d); mask (B, N)
    bool, True = real key -> (B, H, N, d).

    N is zero-padded at the end to a multiple of c = min(chunk, N); padding only feeds later
    (padded) positions, which are dropped. With a mask, padded keys have A = 0 and t counts the
    real keys up to each position (at least 1). Computed in P_q's dtype.
    """
    B, H, N, d = q.shape
    c = min(chunk, N)
    pad = (-N) % c
    nc = (N + pad) // c
    scale = d**-0.5

    def blocks(x: Tensor) -> Tensor:
        return F.pad(x.to(P_q.dtype), (0, 0, 0, pad)).view(B, H, nc, c, d)

    qb, kb, vb = blocks(q) * scale, blocks(k), blocks(v)  # (B, H, nc, c, d)
    A = F.softplus(kb @ (P_q * scale).transpose(-1, -2)[None, :, None], beta=SOFTPLUS_BETA)  # (B,H,nc,c,l)
    t = torch.arange(1, nc * c + 1, device=q.device, dtype=P_q.dtype).view(nc, c, 1)
    if mask is not None:
        keep = F.pad(mask.to(P_q.dtype), (0, pad))  # (B, nc * c)
        A = A * keep.view(B, 1, nc, c, 1)
        t = keep.cumsum(dim=-1).clamp_min(1).view(B, 1, nc, c, 1)
    At = A.transpose(-1, -2)  # (B, H, nc, l, c)
    future = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)

    # first nested attention: s_t = (1/t) sum_{j<=t} (q_t . k_j) A_j, state sum_j k_j A_j^T
    key_state = _exclusive_block_prefix(kb.transpose(-1, -2) @ A)  # (B, H, nc, d, l)
    local = (qb @ kb.transpose(-1, -2)).masked_fill(future, 0.0)  # (B, H, nc, c, c)
    alpha = torch.softmax((local @ A + qb @ key_state) / t, dim=-1)  # (B, H, nc, c, l)

    # second: out_t = (1/t) sum_{j<=t} (alpha_t . A_j) v_j, state sum_j A_j v_j^T
    value_state = _exclusive_block_prefix(At @ vb)  # (B, H, nc, l, d)
    local = (alpha @ At).masked_fill(future, 0.0)  # (B, H, nc, c, c)
    out = (local @ vb + alpha @ value_state) / t  # (B, H, nc, c, d)
    return out.view(B, H, nc * c, d)[:, :, :N]


class LunaNestedAttention(AttentionVariant):
    """Luna nested attention with per-head learned pack queries P_q (H, l, d)."""

    name = "luna_nested"
    version = 1
    paper = "Ma et al. 2021, Luna: Linear Unified Nested Attention, NeurIPS 2021, arXiv 2106.01540"
    reference_impl = (
        "XuezheMax/fairseq-apollo fairseq/modules/luna_attention.py "
        "(LunarMultiheadAttention, LunarCausalAttention)"
    )
    reference = "attentions.luna_nested.naive:reference"
    # Worst relative Frobenius errors measured (conformance inputs; CPU, torch 2.13): fp32 vs naive.py
    # over N 63/1000, d 32..128, causal and not: 2.2e-7 outputs, 3.6e-5 gradients (the grad of q: the
    # softmax over l packed keys is near uniform, so dL/dq is a small difference of large terms);
    # bf16 vs fp32 on the rounded inputs: 1.7e-3 / 2.4e-3.
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=3e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
    }
    flop_rtol = 1e-9  # every matmul is modeled exactly (padded last block included)
    Params = LunaNestedParams
    impls = ("chunked",)
    capabilities = Capabilities(learnable=True, masking=True)

    def __init__(
        self,
        params: LunaNestedParams,
        impl: str,
        heads: int,
        head_dim: int,
        device: str = "cpu",
        dtype: str = "fp32",
    ) -> None:
        super().__init__(params, impl, heads, head_dim, device, dtype)
        H, plen, d = heads, params.pack_len, head_dim
        device = torch.device(device)
        self.P_q = nn.Parameter(torch.randn(H, plen, d, device=device) * d**-0.5)
        self.W_k: nn.Parameter | None = None
        self.W_v: nn.Parameter | None = None
        if not params.tied:
            eye = torch.eye(d, device=device).expand(H, d, d)
            self.W_k = nn.Parameter(eye + UNPACK_INIT_NOISE * torch.randn(H, d, d, device=device))
            self.W_v = nn.Parameter(eye + UNPACK_INIT_NOISE * torch.randn(H, d, d, device=device))

    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: LunaNestedParams, impl: str) -> list[str]:
        reasons = super().not_supported_reasons(problem, params, impl)
        if problem.causal and not params.tied:
            reasons.append(UNTIED_CAUSAL_REASON)
        return reasons

    @classmethod
    def feature_dim(cls, problem: Problem, params: LunaNestedParams) -> int:
        return params.pack_len

    @classmethod
    def state_bytes(cls, problem: Problem, params: LunaNestedParams, impl: str) -> float | None:
        """What the causal recurrence keeps per head (naive.py): the fp32 sums sum_j k_j A_j^T (d x l)
        and sum_j A_j v_j^T (l x d); the position t that divides them is the token count."""
        return float(problem.heads * 2 * params.pack_len * problem.head_dim * 4)

    @classmethod
    def flop_terms(cls, problem: Problem, params: LunaNestedParams, impl: str) -> dict[str, float]:
        """Matmul FLOPs of the forms in this module (softmax, softplus and scalings not counted).

        Non-causal, per (b, h): four (l x N x d)-sized products = 8 N l d, + 2 * 2 l d^2 untied.
        Causal, per (b, h), padded length Np = ceil(N / c) c: A = k P_q^T, the two state
        increments and the two state reads are 5 * 2 Np d l; the intra-block q k^T, local A,
        alpha A^T and local v products are 2 * 2 Np c d + 2 * 2 Np c l.
        Backward 2x forward: every product has two operands that need gradients (P_q is learned).
        Softplus, softmax, the masks and the 1/t scalings ("elementwise", ~10 per pack score and
        ~5 per intra-block score) are not matmuls; backward about 2x.
        """
        N, d, plen = problem.seq_len, problem.head_dim, params.pack_len
        if problem.causal:
            c = min(params.chunk, N)
            Np = -(-N // c) * c
            per_head = (
                5 * matmul_flops(Np, d, plen) + 2 * matmul_flops(Np, c, d) + 2 * matmul_flops(Np, c, plen)
            )
            elementwise = 10.0 * Np * plen + 5.0 * Np * c
        else:
            per_head = 4 * matmul_flops(N, d, plen)
            if not params.tied:
                per_head += 2 * matmul_flops(plen, d, d)
            elementwise = 10.0 * N * plen
        bh = problem.batch * problem.heads
        return {
            "attention_matmul": bh * by_mode(problem, per_head, 2 * per_head),
            "elementwise": bh * by_mode(problem, elementwise, 2 * elementwise),
        }

    @classmethod
    def bytes_moved(cls, problem: Problem, params: LunaNestedParams, impl: str) -> float:
        """q, k, v, o traffic plus the fp32 parameters (read in fwd; read + grad written in bwd)."""
        d = problem.head_dim
        per_head = params.pack_len * d + (0 if params.tied or problem.causal else 2 * d * d)
        param_bytes = 4.0 * problem.heads * per_head
        reads = {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}[problem.mode]
        return io_bytes_for_mode(problem) + reads * param_bytes

    def attention_fp32(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None = None
    ) -> Tensor:
        """The variant's function in the parameters' dtype. q, k, v: (B, H, N, d); mask (B, N) bool,
        True = real key -> (B, H, N, d)."""
        if q.shape[1] != self.P_q.shape[0] or q.shape[-1] != self.P_q.shape[-1]:
            raise ValueError(f"q {tuple(q.shape)} does not match P_q {tuple(self.P_q.shape)} (H, l, d)")
        if causal:
            if self.W_k is not None:
                raise ValueError(UNTIED_CAUSAL_REASON)
            return causal_chunked_forward(q, k, v, self.P_q, self.params.chunk, mask)
        return noncausal_forward(q, k, v, self.P_q, self.W_k, self.W_v, mask)

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """q, k, v: (B, H, N, d); key_padding_mask (B, N) bool, True = real -> (B, H, N, d) in q's dtype."""
        return self.attention_fp32(q, k, v, causal, key_padding_mask).to(q.dtype)

    def fit(
        self, calib_batches: Sequence[tuple[Tensor, Tensor, Tensor]], teacher: Teacher, spec: FitSpec
    ) -> FitResult:
        """Distil P_q (and W_k, W_v if untied) to exact softmax; see `fit.py` for the losses."""
        return fit_luna_nested(self, calib_batches, teacher, spec)

    def info(self) -> dict[str, Any]:
        return {"pack_len": self.params.pack_len, "tied": self.params.tied}
