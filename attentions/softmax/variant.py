"""`softmax`: exact scaled dot-product attention in plain PyTorch, the accuracy reference.

    scores = q k^T / sqrt(d)          matmul in the input dtype, scaled and masked in fp32
    P      = softmax(scores)          in fp32, then cast to the input dtype
    out    = P v                      matmul in the input dtype -> (B, H, N, d)

Hidden scores (future keys when causal, padded keys of `key_padding_mask`) get the lowest fp32
value, so their weight is exactly 0. The N x N score matrix is materialized, so memory grows as
N^2: this is the baseline every efficient variant is measured against, not a fast path.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from harness.measure.costs import by_mode, element_bytes, io_bytes_for_mode, matmul_flops
from harness.plugins.contract import AttentionVariant, Capabilities, NoParams, Problem, Tolerance

# N x N elements moved per (batch, head), for an implementation that materializes the matrix:
# forward writes and reads S, then writes and reads P (4); backward reads P for dV, writes dP,
# reads P and dP and writes dS, then reads dS for dQ and for dK (7).
SCORE_PASSES = {"fwd": 4, "bwd": 7, "fwd_bwd": 11}
SOFTMAX_FLOPS = 6.0  # per score: scale, mask, max, subtract, exp, divide (sum folded in)


class SoftmaxAttention(AttentionVariant):
    """Exact softmax attention; q, k, v: (B, H, N, d) -> (B, H, N, d) in the input dtype."""

    name = "softmax"
    version = 1
    paper = "Vaswani et al. 2017, Attention Is All You Need, arXiv:1706.03762"
    reference_impl = "attentions/softmax/naive.py; torch SDPA math backend (SDPBackend.MATH)"
    reference = "attentions.softmax.naive:reference"
    # Worst relative Frobenius errors measured (conformance inputs; CPU, torch 2.13): fp32 vs the
    # reference over N 63/1000, d 32..128, causal and not: 2.2e-7 outputs, 2.3e-7 gradients; vs the
    # same impl in fp32 on the rounded inputs (N 63, d 64): bf16 3.7e-3 / 4.2e-3, fp16 4.5e-4 / 5.4e-4.
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
        "fp16": Tolerance(output=2e-3, grad=6e-3),
    }
    Params = NoParams
    impls = ("torch",)
    capabilities = Capabilities(exact=True, masking=True)
    impl_requires = {}

    @classmethod
    def feature_dim(cls, problem: Problem, params: NoParams) -> int | None:
        return None

    @classmethod
    def state_bytes(cls, problem: Problem, params: NoParams, impl: str) -> float | None:
        """A causal decoder's K and V cache: 2 N d per head, in the input dtype."""
        return float(2 * problem.seq_len * problem.head_dim * problem.heads * element_bytes(problem))

    @classmethod
    def flop_terms(cls, problem: Problem, params: NoParams, impl: str) -> dict[str, float]:
        """Per (batch, head) forward: q k^T and P v, 2 N^2 d each, computed in full even when causal
        (the masked half is computed, then hidden); backward 2x (each product has two operands that
        need gradients). Elementwise: SOFTMAX_FLOPS per score forward, about twice that backward."""
        bh, n, d = problem.batch * problem.heads, problem.seq_len, problem.head_dim
        fwd = bh * 2 * matmul_flops(n, d, n)
        elementwise = bh * SOFTMAX_FLOPS * n * n
        return {
            "attention_matmul": by_mode(problem, fwd, 2 * fwd),
            "softmax_elementwise": by_mode(problem, elementwise, 2 * elementwise),
        }

    @classmethod
    def bytes_moved(cls, problem: Problem, params: NoParams, impl: str) -> float:
        """q, k, v, o (and grads) plus the materialized N x N matrices (full N^2 even if causal)."""
        n = problem.seq_len
        scores = problem.batch * problem.heads * n * n * SCORE_PASSES[problem.mode] * element_bytes(problem)
        return io_bytes_for_mode(problem) + scores

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """q, k, v: (B, H, N, d); key_padding_mask: (B, N) bool, True = real -> (B, H, N, d), q's dtype."""
        n, d = q.shape[-2], q.shape[-1]
        scores = (q @ k.transpose(-1, -2)).float() * (1.0 / math.sqrt(d))  # (B, H, N, N) fp32
        hidden = None
        if causal:
            hidden = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(diagonal=1)  # j > i
        if key_padding_mask is not None:
            padded = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, N)
            hidden = padded if hidden is None else hidden | padded
        if hidden is not None:
            scores = scores.masked_fill(hidden, torch.finfo(torch.float32).min)
        weights = torch.softmax(scores, dim=-1).to(q.dtype)
        return weights @ v
