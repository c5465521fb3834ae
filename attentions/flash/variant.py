"""`flash`: FlashAttention, exact softmax attention that never materializes the N x N matrix.

Three implementations of the same function (Dao et al. 2022; Dao 2023), chosen by `impl`:

    sdpa        torch SDPA restricted to its flash backend (never the math fallback); (B, H, N, d).
                CUDA: fp16/bf16, head_dim <= 256, sm80+. CPU: torch's flash CPU kernel, which on
                torch 2.13 ran fp32/bf16/fp16, causal and not, with backward, head dims 7..512.
    flash_attn  Dao-AILab `flash_attn.flash_attn_func`; (B, N, H, d); CUDA, fp16/bf16, d <= 256.
    xformers    `xformers.ops.memory_efficient_attention`; (B, N, H, d); CUDA; causal through
                `LowerTriangularMask()`.

Besides the static rules, `not_supported_reasons` runs the impl once on a tiny input of the
case's device, dtype, head dim, causality and masking (and backward if needed) when it can, so an
unsupported combination is a readable `skipped` reason with the backend's own words, not a
crash in the middle of a sweep.

Masking: `sdpa` only, as a boolean `attn_mask` (B, 1, 1, N), or (B, 1, N, N) combined with the
causal triangle (SDPA takes no mask together with `is_causal`), still restricted to the flash
backend: torch's CPU flash kernel takes it; where a flash kernel cannot (CUDA), the probe turns
it into a `skipped` reason, never the math fallback. flash_attn and xformers declare no masking.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.measure.costs import by_mode, element_bytes, io_bytes_for_mode
from harness.plugins.contract import (
    DTYPES,
    AttentionVariant,
    Capabilities,
    NoParams,
    Problem,
    Tolerance,
    check_no_mask,
)

LAYOUT_BY_IMPL = {"sdpa": "bhnd", "flash_attn": "bnhd", "xformers": "bnhd"}
HALF_DTYPES = ("fp16", "bf16")
MAX_HEAD_DIM = 256  # flash kernels on CUDA (SDPA flash and flash_attn 2)
PROBE_SEQ_LEN = 16


BWD_FACTOR = 2.5  # the backward recomputes S: 5 N x N x d products against the forward's 2


def attend(impl: str, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None = None) -> Tensor:
    """Run `impl` on q, k, v in its layout (see `LAYOUT_BY_IMPL`); output in that layout and dtype.

    mask: (B, N) bool key-padding mask, True = real (sdpa only).
    """
    if impl == "sdpa":
        attn_mask = None
        if mask is not None:
            n = q.shape[-2]
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, N): True = may attend
            if causal:
                attn_mask = attn_mask & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # restricted: raises instead of falling back
            if attn_mask is not None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if impl == "flash_attn":
        flash_attn = importlib.import_module("flash_attn")
        return flash_attn.flash_attn_func(q, k, v, causal=causal)
    if impl == "xformers":
        xops = importlib.import_module("xformers.ops")
        bias = xops.LowerTriangularMask() if causal else None
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias)
    raise ValueError(f"flash has no impl {impl!r} (impls: {', '.join(LAYOUT_BY_IMPL)})")


@functools.cache
def probe(
    impl: str, device: str, dtype: str, head_dim: int, causal: bool, backward: bool, masked: bool = False
) -> str | None:
    """Run `impl` once on a tiny input (with a key-padding mask if `masked`); None if it worked,
    else the backend's reason.

    Inputs are zeros (no draw from torch's global generator, which the runner seeds per case).
    """
    shape = (
        (1, 1, PROBE_SEQ_LEN, head_dim) if LAYOUT_BY_IMPL[impl] == "bhnd" else (1, PROBE_SEQ_LEN, 1, head_dim)
    )
    q, k, v = (
        torch.zeros(shape, device=device, dtype=DTYPES[dtype], requires_grad=backward) for _ in range(3)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mask = torch.ones(1, PROBE_SEQ_LEN, dtype=torch.bool, device=device) if masked else None
            if mask is not None:
                mask[:, -1] = False
            out = attend(impl, q, k, v, causal, mask)
            if backward:
                out.sum().backward()
        except (RuntimeError, ValueError, NotImplementedError) as err:
            # SDPA explains why its flash backend was not used in warnings, then raises
            # "No available kernel"; keep the first line of each.
            lines = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
            lines.append(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
            return "; ".join(lines)
    return None


def device_available(device: str) -> bool:
    return device == "cpu" or (device == "cuda" and torch.cuda.is_available())


def _causal_fraction(n_q: int, n_k: int, causal: bool) -> float:
    """Fraction of the n_q x n_k scores a causal flash kernel computes, (N + 1) / 2N; 1 if not causal."""
    return (n_k + 1) / (2.0 * n_k) if causal and n_q == n_k else 1.0


def _cpu_flash_fwd_flops(
    query: Any, key: Any, value: Any, dropout_p: float = 0.0, is_causal: bool = False, *_: Any, **__: Any
) -> int:
    """FlopCounterMode formula of aten._scaled_dot_product_flash_attention_for_cpu (shapes in):
    4 B H N_q N_k d, times the causal fraction when `is_causal` (FlashAttention's count)."""
    b, h, n_q, d = query
    n_k = key[-2]
    return int(round(4 * b * h * n_q * n_k * d * _causal_fraction(n_q, n_k, is_causal)))


def _cpu_flash_bwd_flops(
    grad_out: Any, query: Any, key: Any, value: Any, out: Any, logsumexp: Any,
    dropout_p: float = 0.0, is_causal: bool = False, *_: Any, **__: Any,
) -> int:  # fmt: skip
    """The backward op's formula: BWD_FACTOR x the forward's."""
    return int(round(BWD_FACTOR * _cpu_flash_fwd_flops(query, key, value, dropout_p, is_causal)))


class FlashAttention(AttentionVariant):
    """Exact attention through a FlashAttention kernel; layout per impl (`layout_for`)."""

    name = "flash"
    version = 1
    paper = (
        "Dao et al. 2022, FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness, "
        "arXiv:2205.14135; Dao 2023, FlashAttention-2, arXiv:2307.08691"
    )
    reference_impl = "attentions/flash/naive.py (exact softmax in fp32); Dao-AILab/flash-attention"
    reference = "attentions.flash.naive:reference"
    # Worst relative Frobenius errors measured (conformance inputs; CPU, torch 2.13): sdpa, fp32 vs the
    # reference over N 63/1000, d 32..128, causal and not: 4.8e-7 outputs, 6.5e-7 gradients; vs fp32
    # on the rounded inputs (N 63, d 64): bf16 2.1e-3 / 3.3e-3, fp16 2.7e-4 / 4.1e-4.
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
        "fp16": Tolerance(output=2e-3, grad=6e-3),
    }
    Params = NoParams
    impls = ("sdpa", "flash_attn", "xformers")
    capabilities = Capabilities(exact=True, layout="bhnd")  # layout of the default impl, sdpa
    impl_requires = {"flash_attn": ("flash_attn",), "xformers": ("xformers",)}

    @classmethod
    def capabilities_for(cls, impl: str) -> Capabilities:
        """sdpa takes a key-padding mask (as attn_mask); flash_attn and xformers are wired without."""
        return dataclasses.replace(cls.capabilities, masking=impl == "sdpa")

    @classmethod
    def layout_for(cls, impl: str) -> str:
        """ "bhnd" for sdpa; "bnhd" for flash_attn and xformers."""
        return LAYOUT_BY_IMPL.get(impl, cls.capabilities.layout)

    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: NoParams, impl: str) -> list[str]:
        reasons = super().not_supported_reasons(problem, params, impl)
        if impl not in cls.impls:
            return reasons
        where = f"{cls.name}/{impl}"
        on_cuda = problem.device == "cuda"
        if impl != "sdpa" and not on_cuda:
            reasons.append(f"{where} runs on CUDA only")
        half_only = impl == "flash_attn" or (impl == "sdpa" and on_cuda)  # xformers also does fp32
        if half_only and problem.dtype not in HALF_DTYPES:
            on = " on CUDA" if impl == "sdpa" else ""
            reasons.append(f"{where} supports fp16/bf16 only{on}, not {problem.dtype}")
        if half_only and problem.head_dim > MAX_HEAD_DIM:
            reasons.append(f"{where} supports head_dim <= {MAX_HEAD_DIM}, not {problem.head_dim}")
        if reasons or not device_available(problem.device):  # reasons include missing packages
            return reasons
        why = probe(
            impl, problem.device, problem.dtype, problem.head_dim, problem.causal, problem.needs_backward,
            problem.masked,
        )  # fmt: skip
        if why is not None:
            mode = "causal" if problem.causal else "non-causal"
            grad = " with backward" if problem.needs_backward else ""
            reasons.append(
                f"{where} cannot run {problem.dtype} {mode} head_dim={problem.head_dim}{grad} "
                f"on {problem.device}: {why}"
            )
        return reasons

    @classmethod
    def feature_dim(cls, problem: Problem, params: NoParams) -> int | None:
        return None

    @classmethod
    def state_bytes(cls, problem: Problem, params: NoParams, impl: str) -> float | None:
        """A causal decoder's K and V cache: 2 N d per head, in the input dtype."""
        return float(2 * problem.seq_len * problem.head_dim * problem.heads * element_bytes(problem))

    @classmethod
    def flop_terms(cls, problem: Problem, params: NoParams, impl: str) -> dict[str, float]:
        """4 N^2 d per (batch, head) forward, times (N + 1) / 2N when causal (the kernel skips the
        blocks above the diagonal); with a key-padding mask the causal triangle travels inside the
        mask, so every block is computed. Backward BWD_FACTOR = 2.5x (it recomputes S).

        Everything happens inside one fused kernel; FlopCounterMode counts it through torch's flash
        formula on CUDA and, on CPU, through `flop_counter_formulas` (the same count)."""
        n, d = problem.seq_len, problem.head_dim
        fraction = _causal_fraction(n, n, problem.causal and not problem.masked)
        fwd = problem.batch * problem.heads * 4.0 * n * n * d * fraction
        return {"attention_matmul": by_mode(problem, fwd, BWD_FACTOR * fwd)}

    @classmethod
    def flop_counter_formulas(cls, impl: str) -> dict[Any, Any]:
        """torch's FlopCounterMode has no formula for the CPU flash kernel; these count it as
        FlashAttention does (see `flop_terms`). Other impls run on CUDA only."""
        if impl != "sdpa":
            return {}
        ops = torch.ops.aten
        return {
            ops._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd_flops,
            ops._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd_flops,
        }

    @classmethod
    def bytes_moved(cls, problem: Problem, params: NoParams, impl: str) -> float:
        """IO-aware: q, k, v, o (and dO, dq, dk, dv) only; the N x N matrix stays on chip."""
        return io_bytes_for_mode(problem)

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """q, k, v in `layout_for(impl)` ((B, H, N, d) or (B, N, H, d)) -> same shape and dtype.
        key_padding_mask: (B, N) bool, True = real token (sdpa only)."""
        if self.impl != "sdpa":
            check_no_mask(self, key_padding_mask)
        return attend(self.impl, q, k, v, causal, key_padding_mask)
