"""`window`: exact softmax attention over a sliding window of W keys (local attention).

    causal:     query i sees keys i-W+1 .. i
    non-causal: query i sees keys i-W+1 .. i+W-1   (flash_attn's window_size=(W-1, W-1))

Inside its window the result is exact softmax; against full softmax it is an approximation (it
drops every key outside the window), so `capabilities.exact` is False. Impls:

    torch       block-banded (banded.py): blocks of min(W, N) tokens, each query block against
                itself and its neighbour blocks (2 causal, 3 non-causal), masked to the band.
                Memory O(N W), never an N x N matrix. (B, H, N, d), any device and dtype,
                key-padding mask.
    flash_attn  Dao-AILab `flash_attn.flash_attn_func(q, k, v, causal=..., window_size=(W-1, R))`
                with R = 0 causal, W-1 non-causal (sliding-window support since flash-attn 2.3).
                (B, N, H, d), CUDA, fp16/bf16, head_dim <= 256, no key-padding mask.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from attentions.window.banded import block_geometry, window_attention_banded
from harness.measure.costs import by_mode, element_bytes, io_bytes_for_mode, matmul_flops
from harness.plugins.contract import AttentionVariant, Capabilities, Problem, Tolerance, check_no_mask

SOFTMAX_FLOPS = 6.0  # per score: scale, mask, max, subtract, exp, divide (as `softmax` counts it)
SCORE_PASSES = {"fwd": 4, "bwd": 7, "fwd_bwd": 11}  # score-matrix elements moved, as `softmax` counts them
FLASH_BWD_FACTOR = 2.5  # FlashAttention's backward recomputes S: 5 products against the forward's 2
HALF_DTYPES = ("fp16", "bf16")
FLASH_MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class WindowParams:
    """window: W, the number of keys a causal query sees (itself and the W - 1 before it); a
    non-causal query sees W - 1 on each side. An integer >= 1."""

    window: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window: window must be an integer >= 1, got {self.window!r}")


def band_pairs(n: int, window: int, causal: bool) -> int:
    """Number of (query, key) pairs inside the band of N tokens: what a sliding-window kernel scores."""
    if causal:
        w = min(window, n)
        return w * (w + 1) // 2 + (n - w) * w  # rows 0..w-1 see i + 1 keys, the rest w
    return sum(min(i + window - 1, n - 1) - max(i - window + 1, 0) + 1 for i in range(n))


class WindowAttention(AttentionVariant):
    """Sliding-window softmax attention; q, k, v: (B, H, N, d) (torch) or (B, N, H, d) (flash_attn)."""

    name = "window"
    version = 1
    paper = (
        "Beltagy et al. 2020, Longformer: The Long-Document Transformer, arXiv:2004.05150 (sliding-window "
        "attention); Child et al. 2019, Generating Long Sequences with Sparse Transformers, arXiv:1904.10509"
    )
    reference_impl = (
        "attentions/window/naive.py (softmax with a band mask); Dao-AILab/flash-attention "
        "flash_attn_func(window_size=(left, right)), whose window this follows"
    )
    reference = "attentions.window.naive:reference"
    # Worst relative Frobenius errors measured (conformance inputs; CPU, torch 2.13): fp32 vs naive.py
    # over N 63/1000, d 32..128, causal and not: 2.4e-7 outputs, 3.0e-7 gradients; vs the same impl in fp32
    # on the rounded inputs (N 63, d 64): bf16 3.7e-3 / 4.2e-3, fp16 4.5e-4 / 5.4e-4.
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
        "fp16": Tolerance(output=2e-3, grad=6e-3),
    }
    Params = WindowParams
    impls = ("torch", "flash_attn")
    # the default window (128) covers every token of the contract tests' N = 63: check a real band too
    contract_params: ClassVar[tuple[dict, ...]] = ({"window": 16},)
    capabilities = Capabilities(masking=True)
    impl_requires = {"flash_attn": ("flash_attn",)}

    @classmethod
    def capabilities_for(cls, impl: str) -> Capabilities:
        """flash_attn: CUDA, fp16/bf16, head_dim <= 256, (B, N, H, d), no key-padding mask."""
        if impl != "flash_attn":
            return cls.capabilities
        return dataclasses.replace(
            cls.capabilities,
            devices=("cuda",),
            dtypes=HALF_DTYPES,
            head_dim_max=FLASH_MAX_HEAD_DIM,
            masking=False,
            layout="bnhd",
        )

    @classmethod
    def feature_dim(cls, problem: Problem, params: WindowParams) -> int | None:
        """The keys a query sees at most: W causal, 2W - 1 non-causal (capped at N)."""
        return min(params.window if problem.causal else 2 * params.window - 1, problem.seq_len)

    @classmethod
    def state_bytes(cls, problem: Problem, params: WindowParams, impl: str) -> float | None:
        """The K and V cache of the last min(W, N) tokens: 2 min(W, N) d per head, input dtype."""
        tokens = min(params.window, problem.seq_len)
        return float(2 * tokens * problem.head_dim * problem.heads * element_bytes(problem))

    @classmethod
    def flop_terms(cls, problem: Problem, params: WindowParams, impl: str) -> dict[str, float]:
        """torch: per (batch, head) and query block, scores (c x d x span) and weights @ v (c x span x
        d), c = min(W, N), span = 2c causal / 3c non-causal, including the masked part of the span;
        backward 2x (both operands need gradients); softmax SOFTMAX_FLOPS per score, about 2x
        backward. flash_attn: 4 d per (query, key) pair inside the band, backward 2.5x."""
        bh, n, d = problem.batch * problem.heads, problem.seq_len, problem.head_dim
        if impl == "flash_attn":
            fwd = 4.0 * d * band_pairs(n, params.window, problem.causal)
            return {"attention_matmul": bh * by_mode(problem, fwd, FLASH_BWD_FACTOR * fwd)}
        block, blocks, span_blocks = block_geometry(n, params.window, problem.causal)
        span = span_blocks * block
        fwd = blocks * (matmul_flops(block, d, span) + matmul_flops(block, span, d))
        softmax = SOFTMAX_FLOPS * blocks * block * span
        return {
            "attention_matmul": bh * by_mode(problem, fwd, 2 * fwd),
            "softmax_elementwise": bh * by_mode(problem, softmax, 2 * softmax),
        }

    @classmethod
    def bytes_moved(cls, problem: Problem, params: WindowParams, impl: str) -> float:
        """q, k, v, o (and grads), plus for torch the banded score and weight matrices (N x span,
        moved like `softmax`'s N x N ones) and the gathered key and value spans written and read."""
        if impl == "flash_attn":
            return io_bytes_for_mode(problem)
        n, d = problem.seq_len, problem.head_dim
        block, blocks, span_blocks = block_geometry(n, params.window, problem.causal)
        scores = blocks * block * span_blocks * block * SCORE_PASSES[problem.mode]
        spans = 2 * 2 * blocks * span_blocks * block * d * {"fwd": 1, "bwd": 2, "fwd_bwd": 3}[problem.mode]
        per_head = (scores + spans) * element_bytes(problem)
        return io_bytes_for_mode(problem) + problem.batch * problem.heads * per_head

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """torch: (B, H, N, d) -> (B, H, N, d); flash_attn: (B, N, H, d) -> (B, N, H, d); q's dtype."""
        window = self.params.window
        if self.impl == "flash_attn":
            check_no_mask(self, key_padding_mask)
            flash_attn = importlib.import_module("flash_attn")
            right = 0 if causal else window - 1
            return flash_attn.flash_attn_func(q, k, v, causal=causal, window_size=(window - 1, right))
        return window_attention_banded(q, k, v, window, causal, key_padding_mask)
