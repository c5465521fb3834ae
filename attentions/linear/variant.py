"""`linear`: kernelized linear attention, phi(x) = elu(x) + 1 (Katharopoulos et al. 2020).

    non-causal: out = phi(q) (phi(k)^T v) / (phi(q) (phi(k)^T 1) + eps)          O(N D d)
    causal:     the same over keys j <= i, by chunks of `chunk` tokens: a masked
                (chunk x chunk) product inside each chunk plus a carried state
                S = sum phi(k_j) v_j^T (D, d) and normalizer z = sum phi(k_j) (D,)

D = head_dim. Features, state and normalizer are fp32 whatever the input dtype (an fp16
normalizer overflows around N = 8K); the output is cast back to the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attentions.linear.chunked import linear_attention_causal_chunked, linear_attention_noncausal
from attentions.linear.naive import elu_feature_map
from harness.measure.costs import io_bytes_for_mode, scale_for_mode
from harness.plugins.contract import AttentionVariant, Capabilities, Problem

FEATURE_MAP_FLOPS = 3.0  # elu(x) + 1 per element: exp, select, add
FP32_BYTES = 4


@dataclass(frozen=True)
class LinearParams:
    """eps: added to the normalizer (>= 0). chunk: causal block length in tokens (int >= 1)."""

    eps: float = 1e-6
    chunk: int = 128

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, int | float) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"linear: eps must be a finite number >= 0, got {self.eps!r}")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"linear: chunk must be an integer >= 1, got {self.chunk!r}")


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Lengths of the causal chunks covering n tokens (the last one may be shorter)."""
    return [min(chunk, n - start) for start in range(0, n, chunk)]


class LinearAttention(AttentionVariant):
    """Linear attention with elu + 1 features; q, k, v: (B, H, N, d) -> (B, H, N, d)."""

    name = "linear"
    version = 1
    paper = (
        "Katharopoulos et al. 2020, Transformers are RNNs: Fast Autoregressive Transformers "
        "with Linear Attention, arXiv:2006.16236"
    )
    reference_impl = (
        "attentions/linear/naive.py; idiap/fast-transformers LinearAttention / CausalLinearAttention"
    )
    Params = LinearParams
    impls = ("torch",)
    capabilities = Capabilities()
    impl_requires = {}

    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: LinearParams, impl: str) -> list[str]:
        return super().not_supported_reasons(problem, params, impl)

    @classmethod
    def feature_dim(cls, params: LinearParams, problem: Problem) -> int | None:
        return problem.head_dim

    @classmethod
    def flops(cls, problem: Problem, params: LinearParams) -> float:
        """Per (batch, head) forward, D = d:

        features 2 * 3 N d; non-causal 4 N D d (phi(k)^T v, phi(q) S) + 3 N D + 2 N d (normalizer,
        eps, divide); causal adds per chunk of c tokens the masked c x c products 2 c^2 (D + d) + c^2
        and the state update (D d + D). Backward: 2x forward.
        """
        n, d = problem.seq_len, problem.head_dim
        D = cls.feature_dim(params, problem)
        fwd = 2 * FEATURE_MAP_FLOPS * n * d + 4.0 * n * D * d + 3.0 * n * D + 2.0 * n * d
        if problem.causal:
            sizes = chunk_sizes(n, params.chunk)
            fwd += sum(c * c for c in sizes) * (2.0 * (D + d) + 1.0) + len(sizes) * (D * d + D)
        return scale_for_mode(problem.batch * problem.heads * fwd, problem, bwd_factor=2.0)

    @classmethod
    def bytes_moved(cls, problem: Problem, params: LinearParams) -> float:
        """q, k, v, o (and grads) + fp32 features phi(q), phi(k) written and read once + the fp32
        state (S, z) written and read once (causal: once per chunk) + causal c x c weights; backward
        moves the non-IO part twice.
        """
        n, d = problem.seq_len, problem.head_dim
        D = cls.feature_dim(params, problem)
        state = (D * d + D) * 2
        extra = 4.0 * n * D  # phi(q), phi(k): write + read
        if problem.causal:
            sizes = chunk_sizes(n, params.chunk)
            extra += len(sizes) * state + sum(c * c for c in sizes) * 2
        else:
            extra += state
        per_head = extra * FP32_BYTES * {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}[problem.mode]
        return io_bytes_for_mode(problem) + problem.batch * problem.heads * per_head

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """q, k, v: (B, H, N, d) -> (B, H, N, d), same dtype as q."""
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        phi_q = elu_feature_map(q.to(acc))  # (B, H, N, D)
        phi_k = elu_feature_map(k.to(acc))
        if causal:
            out = linear_attention_causal_chunked(phi_q, phi_k, v, self.params.eps, self.params.chunk)
        else:
            out = linear_attention_noncausal(phi_q, phi_k, v, self.params.eps)
        return out.to(q.dtype)
