"""`linear`: kernelized linear attention, phi(x) = elu(x) + 1 (Katharopoulos et al. 2020).

    non-causal: out = phi(q) (phi(k)^T v) / (phi(q) (phi(k)^T 1) + eps)          O(N D d)
    causal:     the same over keys j <= i, by chunks of `chunk` tokens: a masked
                (chunk x chunk) product inside each chunk plus a carried state
                S = sum phi(k_j) v_j^T (D, d) and normalizer z = sum phi(k_j) (D,)

D = head_dim. Features, state and normalizer are fp32 whatever the input dtype (an fp16
normalizer overflows around N = 8K); the output is cast back to the input dtype. A key-padding
mask zeroes phi(k) of padded keys, so they add nothing to S or z. Impls:

    torch  the above in PyTorch (chunk = params.chunk), (B, H, N, d)
    fla    causal only, CUDA, fp16/bf16: the numerator sum_{j<=i} (phi(q_i) . phi(k_j)) v_j from
           fla-core's chunked kernel (`fla.ops.linear_attn.chunk_linear_attn`, normalize=False,
           scale=1, 64-token chunks) on phi(q), phi(k) computed here in fp32 and passed in the input
           dtype; the denominator phi(q_i) . sum_{j<=i} phi(k_j) + eps in fp32 here (fla's own
           normalize adds 1e-10, not eps, and keeps the key cumsum in the input dtype, which
           overflows fp16 past ~64K tokens). (B, N, H, d), fla's layout. fla has no non-causal
           kernel (non-causal linear attention is two GEMMs: impl torch).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attentions.linear.chunked import (
    elu_feature_map,
    linear_attention_causal_chunked,
    linear_attention_noncausal,
)
from harness.measure.costs import (
    by_mode,
    causal_chunked_matmul_flops,
    chunk_sizes,
    io_bytes_for_mode,
    matmul_flops,
)
from harness.plugins.contract import AttentionVariant, Capabilities, Problem, Tolerance

FEATURE_MAP_FLOPS = 3.0  # elu(x) + 1 per element: exp, select, add
FLA_CHUNK = 64  # fla's chunk_simple_gla chunk_size (its default, which chunk_linear_attn uses)
FLA_CAUSAL_ONLY = "linear/fla: fla.ops.linear_attn has causal kernels only (non-causal: impl torch)"
FLA_DTYPES = ("fp16", "bf16")  # fp32 would run fla's tl.dot in tf32 (Triton's default): not fp32 accuracy
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
    reference = "attentions.linear.naive:reference"
    # Worst relative Frobenius errors measured (conformance inputs; CPU, torch 2.13): fp32 vs naive.py
    # over N 63/1000, d 32..128, causal and not: 4.1e-7 outputs, 1.1e-6 gradients; bf16 vs fp32 on
    # the rounded inputs (N 63, d 64): 1.6e-3 / 2.4e-3 (tests/test_linear.py: N 1..1000, chunks 1..1000).
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
    }
    Params = LinearParams
    impls = ("torch", "fla")
    capabilities = Capabilities(masking=True)
    impl_requires = {"fla": ("fla",)}

    @classmethod
    def capabilities_for(cls, impl: str) -> Capabilities:
        """fla: CUDA, fp16/bf16, causal only, (B, N, H, d)."""
        if impl != "fla":
            return cls.capabilities
        return dataclasses.replace(
            cls.capabilities, devices=("cuda",), dtypes=FLA_DTYPES, non_causal=False, layout="bnhd"
        )

    @classmethod
    def feature_dim(cls, problem: Problem, params: LinearParams) -> int | None:
        return problem.head_dim

    @classmethod
    def state_bytes(cls, problem: Problem, params: LinearParams, impl: str) -> float | None:
        """The fp32 state S (D x d) and normalizer z (D) per head, D = d."""
        D = cls.feature_dim(problem, params)
        return float(problem.heads * (D * problem.head_dim + D) * 4)

    @classmethod
    def flop_terms(cls, problem: Problem, params: LinearParams, impl: str) -> dict[str, float]:
        """Per (batch, head), D = d. Matmuls: non-causal phi(k)^T v and phi(q) S (N D d each) and
        phi(q) z (N D), backward 2x; causal by chunks as `costs.causal_chunked_matmul_flops` counts
        them (block 0 reads a zero state, the last block's update is unused). Elementwise: features
        2 * 3 N d, normalizer, eps, divide 3 N D + 2 N d, causal c^2 per chunk and the state update
        D d + D, the mask N D; backward about 2x."""
        bh, n, d = problem.batch * problem.heads, problem.seq_len, problem.head_dim
        D = cls.feature_dim(problem, params)
        elementwise = 2 * FEATURE_MAP_FLOPS * n * d + 3.0 * n * D + 2.0 * n * d
        elementwise += n * D if problem.masked else 0
        if problem.causal and impl == "fla":  # per chunk: q k^T, A v, q h, k^T v; no normalizer product
            sizes = chunk_sizes(n, FLA_CHUNK)
            fwd = sum(2 * matmul_flops(c, D, d) + matmul_flops(c, D + d, c) for c in sizes)
            bwd = 2 * fwd + sum(matmul_flops(D, c, d) for c in sizes)  # its backward recomputes the states
            elementwise += sum(c * c for c in sizes) + 2.0 * n * D  # masks; the key cumsum and den dot
        elif problem.causal:
            sizes = chunk_sizes(n, params.chunk)
            fwd, bwd = causal_chunked_matmul_flops(sizes, D, d)
            elementwise += sum(c * c for c in sizes) + len(sizes) * (D * d + D)
        else:
            fwd = 2 * matmul_flops(n, D, d) + matmul_flops(n, D, 1)
            bwd = 2 * fwd
        return {
            "attention_matmul": bh * by_mode(problem, fwd, bwd),
            "elementwise": bh * by_mode(problem, elementwise, 2 * elementwise),
        }

    @classmethod
    def bytes_moved(cls, problem: Problem, params: LinearParams, impl: str) -> float:
        """q, k, v, o (and grads) + fp32 features phi(q), phi(k) written and read once + the fp32
        state (S, z) written and read once (causal: once per chunk) + causal c x c weights; backward
        moves the non-IO part twice.
        """
        n, d = problem.seq_len, problem.head_dim
        D = cls.feature_dim(problem, params)
        state = (D * d + D) * 2
        extra = 4.0 * n * D  # phi(q), phi(k): write + read
        if problem.causal:
            sizes = chunk_sizes(n, FLA_CHUNK if impl == "fla" else params.chunk)
            extra += len(sizes) * state + sum(c * c for c in sizes) * 2
        else:
            extra += state
        per_head = extra * FP32_BYTES * {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}[problem.mode]
        return io_bytes_for_mode(problem) + problem.batch * problem.heads * per_head

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """q, k, v: (B, H, N, d); key_padding_mask (B, N) bool, True = real -> (B, H, N, d), q's dtype."""
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        phi_q = elu_feature_map(q.to(acc))  # (B, H, N, D)
        phi_k = elu_feature_map(k.to(acc))
        if self.impl == "fla":
            return self._fla(phi_q, phi_k, v, causal, key_padding_mask)
        if key_padding_mask is not None:
            phi_k = phi_k * key_padding_mask[:, None, :, None].to(acc)  # padded keys: phi = 0
        if causal:
            out = linear_attention_causal_chunked(phi_q, phi_k, v, self.params.eps, self.params.chunk)
        else:
            out = linear_attention_noncausal(phi_q, phi_k, v, self.params.eps)
        return out.to(q.dtype)

    def _fla(self, phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool, mask: Tensor | None) -> Tensor:
        """fla's chunked kernel for the numerator, the denominator here. phi_q, phi_k: (B, N, H, D) fp32
        features, v (B, N, H, d); mask (B, N) bool -> (B, N, H, d) in v's dtype."""
        if not causal:
            raise ValueError(FLA_CAUSAL_ONLY)
        if mask is not None:
            phi_k = phi_k * mask[:, :, None, None].to(phi_k.dtype)  # padded keys: phi = 0
        kernel = importlib.import_module("fla.ops.linear_attn").chunk_linear_attn
        num, _ = kernel(phi_q.to(v.dtype), phi_k.to(v.dtype), v, scale=1.0, normalize=False)
        den = (phi_q * phi_k.cumsum(dim=1)).sum(dim=-1, keepdim=True) + self.params.eps  # (B, N, H, 1)
        return (num.float() / den).to(v.dtype)
