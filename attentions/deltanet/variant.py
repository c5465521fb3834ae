"""`deltanet`: the delta rule (DeltaNet, Yang et al. 2024) and Gated DeltaNet (Yang et al. 2025).

A recurrent token mixer, not an approximation of softmax attention (`approximates_softmax=False`):

    q, k L2-normalized per head, q scaled by 1/sqrt(d) (fla's default scale)
    S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,   o_t = S_t q_t,   S_0 = 0

beta and alpha: with pre-projected q, k, v there is no token x to compute them from (the papers
project x), so each head learns one of each: beta_h = sigmoid(beta_logit_h), a parameter
initialised to `params.beta_logit` (0: beta = 1/2); gated, alpha_h = exp(-exp(A_log_h)) (Gated
DeltaNet's / Mamba2's parameterisation without the token-dependent dt), initialised to RetNet's
per-head decays alpha_h = 1 - 2^(-5 - min(h, 15)). Both train end to end in MQAR. Without the gate alpha = 1.
A key-padding mask sets beta = 0 and alpha = 1 on padded tokens: they neither write nor decay.
Causal only. The state S is d_v x d_k fp32 per head. Impls:

    torch  chunked.py: the chunkwise WY / UT-transform algorithm (blocks of `chunk` tokens, one
           triangular solve per block), fp32 whatever the input dtype. (B, H, N, d).
    fla    fla-core `fla.ops.delta_rule.chunk_delta_rule` / `fla.ops.gated_delta_rule.
           chunk_gated_delta_rule` (64-token chunks, Triton) on q, k normalized here in fp32 and
           passed in the input dtype; beta (B, N, H), gated log decay g (B, N, H) in fp32.
           CUDA, fp16/bf16 (fla refuses fp32), head_dim <= 256, (B, N, H, d), key-padding mask
           through beta and g as above.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from attentions.deltanet.chunked import delta_rule_chunked, l2_normalize
from harness.measure.costs import by_mode, chunk_sizes, io_bytes_for_mode, matmul_flops
from harness.plugins.contract import AttentionVariant, Capabilities, Problem, Tolerance

FLA_DTYPES = ("fp16", "bf16")  # chunk_delta_rule asserts q.dtype != float32
FLA_MAX_HEAD_DIM = 256  # fla/ops/common/chunk_delta_h.py: K <= 256
FLA_CHUNK = 64
FP32_BYTES = 4


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class DeltaNetParams:
    """gated: Gated DeltaNet's per-head decay alpha (False: plain DeltaNet, alpha = 1).
    beta_logit: initial value of the learned per-head beta logit (beta = sigmoid; 0 -> 1/2).
    chunk: block length of the torch impl's chunkwise algorithm (>= 1)."""

    gated: bool = False
    beta_logit: float = 0.0
    chunk: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.gated, bool):
            raise ValueError(f"deltanet: gated must be true or false, got {self.gated!r}")
        if not (isinstance(self.beta_logit, int | float) and not isinstance(self.beta_logit, bool)) or not (
            math.isfinite(self.beta_logit)
        ):
            raise ValueError(f"deltanet: beta_logit must be a finite number, got {self.beta_logit!r}")
        if not _is_int(self.chunk) or self.chunk < 1:
            raise ValueError(f"deltanet: chunk must be an integer >= 1, got {self.chunk!r}")


def retnet_decays(heads: int) -> Tensor:
    """RetNet's per-head decays 1 - 2^(-5 - h), h = 0..H-1 (Sun et al. 2023), the exponent capped at
    -20 from the 16th head on (so log(-log alpha) stays finite). (H,) fp64."""
    return 1.0 - 2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float64).clamp(max=15))


class DeltaNetAttention(AttentionVariant):
    """The (gated) delta rule; q, k, v: (B, H, N, d) (torch) or (B, N, H, d) (fla), causal only."""

    name = "deltanet"
    version = 1
    paper = (
        "Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule over Sequence Length, "
        "arXiv:2406.06484; Yang et al. 2025, Gated Delta Networks: Improving Mamba2 with Delta Rule, "
        "arXiv:2412.06464"
    )
    reference_impl = (
        "attentions/deltanet/naive.py (token-by-token recurrence); fla-org/flash-linear-attention "
        "fla/ops/delta_rule/naive.py and fla/ops/gated_delta_rule/naive.py "
        "(naive_recurrent_gated_delta_rule, naive_chunk_gated_delta_rule)"
    )
    reference = "attentions.deltanet.naive:reference"
    # Worst relative Frobenius errors measured (conformance inputs; CPU, torch 2.13): fp32 vs naive.py
    # over N 63/1000, d 32..128, causal: 4.2e-7 outputs, 7.3e-7 gradients (q, k, v, beta_logit); bf16 vs
    # fp32 on the rounded inputs (N 63, d 64): 1.6e-3 / 2.4e-3 (fp16 2.1e-4 / 2.9e-4, not declared: fla's
    # fp16 kernels are unmeasured here).
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
    }
    Params = DeltaNetParams
    impls = ("torch", "fla")
    capabilities = Capabilities(non_causal=False, masking=True, approximates_softmax=False)
    impl_requires = {"fla": ("fla",)}

    def __init__(
        self,
        params: DeltaNetParams,
        impl: str,
        heads: int,
        head_dim: int,
        device: str = "cpu",
        dtype: str = "fp32",
    ) -> None:
        super().__init__(params, impl, heads, head_dim, device, dtype)
        self.beta_logit = nn.Parameter(torch.full((heads,), float(params.beta_logit), device=device))
        if params.gated:  # alpha_h = exp(-exp(A_log_h)) starts at RetNet's decay
            A_log = torch.log(-torch.log(retnet_decays(heads))).float()
            self.A_log = nn.Parameter(A_log.to(device))
        else:
            self.register_parameter("A_log", None)

    @classmethod
    def capabilities_for(cls, impl: str) -> Capabilities:
        """fla: CUDA, fp16/bf16, head_dim <= 256, (B, N, H, d)."""
        if impl != "fla":
            return cls.capabilities
        return dataclasses.replace(
            cls.capabilities,
            devices=("cuda",),
            dtypes=FLA_DTYPES,
            head_dim_max=FLA_MAX_HEAD_DIM,
            layout="bnhd",
        )

    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: DeltaNetParams, impl: str) -> list[str]:
        reasons = super().not_supported_reasons(problem, params, impl)
        if not problem.causal:  # replace the base's generic line with the why
            reasons = [r for r in reasons if not r.endswith("is causal only")]
            reasons.append(
                f"deltanet/{impl} is a causal recurrence (the delta rule): it has no non-causal form"
            )
        return reasons

    @classmethod
    def feature_dim(cls, problem: Problem, params: DeltaNetParams) -> int | None:
        """The state's key dimension, d."""
        return problem.head_dim

    @classmethod
    def state_bytes(cls, problem: Problem, params: DeltaNetParams, impl: str) -> float | None:
        """The fp32 state S (d_v x d_k) per head; no normalizer."""
        return float(problem.heads * problem.head_dim * problem.head_dim * FP32_BYTES)

    @classmethod
    def flop_terms(cls, problem: Problem, params: DeltaNetParams, impl: str) -> dict[str, float]:
        """Per (batch, head) and block of c tokens (d_k = d_v = d): K K^T and Q K^T (c d c each),
        W h and Q h (c d d each), the masked (Q K^T) U' (c c d), the update K^T U' (d c d); the
        triangular solve (c^2 (2d) / 2 multiply-adds, not a matmul FlopCounterMode counts). Backward:
        2 products each, except block 0's products with the zero state (1) and the last block's
        unused update (0), plus the solve's gradient for A: -dX X^T (c x 2d x c, a matmul) and
        another solve. Elementwise: L2 norms, beta and gate scalings, masks; backward about 2x.
        fla runs the same chunkwise algorithm at 64-token blocks."""
        bh, n, d = problem.batch * problem.heads, problem.seq_len, problem.head_dim
        sizes = chunk_sizes(n, FLA_CHUNK if impl == "fla" else params.chunk)
        fwd = bwd = solves = elementwise = 0.0
        last = len(sizes) - 1
        for b, c in enumerate(sizes):
            products = 2 * matmul_flops(c, d, c) + matmul_flops(c, c, d)
            state_reads = 2 * matmul_flops(c, d, d)
            update = matmul_flops(d, c, d)
            fwd += products + state_reads + update
            bwd += 2 * products + (1 if b == 0 else 2) * state_reads + (0 if b == last else 2) * update
            bwd += matmul_flops(c, 2 * d, c)  # dA = -dX X^T
            solves += c * c * 2 * d  # forward substitution: c^2/2 multiply-adds per column, 2d columns
            elementwise += 4.0 * c * c + 4.0 * c * d + (2.0 * c * c + 3 * c * d if params.gated else 0.0)
        elementwise += 6.0 * n * d  # the two L2 norms and the scale
        return {
            "attention_matmul": bh * by_mode(problem, fwd, bwd),
            "solve": bh * by_mode(problem, solves, 2 * solves),
            "elementwise": bh * by_mode(problem, elementwise, 2 * elementwise),
        }

    @classmethod
    def bytes_moved(cls, problem: Problem, params: DeltaNetParams, impl: str) -> float:
        """q, k, v, o (and grads) + the fp32 state written and read once per block + per block the
        c x c matrices (A, Q K^T) and the c x 2d solve result, fp32; backward moves the non-IO part twice."""
        n, d = problem.seq_len, problem.head_dim
        sizes = chunk_sizes(n, FLA_CHUNK if impl == "fla" else params.chunk)
        extra = sum(2 * d * d + 2 * 2 * c * c + 2 * c * 2 * d for c in sizes)
        per_head = extra * FP32_BYTES * {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}[problem.mode]
        return io_bytes_for_mode(problem) + problem.batch * problem.heads * per_head

    def _beta_and_gate(
        self, mask: Tensor | None, shape: tuple[int, int, int], acc: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor | None]:
        """beta (B, H, N) in [0, 1] and log decay g (B, H, N) <= 0 (None ungated), in `acc` (fp32, or
        fp64 for fp64 inputs); padded tokens: beta 0, g 0. shape: (B, H, N)."""
        B, H, N = shape
        beta = torch.sigmoid(self.beta_logit.to(acc))[None, :, None].expand(B, H, N)
        g = None
        if self.params.gated:
            g = (-torch.exp(self.A_log.to(acc)))[None, :, None].expand(B, H, N)
        if mask is not None:
            real = mask[:, None, :].to(acc)  # (B, 1, N)
            beta = beta * real
            g = None if g is None else g * real
        return beta, g

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """torch: (B, H, N, d) -> (B, H, N, d); fla: (B, N, H, d) -> (B, N, H, d); q's dtype."""
        if not causal:
            raise ValueError("deltanet is a causal recurrence (the delta rule): it has no non-causal form")
        if self.impl == "fla":
            return self._fla(q, k, v, key_padding_mask)
        acc = torch.promote_types(q.dtype, torch.float32)
        B, H, N, d = q.shape
        beta, g = self._beta_and_gate(key_padding_mask, (B, H, N), acc)
        qn = l2_normalize(q.to(acc)) * d**-0.5
        kn = l2_normalize(k.to(acc))
        out = delta_rule_chunked(qn, kn, v.to(acc), beta, g, self.params.chunk)
        return out.to(q.dtype)

    def _fla(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """fla's chunked kernels; q, k, v (B, N, H, d) -> (B, N, H, d) in v's dtype."""
        B, N, H, d = q.shape
        beta, g = self._beta_and_gate(mask, (B, H, N))
        qn = l2_normalize(q.float()).to(v.dtype)
        kn = l2_normalize(k.float()).to(v.dtype)
        beta = beta.transpose(1, 2).contiguous().to(v.dtype)  # (B, N, H)
        if g is None:
            kernel = importlib.import_module("fla.ops.delta_rule").chunk_delta_rule
            out, _ = kernel(q=qn, k=kn, v=v, beta=beta, scale=d**-0.5)
        else:
            kernel = importlib.import_module("fla.ops.gated_delta_rule").chunk_gated_delta_rule
            out, _ = kernel(q=qn, k=kn, v=v, g=g.transpose(1, 2).contiguous(), beta=beta, scale=d**-0.5)
        return out.to(v.dtype)
