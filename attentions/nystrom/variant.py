"""`nystrom`: Nyströmformer attention (Xiong et al. 2021), non-causal only.

    q~, k~ = segment means of q, k over m = min(landmarks, N) contiguous segments   (m, d)
    out    = softmax(q k~^T / sqrt(d)) Z softmax(q~ k^T / sqrt(d)) v,   Z ~= softmax(q~ k~^T / sqrt(d))^+

Z is the iterative Moore-Penrose pseudo-inverse (`pinv_iters` iterations, 6 in the paper). Segments
have sizes differing by at most one (no padding); see naive.py for the exact definition.

impls (they differ only in how Z_0 of the pseudo-inverse is scaled):
    torch    this repo's pseudo-inverse, Z_0 = A^T / (||A||_inf ||A||_1) per (batch, head) matrix:
             each sample's output depends on that sample only. The default.
    package  nystrom-attention's `moore_penrose_iter_pinv` on our fp32 A, untouched: it scales Z_0
             by maxima over the whole (B, H) batch, so a sample's output depends on the other samples
             in its batch (the iterations have not converged after 6 steps). Kept to measure that
             upstream issue: the harness's batch-independence check reports it.

Precision: the score matmuls q k~^T, q~ k^T and the large products Bm v, F (Z Bm v) run in the input
dtype; landmarks, the three softmaxes, the m x m kernel, the pseudo-inverse and Z (Bm v) run in fp32
(fp64 for fp64 inputs); the output is cast back to the input dtype. The depthwise-conv skip on v of
the original model is learned and is left out. No key-padding mask: a landmark is a segment mean
over token positions, so padding would need masked, re-balanced segments (not implemented).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness.measure.costs import by_mode, element_bytes, io_bytes_for_mode, matmul_flops
from harness.plugins.contract import AttentionVariant, Capabilities, Problem, Tolerance, check_no_mask

CAUSAL_REASON = (
    "nystrom has no causal form: each landmark is a mean over a segment of tokens, so every query "
    "would attend through landmarks that mix in future tokens"
)
FP32_BYTES = 4
SOFTMAX_FLOPS = 6.0  # per score element: scale, max, subtract, exp, sum, divide
PINV_INIT_FLOPS = 4.0  # per m x m element: abs, row sum, column sum, divide
PINV_ITER_FLOPS = 7.0  # per m x m element and iteration: 3 (c * I), 3 subtractions, 0.25 * Z
PINV_ITER_PASSES = 18  # m x m fp32 matrices moved per iteration: 4 matmuls x 3 + 3 updates x 2


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"nystrom param {name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class NystromParams:
    """landmarks: number of landmarks m (>= 1; min(m, N) are used). pinv_iters: iterations of the
    Moore-Penrose pseudo-inverse (>= 1; 6 in the paper)."""

    landmarks: int = 64
    pinv_iters: int = 6

    def __post_init__(self) -> None:
        _check_int("landmarks", self.landmarks, 1)
        _check_int("pinv_iters", self.pinv_iters, 1)


def segment_means(x: Tensor, m: int, dtype: torch.dtype) -> Tensor:
    """Means of m contiguous segments whose sizes differ by at most one (the first N mod m hold one
    token more), accumulated in `dtype`. (B, H, N, d) -> (B, H, m, d); same result as naive.segment_means.
    """
    base, extra = divmod(x.shape[-2], m)
    split = extra * (base + 1)
    parts = []
    if extra:
        parts.append(x[..., :split, :].unflatten(-2, (extra, base + 1)).mean(dim=-2, dtype=dtype))
    if m > extra:
        parts.append(x[..., split:, :].unflatten(-2, (m - extra, base)).mean(dim=-2, dtype=dtype))
    return torch.cat(parts, dim=-2)


def iterative_pinv(a: Tensor, iters: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of each (m, m) matrix of a (..., m, m) by the paper's iteration,
    Z_0 = A^T / (||A||_1 ||A||_inf) scaled per matrix (never over the batch) -> (..., m, m)."""
    abs_a = a.abs()
    scale = abs_a.sum(dim=-1).amax(dim=-1) * abs_a.sum(dim=-2).amax(dim=-1)  # (...,)
    z = a.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def forward_flop_terms(problem: Problem, params: NystromParams) -> dict[str, float]:
    """Forward FLOPs by part, whole problem, m = min(landmarks, N). The "*_matmul" parts are the
    matmuls torch's FlopCounterMode counts; it does not see "elementwise" (segment means, scaling
    and softmax of the three score matrices, the pseudo-inverse's init and its c I - X updates)."""
    bh, n, d = problem.batch * problem.heads, problem.seq_len, problem.head_dim
    m = min(params.landmarks, n)
    scores = matmul_flops(n, d, m) + matmul_flops(m, d, m) + matmul_flops(m, d, n)  # F, A, Bm logits
    pinv = params.pinv_iters * 4 * matmul_flops(m, m, m)  # A Z, then three products per iteration
    output = matmul_flops(m, n, d) + matmul_flops(m, m, d) + matmul_flops(n, m, d)  # Bm v, Z (.), F (.)
    elementwise = 2.0 * (n * d + m * d)  # segment sums and divides, q and k
    elementwise += SOFTMAX_FLOPS * (2 * n * m + m * m)
    elementwise += PINV_INIT_FLOPS * m * m + params.pinv_iters * PINV_ITER_FLOPS * m * m
    return {
        "scores_matmul": bh * scores,
        "pinv_matmul": bh * pinv,
        "output_matmul": bh * output,
        "elementwise": bh * elementwise,
    }


class NystromAttention(AttentionVariant):
    """Nyströmformer attention; q, k, v: (B, H, N, d) -> (B, H, N, d), non-causal."""

    name = "nystrom"
    version = 1
    paper = (
        "Xiong et al. 2021, Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention, "
        "AAAI 2021, arXiv:2102.03902"
    )
    reference_impl = (
        "attentions/nystrom/naive.py; nystrom-attention 0.0.14 (lucidrains/nystrom-attention) "
        "moore_penrose_iter_pinv; mlpen/Nystromformer"
    )
    reference = "attentions.nystrom.naive:reference"
    impl_references: ClassVar[dict[str, str]] = {"package": "attentions.nystrom.naive:package_reference"}
    # Worst relative Frobenius errors measured (conformance inputs; CPU, torch 2.13): fp32 vs naive.py
    # over N 63/1000, d 32..128: 0 (the same operations in the same order, both impls); bf16 vs fp32
    # on the rounded inputs (N 63, d 64): 6.4e-3 outputs, 8.2e-3 gradients.
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
    }
    known_defects: ClassVar[dict[str, str]] = {
        "package:batch_independence": "nystrom-attention scales the pseudo-inverse init by maxima over "
        "the whole (B, H) batch, so a sample's output depends on the other samples",
    }
    flop_rtol = 1e-9  # every matmul is modeled exactly; both impls run the same products
    Params = NystromParams
    impls = ("torch", "package")
    capabilities = Capabilities(causal=False)
    impl_requires = {"package": ("nystrom_attention",)}

    def __init__(
        self,
        params: NystromParams,
        impl: str,
        heads: int,
        head_dim: int,
        device: str = "cpu",
        dtype: str = "fp32",
    ) -> None:
        super().__init__(params, impl, heads, head_dim, device, dtype)
        self._last_seq_len: int | None = None  # N of the last forward, for info()
        if impl == "torch":
            self._pinv: Callable[[Tensor, int], Tensor] = iterative_pinv
        elif impl == "package":
            from nystrom_attention.nystrom_attention import moore_penrose_iter_pinv

            self._pinv = moore_penrose_iter_pinv
        else:
            raise ValueError(f"nystrom has no impl {impl!r} (impls: {', '.join(self.impls)})")

    # ----- description ------------------------------------------------------------------------
    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: NystromParams, impl: str) -> list[str]:
        reasons = super().not_supported_reasons(problem, params, impl)
        if problem.causal:
            reasons = [r for r in reasons if not r.endswith("has no causal form")] + [CAUSAL_REASON]
        return reasons

    @classmethod
    def feature_dim(cls, problem: Problem, params: NystromParams) -> int | None:
        return min(params.landmarks, problem.seq_len)

    @classmethod
    def state_bytes(cls, problem: Problem, params: NystromParams, impl: str) -> float | None:
        """None: landmarks average over future tokens, so there is no causal decoder to size."""
        return None

    @classmethod
    def flop_terms(cls, problem: Problem, params: NystromParams, impl: str) -> dict[str, float]:
        """Per (batch, head) forward, m = min(landmarks, N), T = pinv_iters (`forward_flop_terms`):

        matmuls 8 N m d (q k~^T, q~ k^T, Bm v, F (Z Bm v)) + 4 m^2 d (q~ k~^T, Z (Bm v)) + 8 T m^3
        (four m x m products per iteration); elementwise 2 (N + m) d (segment means) + 6 (2 N m + m^2)
        (scale and softmax) + 4 m^2 (pseudo-inverse init) + 7 T m^2 (its updates). Backward: every
        product has two operands that need gradients (the pseudo-inverse too), so 2x; both impls.
        """
        return {key: by_mode(problem, v, 2 * v) for key, v in forward_flop_terms(problem, params).items()}

    @classmethod
    def bytes_moved(cls, problem: Problem, params: NystromParams, impl: str) -> float:
        """q, k, v, o (and grads), plus per (batch, head): the N x m logits of F and the m x N logits
        of Bm and their softmaxes, each written and read once in the input dtype (8 N m elements);
        fp32 landmarks q~, k~ written and read (4 m d), A's logits and softmax (4 m^2), 18 m^2 per
        pseudo-inverse iteration (4 matmuls reading 2 and writing 1 m x m matrix, 3 updates reading
        and writing one), Bm v and Z (Bm v) written and read (4 m d). Backward moves the non-IO part
        twice.
        """
        n, d = problem.seq_len, problem.head_dim
        m = min(params.landmarks, n)
        large = 8.0 * n * m * element_bytes(problem)
        small = (8.0 * m * d + 4.0 * m * m + PINV_ITER_PASSES * params.pinv_iters * m * m) * FP32_BYTES
        per_head = (large + small) * {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}[problem.mode]
        return io_bytes_for_mode(problem) + problem.batch * problem.heads * per_head

    # ----- forward ----------------------------------------------------------------------------
    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """q, k, v: (B, H, N, d) -> (B, H, N, d), same dtype as q. Non-causal, no key-padding mask."""
        if causal:
            raise ValueError(CAUSAL_REASON)
        check_no_mask(self, key_padding_mask)
        self._last_seq_len = q.shape[-2]
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        m = min(self.params.landmarks, q.shape[-2])
        scale = 1.0 / math.sqrt(q.shape[-1])
        q_land, k_land = segment_means(q, m, acc), segment_means(k, m, acc)  # (B, H, m, d) acc
        logits_1 = (q @ k_land.to(k.dtype).transpose(-1, -2)).to(acc)  # (B, H, N, m)
        logits_3 = (q_land.to(q.dtype) @ k.transpose(-1, -2)).to(acc)  # (B, H, m, N)
        kernel_1 = torch.softmax(logits_1 * scale, dim=-1)  # F
        kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2) * scale, dim=-1)  # A (B, H, m, m)
        kernel_3 = torch.softmax(logits_3 * scale, dim=-1)  # Bm
        kernel_2_inv = self._pinv(kernel_2, self.params.pinv_iters)  # (B, H, m, m) acc
        context = (kernel_3.to(v.dtype) @ v).to(acc)  # Bm v (B, H, m, d)
        mixed = kernel_2_inv @ context  # Z Bm v (B, H, m, d) acc
        return kernel_1.to(q.dtype) @ mixed.to(q.dtype)

    def info(self) -> dict[str, Any]:
        """Landmarks actually used and the segment sizes at the N of the last call ({} before one)."""
        if self._last_seq_len is None:
            return {}
        n, m = self._last_seq_len, min(self.params.landmarks, self._last_seq_len)
        base, extra = divmod(n, m)
        sizes = f"{extra}x{base + 1} + {m - extra}x{base}" if extra else f"{m}x{base}"
        return {"landmarks_used": m, "segment_sizes": sizes}
