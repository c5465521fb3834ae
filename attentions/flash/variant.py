"""`flash`: FlashAttention, exact softmax attention that never materializes the N x N matrix.

Three implementations of the same function (Dao et al. 2022; Dao 2023), chosen by `impl`:

    sdpa        torch SDPA restricted to its flash backend (never the math fallback); (B, H, N, d).
                CUDA: fp16/bf16, head_dim <= 256, sm80+. CPU: torch's flash CPU kernel, which on
                torch 2.13 ran fp32/bf16/fp16, causal and not, with backward, head dims 7..512.
    flash_attn  Dao-AILab `flash_attn.flash_attn_func`; (B, N, H, d); CUDA, fp16/bf16, d <= 256.
    xformers    `xformers.ops.memory_efficient_attention`; (B, N, H, d); CUDA; causal through
                `LowerTriangularMask()`.

Besides the static rules, `not_supported_reasons` runs the impl once on a tiny input of the
case's device, dtype, head dim and causality (and backward if needed) when it can, so an
unsupported combination is a readable `skipped` reason with the backend's own words, not a
crash in the middle of a sweep.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.measure.costs import causal_fraction, io_bytes_for_mode, scale_for_mode
from harness.plugins.contract import DTYPES, AttentionVariant, Capabilities, NoParams, Problem

LAYOUT_BY_IMPL = {"sdpa": "bhnd", "flash_attn": "bnhd", "xformers": "bnhd"}
HALF_DTYPES = ("fp16", "bf16")
MAX_HEAD_DIM = 256  # flash kernels on CUDA (SDPA flash and flash_attn 2)
PROBE_SEQ_LEN = 16


def attend(impl: str, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """Run `impl` on q, k, v in its layout (see `LAYOUT_BY_IMPL`); output in that layout and dtype."""
    if impl == "sdpa":
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # restricted: raises instead of falling back
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
def probe(impl: str, device: str, dtype: str, head_dim: int, causal: bool, backward: bool) -> str | None:
    """Run `impl` once on a tiny input; None if it worked, else the backend's reason.

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
            out = attend(impl, q, k, v, causal)
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


class FlashAttention(AttentionVariant):
    """Exact attention through a FlashAttention kernel; layout per impl (`layout_for`)."""

    name = "flash"
    version = 1
    paper = (
        "Dao et al. 2022, FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness, "
        "arXiv:2205.14135; Dao 2023, FlashAttention-2, arXiv:2307.08691"
    )
    reference_impl = "attentions/flash/naive.py (exact softmax in fp32); Dao-AILab/flash-attention"
    Params = NoParams
    impls = ("sdpa", "flash_attn", "xformers")
    capabilities = Capabilities(exact=True, layout="bhnd")  # layout of the default impl, sdpa
    impl_requires = {"flash_attn": ("flash_attn",), "xformers": ("xformers",)}

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
            impl, problem.device, problem.dtype, problem.head_dim, problem.causal, problem.needs_backward
        )
        if why is not None:
            mode = "causal" if problem.causal else "non-causal"
            grad = " with backward" if problem.needs_backward else ""
            reasons.append(
                f"{where} cannot run {problem.dtype} {mode} head_dim={problem.head_dim}{grad} "
                f"on {problem.device}: {why}"
            )
        return reasons

    @classmethod
    def feature_dim(cls, params: NoParams, problem: Problem) -> int | None:
        return None

    @classmethod
    def flops(cls, problem: Problem, params: NoParams) -> float:
        """4 N^2 d per (batch, head) forward, x ~1/2 causal; backward 2.5x (it recomputes P)."""
        n, d = problem.seq_len, problem.head_dim
        fwd = problem.batch * problem.heads * 4.0 * n * n * d * causal_fraction(problem)
        return scale_for_mode(fwd, problem, bwd_factor=2.5)

    @classmethod
    def bytes_moved(cls, problem: Problem, params: NoParams) -> float:
        """IO-aware: q, k, v, o (and dO, dq, dk, dv) only; the N x N matrix stays on chip."""
        return io_bytes_for_mode(problem)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """q, k, v in `layout_for(impl)` ((B, H, N, d) or (B, N, H, d)) -> same shape and dtype."""
        return attend(self.impl, q, k, v, causal)
