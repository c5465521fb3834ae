"""`hedgehog`: Hedgehog, learnable exp feature maps mimicking softmax (Zhang et al. 2024, ICLR).

phi(x) = [exp(W x + b), exp(-(W x + b))] per head (W: (F, d) identity-initialised, b: (F,) zero,
D = 2F), or LoLCATs' [softmax(W x + b), softmax(-(W x + b))]; then linear attention with phi, or with
`window: W` > 0 the LoLCATs hybrid: exact softmax scores in a sliding window and phi scores outside it
under one normalizer (see naive.py for the definition, window_linear/chunked.py for the blocked form).
Impls:
    chunked : chunked.hedgehog_attention_chunked in PyTorch (any device), blocks of `chunk` tokens
    fla     : fla.hedgehog_attention_fla, fla-core's chunked kernel; CUDA, bf16, causal, window 0
Parameters are fp32; inputs of any dtype are computed in fp32 and the output cast back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from attentions.hedgehog.chunked import hedgehog_attention_chunked
from attentions.hedgehog.features import FEATURE_MAPS, init_hedgehog_params
from attentions.hedgehog.fit import fit_hedgehog
from attentions.window_linear.cost import hybrid_flops
from harness.measure.costs import by_mode, chunk_sizes, element_bytes, io_bytes_for_mode, matmul_flops
from harness.plugins.contract import (
    AttentionVariant,
    Capabilities,
    FitResult,
    FitSpec,
    Problem,
    Teacher,
    Tolerance,
)

FLA_CHUNK = 64  # chunk_simple_gla's chunk size
FLA_MAX_FEATURES = 256  # D = 2F: fla's chunked kernels keep a (D, BV) state tile per program
FP32_BYTES = 4


def _int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"hedgehog param {name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class HedgehogParams:
    """feature_dim F (None: the head dim, W square as in the paper); D = 2F features per token."""

    feature_dim: int | None = None
    feature_map: str = "exp"  # "exp": the paper's [exp(u), exp(-u)]; "softmax": LoLCATs' two softmaxes
    window: int = 0  # sliding-window width of the exact-softmax part (0: plain linear attention)
    chunk: int = 64  # token block of the chunked impl

    def __post_init__(self) -> None:
        if self.feature_dim is not None:
            _int("feature_dim", self.feature_dim, 1)
        _int("window", self.window, 0)
        _int("chunk", self.chunk, 1)
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"hedgehog param feature_map must be one of {FEATURE_MAPS}, got {self.feature_map!r}"
            )


def _features(params: HedgehogParams, head_dim: int) -> int:
    return params.feature_dim if params.feature_dim is not None else head_dim


class HedgehogAttention(AttentionVariant):
    """Hedgehog with learnable per-head W, b, distilled to softmax by `fit`."""

    name: ClassVar[str] = "hedgehog"
    version: ClassVar[int] = 1
    paper: ClassVar[str] = (
        "Zhang, Bhatia, Kumbong, Re 2024, The Hedgehog & the Porcupine: Expressive Linear Attentions "
        "with Softmax Mimicry, ICLR 2024, arXiv:2402.04347 (window hybrid: Zhang et al. 2024, LoLCATs, "
        "arXiv:2410.10254)"
    )
    reference_impl: ClassVar[str] = (
        "HazyResearch/lolcats src/model/feature_map.py (Exp, SoftmaxDim, FeatureMapMLP) and "
        "src/model/linear_attention/linear_window_attention_sw.py (hybrid_attention_quadratic); "
        "fla-org/flash-linear-attention fla/modules/feature_map.py HedgehogFeatureMap"
    )
    reference: ClassVar[str] = "attentions.hedgehog.naive:reference"
    # Worst relative Frobenius errors measured (conformance inputs, default params; CPU, torch 2.13): chunked
    # fp32 vs naive.py over N 63/1000, d 32..128, causal and not: 4.9e-7 outputs, 1.8e-6 gradients (q, k, v,
    # W, b); bf16 inputs (computed in fp32) vs fp32 on the rounded inputs: 1.6e-3 / 2.4e-3.
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
    }
    Params: ClassVar[type] = HedgehogParams
    impls: ClassVar[tuple[str, ...]] = ("chunked", "fla")
    impl_requires: ClassVar[dict[str, tuple[str, ...]]] = {"fla": ("fla", "triton")}
    capabilities: ClassVar[Capabilities] = Capabilities(learnable=True, masking=True)

    def __init__(
        self,
        params: HedgehogParams,
        impl: str,
        heads: int,
        head_dim: int,
        device: str = "cpu",
        dtype: str = "fp32",
    ) -> None:
        super().__init__(params, impl, heads, head_dim, device, dtype)
        init = init_hedgehog_params(heads, head_dim, _features(params, head_dim))
        self.W = nn.Parameter(init["W"].to(device))  # (H, F, d)
        self.b = nn.Parameter(init["b"].to(device))  # (H, F)
        if params.window > 0:  # LoLCATs' learned balance of the two parts; it would cancel without a window
            self.log_linear_scale = nn.Parameter(torch.zeros(heads, device=device))  # (H,)

    def linear_log_scale(self) -> Tensor | None:
        """The window hybrid's per-head log-weight of the feature scores (H,); None without a window."""
        return self.log_linear_scale if self.params.window > 0 else None

    @classmethod
    def capabilities_for(cls, impl: str) -> Capabilities:
        """fla: CUDA, bf16, causal only, (B, N, H, d)."""
        if impl != "fla":
            return cls.capabilities
        return dataclasses.replace(
            cls.capabilities, devices=("cuda",), dtypes=("bf16",), non_causal=False, layout="bnhd"
        )

    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: HedgehogParams, impl: str) -> list[str]:
        reasons = super().not_supported_reasons(problem, params, impl)
        if impl == "fla" and params.window > 0:
            reasons.append("hedgehog/fla has no sliding-window hybrid kernel (window > 0: use impl chunked)")
        if impl == "fla" and cls.feature_dim(problem, params) > FLA_MAX_FEATURES:
            reasons.append(f"hedgehog/fla supports 2 * feature_dim <= {FLA_MAX_FEATURES}")
        return reasons

    @classmethod
    def feature_dim(cls, problem: Problem, params: HedgehogParams) -> int:
        return 2 * _features(params, problem.head_dim)

    @classmethod
    def state_bytes(cls, problem: Problem, params: HedgehogParams, impl: str) -> float:
        """Per head the fp32 D x d state and D normalizer; with a window also the last W keys and values
        (input dtype) that the exact part reads."""
        D, d = cls.feature_dim(problem, params), problem.head_dim
        window = 2.0 * min(params.window, problem.seq_len) * d * element_bytes(problem)
        return problem.heads * ((D * d + D) * FP32_BYTES + window)

    @classmethod
    def flop_terms(cls, problem: Problem, params: HedgehogParams, impl: str) -> dict[str, float]:
        """Per (batch, head): the projection u = W x for q and k (2 N d F each, backward 2x); attention:
        non-causal window 0 S = phi(K)^T [V, 1] and phi(Q) S (N D (d + 1) each); otherwise the blocked
        pass(es) of window_linear.cost; fla per 64-token chunk q k^T, A [v, 1], q h, k^T [v, 1] (its
        backward recomputes the states). exp/softmax of the features and the masks: elementwise."""
        bh, n, d, F = (
            problem.batch * problem.heads,
            problem.seq_len,
            problem.head_dim,
            _features(params, problem.head_dim),
        )
        D = 2 * F
        feat = 2 * matmul_flops(n, d, F)
        if impl == "fla":
            sizes = chunk_sizes(n, FLA_CHUNK)
            fwd = sum(2 * matmul_flops(c, D, d + 1) + matmul_flops(c, D + d + 1, c) for c in sizes)
            bwd = 2 * fwd + sum(matmul_flops(D, c, d + 1) for c in sizes)
        elif not problem.causal and params.window == 0:
            fwd = 2 * matmul_flops(n, D, d + 1)
            bwd = 2 * fwd
        else:
            fwd, bwd = hybrid_flops(n, D, d, params.window, params.chunk, problem.causal)
        elementwise = 2.0 * n * D * 2 + 3.0 * n * d
        return {
            "feature_matmul": bh * by_mode(problem, feat, 2 * feat),
            "attention_matmul": bh * by_mode(problem, fwd, bwd),
            "elementwise": bh * by_mode(problem, elementwise, 2 * elementwise),
        }

    @classmethod
    def bytes_moved(cls, problem: Problem, params: HedgehogParams, impl: str) -> float:
        """I/O minimum: q, k, v, o (+ dO, dq, dk, dv) and W, b in fp32 (read; in the backward also their
        gradients written)."""
        F = _features(params, problem.head_dim)
        param_bytes = FP32_BYTES * problem.heads * F * (problem.head_dim + 1)
        return io_bytes_for_mode(problem) + {"fwd": 1, "bwd": 2, "fwd_bwd": 3}[problem.mode] * param_bytes

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """chunked: q, k, v (B, H, N, d); fla: (B, N, H, d). key_padding_mask (B, N) bool, True = real.
        Output in q's layout and dtype."""
        p = self.params
        if self.impl == "chunked":
            out = hedgehog_attention_chunked(
                q,
                k,
                v,
                self.W,
                self.b,
                p.feature_map,
                causal,
                p.window,
                p.chunk,
                key_padding_mask,
                self.linear_log_scale(),
            )
            return out.to(q.dtype)
        if self.impl == "fla":
            if not causal or p.window > 0:
                raise ValueError("hedgehog/fla is causal only, without a window (use impl chunked)")
            from attentions.hedgehog.fla import hedgehog_attention_fla  # imports fla on first call

            return hedgehog_attention_fla(q, k, v, self.W, self.b, p.feature_map, key_padding_mask)
        raise ValueError(f"hedgehog has no impl {self.impl!r} (impls: {', '.join(self.impls)})")

    def fit(
        self, calib_batches: Sequence[tuple[Tensor, Tensor, Tensor]], teacher: Teacher, spec: FitSpec
    ) -> FitResult:
        """Distil W, b to the softmax teacher (fit.py): row-wise KL, Adam, fp32, seeded by spec.seed."""
        p = self.params
        scale = self.linear_log_scale()
        return fit_hedgehog(self.W, self.b, p.feature_map, p.window, calib_batches, teacher, spec, scale)
