"""`softmax`: exact scaled dot-product attention in plain PyTorch, the accuracy reference.

    scores = q k^T / sqrt(d)          matmul in the input dtype, scaled and masked in fp32
    P      = softmax(scores)          in fp32, then cast to the input dtype
    out    = P v                      matmul in the input dtype -> (B, H, N, d)

The N x N score matrix is materialized, so memory grows as N^2: this is the baseline every
efficient variant is measured against, not a fast path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from harness.measure.costs import causal_fraction, element_bytes, io_bytes_for_mode, scale_for_mode
from harness.plugins.contract import AttentionVariant, Capabilities, NoParams, Problem

# N x N elements moved per (batch, head), for an implementation that materializes the matrix:
# forward writes and reads S, then writes and reads P (4); backward reads P for dV, writes dP,
# reads P and dP and writes dS, then reads dS for dQ and for dK (7).
SCORE_PASSES = {"fwd": 4, "bwd": 7, "fwd_bwd": 11}


class SoftmaxAttention(AttentionVariant):
    """Exact softmax attention; q, k, v: (B, H, N, d) -> (B, H, N, d) in the input dtype."""

    name = "softmax"
    version = 1
    paper = "Vaswani et al. 2017, Attention Is All You Need, arXiv:1706.03762"
    reference_impl = "attentions/softmax/naive.py; torch SDPA math backend (SDPBackend.MATH)"
    Params = NoParams
    impls = ("torch",)
    capabilities = Capabilities(exact=True)
    impl_requires = {}

    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: NoParams, impl: str) -> list[str]:
        return super().not_supported_reasons(problem, params, impl)

    @classmethod
    def feature_dim(cls, params: NoParams, problem: Problem) -> int | None:
        return None

    @classmethod
    def flops(cls, problem: Problem, params: NoParams) -> float:
        """4 N^2 d per (batch, head) forward (q k^T and P v), x ~1/2 causal; backward 2x.

        Causal counts the useful half only; this implementation computes the masked half too.
        """
        n, d = problem.seq_len, problem.head_dim
        fwd = problem.batch * problem.heads * 4.0 * n * n * d * causal_fraction(problem)
        return scale_for_mode(fwd, problem, bwd_factor=2.0)

    @classmethod
    def bytes_moved(cls, problem: Problem, params: NoParams) -> float:
        """q, k, v, o (and grads) plus the materialized N x N matrices (full N^2 even if causal)."""
        n = problem.seq_len
        scores = problem.batch * problem.heads * n * n * SCORE_PASSES[problem.mode] * element_bytes(problem)
        return io_bytes_for_mode(problem) + scores

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """q, k, v: (B, H, N, d) -> (B, H, N, d), same dtype as q."""
        n, d = q.shape[-2], q.shape[-1]
        scores = (q @ k.transpose(-1, -2)).float() * (1.0 / math.sqrt(d))  # (B, H, N, N) fp32
        if causal:
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = torch.softmax(scores, dim=-1).to(q.dtype)
        return weights @ v
