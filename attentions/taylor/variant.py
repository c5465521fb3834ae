"""`taylor`: linear attention with the second-order Taylor map of exp (Based; QT-ViT).

    q', k' = q, k  (proj_dim 0)  or  q P, k P  (P: d x d' fixed, N(0, 1/d') entries, seeded)
    phi(x) = [1, x, vec(x x^T)/sqrt(2)] on x = q' d^-1/4, k' d^-1/4        D = 1 + d' + d'^2
    phi(q).phi(k) = 1 + s + s^2/2,  s = q'.k'/sqrt(d)
    out_i = sum_j (1 + s_ij + s_ij^2/2) v_j / (sum_j (1 + s_ij + s_ij^2/2) + eps)

1 + s + s^2/2 >= 1/2 for every s, so the weights are positive without a stabiliser. The random
projection is a Johnson-Lindenstrauss map (E[q'.k'] = q.k), so s estimates the exact score and
the scale stays 1/sqrt(d) of the head dim; Based learns its projection to d' = 16 (here: fixed,
set by `seed`). Features, state and normalizer are fp32 whatever the input dtype. Impls:

    torch         chunked.py: non-causal phi(q) (phi(k)^T v); causal by blocks of `chunk` tokens
                  (masked c x c weights from q' k'^T + carried fp32 state (D, d) and normalizer).
                  (B, H, N, d), key-padding mask (padded keys: phi(k) = 0, weights 0).
    fla           fla-core `fla.ops.based.fused_chunk_based` (Based's linear-time kernel): causal,
                  CUDA, fp16/bf16, feature dim d' <= 16 (its kernel's limit), eps = 1e-6 (fixed
                  in fla's normalization), no mask. (B, N, H, d).
    fla_parallel  fla-core `fla.ops.based.parallel_based`: the same function by a quadratic
                  (N^2) tiled kernel, d' <= 128; same limits otherwise.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attentions.taylor.chunked import taylor_causal_chunked, taylor_noncausal
from harness.measure.costs import by_mode, chunk_sizes, io_bytes_for_mode, matmul_flops
from harness.plugins.contract import AttentionVariant, Capabilities, Problem, Tolerance, check_no_mask

FLA_IMPLS = ("fla", "fla_parallel")
FLA_DTYPES = ("fp16", "bf16")  # fp32 would run fla's tl.dot in tf32: not fp32 accuracy
FLA_EPS = 1e-6  # fla.ops.based adds 1e-6 to its normalizer
FLA_MAX_FEATURE = {"fla": 16, "fla_parallel": 128}  # fused_chunk_based asserts <= 16, parallel <= 128
FLA_CHUNK = 16  # fused_chunk_based's BT
FP32_BYTES = 4
WEIGHT_FLOPS = 4.0  # 1 + s + s^2/2 per score: square, two adds, a multiply


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class TaylorParams:
    """proj_dim: d', the dimension q and k are projected to before the map (0 = none: d' = d;
    Based uses 16). seed: the draw of the fixed projection. eps: added to the normalizer (>= 0;
    the fla impls need 1e-6). chunk: causal block length of the torch impl (>= 1)."""

    proj_dim: int = 0
    seed: int = 0
    eps: float = 1e-6
    chunk: int = 128

    def __post_init__(self) -> None:
        if not _is_int(self.proj_dim) or self.proj_dim < 0:
            raise ValueError(
                f"taylor: proj_dim must be an integer >= 0 (0 = no projection), got {self.proj_dim!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"taylor: seed must be an integer >= 0, got {self.seed!r}")
        if not (isinstance(self.eps, int | float) and not isinstance(self.eps, bool)) or not (
            math.isfinite(self.eps) and self.eps >= 0
        ):
            raise ValueError(f"taylor: eps must be a finite number >= 0, got {self.eps!r}")
        if not _is_int(self.chunk) or self.chunk < 1:
            raise ValueError(f"taylor: chunk must be an integer >= 1, got {self.chunk!r}")


def map_dim(head_dim: int, params: TaylorParams) -> int:
    """d', the dimension the Taylor map acts on."""
    return params.proj_dim or head_dim


def random_projection(head_dim: int, proj_dim: int, seed: int) -> Tensor:
    """P (d, d') with N(0, 1/d') entries from a private generator (leaves torch's global RNG alone):
    E[(q P) . (k P)] = q . k."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(head_dim, proj_dim, generator=gen) / math.sqrt(proj_dim)


class TaylorAttention(AttentionVariant):
    """Second-order Taylor linear attention; q, k, v: (B, H, N, d) (torch) or (B, N, H, d) (fla)."""

    name = "taylor"
    version = 1
    paper = (
        "Arora et al. 2024, Simple linear attention language models balance the recall-throughput "
        "tradeoff (Based), arXiv:2402.18668; QT-ViT: Improving Linear Attention in ViT with Quadratic "
        "Taylor Expansion (the same second-order map)"
    )
    reference_impl = (
        "attentions/taylor/naive.py; the Zoology/Based TaylorExp feature map (HazyResearch); "
        "fla-org/flash-linear-attention fla/modules/feature_map.py (TaylorFeatureMap) and "
        "fla/ops/based/naive.py (naive_parallel_based)"
    )
    reference = "attentions.taylor.naive:reference"
    # Worst relative Frobenius errors measured (conformance inputs; CPU, torch 2.13): fp32 vs naive.py
    # over N 63/1000, d 32..128, causal and not: 6.8e-7 outputs, 6.5e-7 gradients; bf16 vs fp32 on the
    # rounded inputs (N 63, d 64): 1.7e-3 / 2.4e-3 (fp16 2.1e-4 / 3.0e-4, not declared: fla's fp16 kernels
    # are unmeasured here).
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
    }
    Params = TaylorParams
    impls = ("torch", *FLA_IMPLS)
    capabilities = Capabilities(masking=True)
    impl_requires = {"fla": ("fla",), "fla_parallel": ("fla",)}

    def __init__(
        self,
        params: TaylorParams,
        impl: str,
        heads: int,
        head_dim: int,
        device: str = "cpu",
        dtype: str = "fp32",
    ) -> None:
        super().__init__(params, impl, heads, head_dim, device, dtype)
        projection = random_projection(head_dim, params.proj_dim, params.seed) if params.proj_dim else None
        self.register_buffer("projection", None if projection is None else projection.to(device))

    @classmethod
    def draws_at_random(cls, params: TaylorParams) -> bool:
        """Only the projection (proj_dim > 0) is drawn, from `seed`; proj_dim 0 is deterministic."""
        return params.proj_dim > 0

    @classmethod
    def capabilities_for(cls, impl: str) -> Capabilities:
        """fla impls: CUDA, fp16/bf16, causal only, no mask, (B, N, H, d)."""
        if impl not in FLA_IMPLS:
            return cls.capabilities
        return dataclasses.replace(
            cls.capabilities,
            devices=("cuda",),
            dtypes=FLA_DTYPES,
            non_causal=False,
            masking=False,
            layout="bnhd",
        )

    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: TaylorParams, impl: str) -> list[str]:
        reasons = super().not_supported_reasons(problem, params, impl)
        if impl in FLA_IMPLS:
            e, limit = map_dim(problem.head_dim, params), FLA_MAX_FEATURE[impl]
            if e > limit:
                reasons.append(
                    f"taylor/{impl} supports a feature dim d' <= {limit} (fla.ops.based), not {e}: "
                    "set proj_dim"
                )
            if params.eps != FLA_EPS:
                reasons.append(
                    f"taylor/{impl} adds fla's fixed eps {FLA_EPS:g} to the normalizer, not {params.eps:g}"
                )
        return reasons

    @classmethod
    def feature_dim(cls, problem: Problem, params: TaylorParams) -> int | None:
        e = map_dim(problem.head_dim, params)
        return 1 + e + e * e

    @classmethod
    def state_bytes(cls, problem: Problem, params: TaylorParams, impl: str) -> float | None:
        """The fp32 state S (D x d) and normalizer z (D) per head, D = 1 + d' + d'^2."""
        D = cls.feature_dim(problem, params)
        return float(problem.heads * (D * problem.head_dim + D) * FP32_BYTES)

    @classmethod
    def flop_terms(cls, problem: Problem, params: TaylorParams, impl: str) -> dict[str, float]:
        """Per (batch, head), e = d', D = 1 + e + e^2. Projection q P, k P: 2 N d e each, backward one
        product each (P is fixed). Non-causal: phi(k)^T v, phi(q) S (N D d each), phi(q) z (N D),
        backward 2x. Causal, per block of c: q' k'^T (c e c), weights @ v (c c d), state reads
        phi(q) S and phi(q) z, update phi(k)^T v; backward 2 products each except block 0's reads
        of the zero state (1) and the last block's unused update (0). fla: the same chunked
        products at its 16-token blocks (fused_chunk) or the masked quadratic (parallel), backward
        about 2x. Elementwise: the maps (D + e per token for q and k), WEIGHT_FLOPS per score and
        the normalizer, backward about 2x."""
        bh, n, d = problem.batch * problem.heads, problem.seq_len, problem.head_dim
        e = map_dim(d, params)
        D = 1 + e + e * e
        fwd = bwd = 0.0
        if params.proj_dim:
            fwd += 2 * matmul_flops(n, d, e)
            bwd += 2 * matmul_flops(n, d, e)
        elementwise = 2.0 * n * (D + e) + 3.0 * n * d
        if impl == "fla_parallel":
            pairs = n * (n + 1) / 2
            fwd += 2.0 * pairs * (e + d)
            bwd += 2 * 2.0 * pairs * (e + d)
            elementwise += WEIGHT_FLOPS * pairs
        elif problem.causal:
            sizes = chunk_sizes(n, FLA_CHUNK if impl == "fla" else params.chunk)
            last = len(sizes) - 1
            for b, c in enumerate(sizes):
                local = matmul_flops(c, e, c) + matmul_flops(c, c, d)
                reads = matmul_flops(c, D, d) + matmul_flops(c, D, 1)
                update = matmul_flops(D, c, d)
                fwd += local + reads + update
                bwd += 2 * local + (1 if b == 0 else 2) * reads + (0 if b == last else 2) * update
                elementwise += (WEIGHT_FLOPS + 1) * c * c + D * d + D
        else:
            fwd += 2 * matmul_flops(n, D, d) + matmul_flops(n, D, 1)
            bwd += 2 * (2 * matmul_flops(n, D, d) + matmul_flops(n, D, 1))
        return {
            "attention_matmul": bh * by_mode(problem, fwd, bwd),
            "elementwise": bh * by_mode(problem, elementwise, 2 * elementwise),
        }

    @classmethod
    def bytes_moved(cls, problem: Problem, params: TaylorParams, impl: str) -> float:
        """q, k, v, o (and grads) + P + fp32 features phi(q), phi(k) written and read once (torch)
        + the fp32 state (S, z) written and read once (causal: once per block) + causal c x c
        weights; backward moves the non-IO part twice."""
        n, d = problem.seq_len, problem.head_dim
        e = map_dim(d, params)
        D = 1 + e + e * e
        state = (D * d + D) * 2
        extra = 0.0 if impl in FLA_IMPLS else 4.0 * n * D
        if impl == "fla_parallel":
            extra = 0.0
        elif problem.causal:
            sizes = chunk_sizes(n, FLA_CHUNK if impl == "fla" else params.chunk)
            extra += len(sizes) * state + (0 if impl == "fla" else sum(c * c for c in sizes) * 2)
        else:
            extra += state
        per_head = extra * FP32_BYTES * {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}[problem.mode]
        projection = d * e * FP32_BYTES if params.proj_dim else 0.0
        return io_bytes_for_mode(problem) + problem.batch * problem.heads * per_head + projection

    def _map_inputs(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q', k' in fp32 (fp64 for fp64 inputs), projected when proj_dim > 0. (..., d) -> (..., d')."""
        acc = torch.promote_types(q.dtype, torch.float32)
        q, k = q.to(acc), k.to(acc)
        if self.projection is not None:
            P = self.projection.to(acc)
            q, k = q @ P, k @ P
        return q, k

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """torch: (B, H, N, d) -> (B, H, N, d); fla impls: (B, N, H, d) -> (B, N, H, d); q's dtype."""
        if self.impl in FLA_IMPLS:
            return self._fla(q, k, v, causal, key_padding_mask)
        xq, xk = self._map_inputs(q, k)
        scale = q.shape[-1] ** -0.25  # on both sides: s = q'.k' / sqrt(d)
        xq, xk = xq * scale, xk * scale
        vv = v.to(xq.dtype)
        key_mask = None if key_padding_mask is None else key_padding_mask[:, None, :, None].to(xq.dtype)
        if causal:
            out = taylor_causal_chunked(xq, xk, vv, self.params.eps, self.params.chunk, key_mask)
        else:
            out = taylor_noncausal(xq, xk, vv, self.params.eps, key_mask)
        return out.to(q.dtype)

    def _fla(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None) -> Tensor:
        """fla.ops.based on q', k' (projected in fp32, passed in v's dtype) with scale 1/sqrt(d):
        fla computes 1 + s + s^2/2 with s = scale q'.k' and normalizes with + 1e-6. (B, N, H, d)."""
        check_no_mask(self, mask)
        if not causal:
            raise ValueError("taylor/fla: fla.ops.based has causal kernels only (non-causal: impl torch)")
        xq, xk = self._map_inputs(q, k)
        based = importlib.import_module("fla.ops.based")
        kernel = based.fused_chunk_based if self.impl == "fla" else based.parallel_based
        out = kernel(xq.to(v.dtype), xk.to(v.dtype), v, scale=q.shape[-1] ** -0.5, use_norm=True)
        return out.to(v.dtype)
