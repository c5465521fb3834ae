"""`performer`: FAVOR+ positive orthogonal random features (Choromanski et al. 2021).

    phi(x) = M^(-1/2) exp(W x' - |x'|^2 / 2),  x' = x d^(-1/4),  W: (M, d) orthogonal Gaussian rows
    out    = phi(q) (phi(k)^T v) / (phi(q) phi(k)^T 1 + eps)        (keys j <= i when causal)

impls:
    native   this repo's FAVOR+ (attentions/performer/favor.py): fp32 features, state and
             normalizer; causal by chunks with a running key stabilizer (no future leak).
    package  performer-pytorch's `FastAttention(dim_heads=d, nb_features=M, causal=...)`,
             untouched: it scales by d^(-1/4) itself, runs in the input dtype, and in causal
             mode (1) uses the slow pure-PyTorch loop unless the fast-transformers CUDA
             extension imports, reported by `info()["causal_path"]`, and (2) stabilizes keys
             with a max over the whole sequence, which leaks the future (upstream issue #82):
             left as is, so the harness's causality check measures it. It also adds a fixed
             eps = 1e-4 to every stabilized feature (`softmax_kernel`), which pulls its output
             towards uniform attention once typical keys sit far below the sequence-wide max
             (input scale ~1 and above): its error then looks like the uniform floor, not like
             FAVOR+ (README.md, "What differs"). `eps` and `chunk` are native-only params.

W is drawn once at construction from `seed` (no redraw), independent of the global RNG.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attentions.performer.favor import (
    favor_causal_chunked,
    favor_noncausal,
    feature_logits,
    orthogonal_gaussian_features,
)
from harness.measure.costs import io_bytes_for_mode, scale_for_mode
from harness.plugins.contract import AttentionVariant, Capabilities, Problem

FP32_BYTES = 4


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class PerformerParams:
    """features: M random features (>= 1). seed: the draw of W (>= 0). chunk: causal block
    length of the native impl (>= 1). eps: added to the native normalizer (finite, >= 0).

    eps defaults to 0, as in the paper: FAVOR+ features are positive exponentials, so the
    normalizer is > 0 unless every term underflows (then the row is NaN, recorded, not hidden).
    The stabilized normalizer has an arbitrary per-query scale (down to ~1e-10 for inputs of
    std 2), so an absolute eps biases the output: eps = 1e-6 moves it by up to ~4e-2 relative
    (d = 128, N = 63, std 1) from the estimator it computes.
    """

    features: int = 256
    seed: int = 0
    eps: float = 0.0
    chunk: int = 128

    def __post_init__(self) -> None:
        if not _is_int(self.features) or self.features < 1:
            raise ValueError(f"performer: features must be an integer >= 1, got {self.features!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"performer: seed must be an integer >= 0, got {self.seed!r}")
        if not (isinstance(self.eps, int | float) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"performer: eps must be a finite number >= 0, got {self.eps!r}")
        if not _is_int(self.chunk) or self.chunk < 1:
            raise ValueError(f"performer: chunk must be an integer >= 1, got {self.chunk!r}")


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Lengths of the causal chunks covering n tokens (the last one may be shorter)."""
    return [min(chunk, n - start) for start in range(0, n, chunk)]


def package_projection(features: int, dim: int, seed: int) -> Tensor:
    """performer-pytorch's own W draw (`gaussian_orthogonal_random_matrix`, scaling 0), seeded.

    Drawn from torch's CPU generator inside `fork_rng`, so the caller's RNG state is untouched.
    """
    from performer_pytorch.performer_pytorch import gaussian_orthogonal_random_matrix

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return gaussian_orthogonal_random_matrix(features, dim, scaling=0)


class PerformerAttention(AttentionVariant):
    """FAVOR+ attention; q, k, v: (B, H, N, d) -> (B, H, N, d)."""

    name = "performer"
    version = 1
    paper = "Choromanski et al. 2021, Rethinking Attention with Performers, ICLR 2021, arXiv:2009.14794"
    reference_impl = "performer-pytorch 1.1.4 (lucidrains/performer-pytorch) FastAttention"
    Params = PerformerParams
    impls = ("native", "package")
    capabilities = Capabilities()
    impl_requires = {"package": ("performer_pytorch",)}

    def __init__(self, params: PerformerParams, impl: str, problem: Problem) -> None:
        super().__init__(params, impl, problem)
        M, d = params.features, problem.head_dim
        if impl == "native":
            W = orthogonal_gaussian_features(M, d, torch.Generator().manual_seed(params.seed))
        elif impl == "package":
            W = package_projection(M, d, params.seed)
        else:
            raise ValueError(f"performer has no impl {impl!r} (impls: {', '.join(self.impls)})")
        self.register_buffer("projection", W.to(problem.device))  # (M, d) fp32
        self._package: dict[bool, Any] = {}  # causal flag -> FastAttention (package impl)
        self._package_notes: list[str] = []
        if impl == "package":
            self._package_module(problem.causal)

    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: PerformerParams, impl: str) -> list[str]:
        reasons = super().not_supported_reasons(problem, params, impl)
        if impl == "package" and params.eps != 0:
            reasons.append(
                f"performer/package fixes its own eps (1e-4 added to every feature); "
                f"eps={params.eps:g} applies to the native impl only"
            )
        return reasons

    # ----- cost model -----------------------------------------------------------------------
    @classmethod
    def feature_dim(cls, params: PerformerParams, problem: Problem) -> int | None:
        return params.features

    @classmethod
    def flops(cls, problem: Problem, params: PerformerParams) -> float:
        """Per (batch, head) forward, D = M features: feature logits 2 N D d for q and for k
        (+ 2 N d for |x'|^2, 2 N D for exp and stabilizer); attention 4 N D d (phi(k)^T v, phi(q) S)
        + 4 N D (normalizer) + 2 N d (divide); causal adds per chunk of c tokens the masked c x c
        products 2 c^2 (D + d) and the state rescale (D d + D). Backward: 2x forward.
        """
        n, d, D = problem.seq_len, problem.head_dim, params.features
        fwd = 2 * (2.0 * n * D * d + 2.0 * n * d + 2.0 * n * D)
        fwd += 4.0 * n * D * d + 4.0 * n * D + 2.0 * n * d
        if problem.causal:
            sizes = chunk_sizes(n, params.chunk)
            fwd += sum(c * c for c in sizes) * 2.0 * (D + d) + len(sizes) * (D * d + D)
        return scale_for_mode(problem.batch * problem.heads * fwd, problem, bwd_factor=2.0)

    @classmethod
    def bytes_moved(cls, problem: Problem, params: PerformerParams) -> float:
        """q, k, v, o (and grads) + W + fp32 features phi(q), phi(k) written and read once + the
        state (S, z) once (causal: once per chunk, plus the c x c weights); backward moves the
        non-IO part twice.
        """
        n, d, D = problem.seq_len, problem.head_dim, params.features
        state = (D * d + D) * 2
        extra = 4.0 * n * D
        if problem.causal:
            sizes = chunk_sizes(n, params.chunk)
            extra += len(sizes) * state + sum(c * c for c in sizes) * 2
        else:
            extra += state
        per_head = extra * FP32_BYTES * {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}[problem.mode]
        return io_bytes_for_mode(problem) + problem.batch * problem.heads * per_head + D * d * FP32_BYTES

    # ----- forward ----------------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """q, k, v: (B, H, N, d) -> (B, H, N, d), same dtype as q."""
        if self.impl == "package":
            return self._package_forward(q, k, v, causal).to(q.dtype)
        u_q, u_k = feature_logits(q, self.projection), feature_logits(k, self.projection)
        if causal:
            out = favor_causal_chunked(u_q, u_k, v, self.params.eps, self.params.chunk)
        else:
            out = favor_noncausal(u_q, u_k, v, self.params.eps)
        return out.to(q.dtype)

    def _package_forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        fast = self._package_module(causal)
        fast.projection_matrix = self.projection  # the buffer on this module's device
        return fast(q, k, v)

    def _package_module(self, causal: bool) -> Any:
        """FastAttention for `causal`, built on first use; its stdout notice is kept for `info`."""
        if causal not in self._package:
            from performer_pytorch.performer_pytorch import FastAttention

            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                fast = FastAttention(
                    dim_heads=self.problem.head_dim, nb_features=self.params.features, causal=causal
                )
            if printed.getvalue().strip():
                self._package_notes.append(printed.getvalue().strip())
            self._package[causal] = fast
        return self._package[causal]

    def info(self) -> dict[str, Any]:
        """Package impl in causal mode: which causal path performer-pytorch took."""
        if self.impl != "package" or True not in self._package:
            return {}
        from performer_pytorch import performer_pytorch as pp

        fn = self._package[True].causal_linear_fn
        if fn is pp.causal_linear_attention_noncuda:
            path = "pure_pytorch_fallback"
        elif isinstance(fn, functools.partial) and fn.func is pp.causal_linear_attention:
            path = "fast_transformers_cuda"
        else:
            path = f"unrecognized: {fn!r}"
        facts: dict[str, Any] = {"causal_path": path}
        if self._package_notes:
            facts["package_notice"] = " | ".join(self._package_notes)
        return facts
