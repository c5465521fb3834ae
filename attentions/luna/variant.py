"""`luna`: LUNA, learnable-kernel linear attention (Abbasi et al. 2025, arXiv 2512.08061).

phi(x) = h(x) / sqrt(m) [psi_l(w_i . x' + b_i)], D = m L, then linear attention with phi (see
naive.py for the exact definition, features.py for the map the impls use). Impls:
    naive   : dense.luna_attention_dense in fp32 (whole-sequence features, every MLP activation
              materialized; O(N^2) when causal). Not naive.py, the reference it is checked against.
    chunked : chunked.luna_attention_chunked, blocks of `chunk` tokens, checkpointed per block
    triton  : triton_autograd.luna_attention_triton, fused Triton kernels (phi in registers, custom
              backward); CUDA, or CPU under TRITON_INTERPRET=1; no ch_rms, no learned envelope, no mask
    compile : compiled.compiled_luna, torch.compile of the chunked algorithm with every block at once
              (the baseline before hand-written kernels); CPU (inductor needs a C++ compiler) and CUDA
              (needs triton); no ch_rms
Parameters are fp32 on the given device; inputs of any dtype are read in fp32 and the output is
cast back to the input dtype. naive and chunked take a key-padding mask (padded keys: phi(k) = 0).
`window: W` > 0 (naive and chunked; triton and compile refuse it): LoLCATs' window + linear hybrid,
exact softmax scores inside a sliding window and phi scores outside, one normalizer (README).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode as _dispatch_mode

from attentions.luna.chunked import features_blockwise, luna_attention_chunked, luna_hybrid_chunked
from attentions.luna.compiled import compiled_luna, luna_attention_blocked
from attentions.luna.cost_model import luna_flop_terms
from attentions.luna.dense import luna_attention_dense
from attentions.luna.features import LunaWeights, init_luna_params
from attentions.luna.fit import fit_luna
from harness.measure.costs import element_bytes, io_bytes_for_mode
from harness.plugins.contract import (
    AttentionVariant,
    Capabilities,
    FitResult,
    FitSpec,
    Problem,
    Teacher,
    Tolerance,
    check_no_mask,
)

ENVELOPES = ("none", "learned")
CH_RMS_CAUSAL_REASON = "luna ch_rms pools over all tokens, so it has no causal form"
TRITON_CPU_REASON = "luna/triton runs on CUDA, or on CPU only under TRITON_INTERPRET=1 (slow; for tests)"
TRITON_MAX_FEATURES = TRITON_MAX_HEAD_DIM = 128  # triton_launch.MAX_FEATURES / MAX_HEAD_DIM
WINDOW_REASON = "luna/{impl} has no sliding-window hybrid (window > 0: use impl chunked or naive)"
FP32_BYTES = 4
FIT_BLOCK = 256  # tokens per checkpointed feature block during fit (bounds its memory only)


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"luna param {name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class LunaParams:
    """Hyperparameters. D = m * L features per token."""

    m: int = 8  # projections w_i
    L: int = 8  # channel functions psi_l
    hidden: int = 64  # width of the scalar MLP
    shared_channels: bool = False  # one 1->hidden->L MLP (True) or L separate 1->hidden->1 MLPs
    nonneg: bool = True  # final ReLU on psi: non-negative features, attention weights >= 0
    envelope: str = "none"  # "none": h = 1; "learned": h(x) = softplus(a . x' + c)
    ch_rms: bool = False  # divide each feature channel by its RMS over the sequence (non-causal only)
    eps: float = 1e-6  # in the attention denominator and the channel RMS
    chunk: int = 128  # token block of the chunked impl
    window: int = 0  # > 0: exact softmax scores in a sliding window, phi scores outside (LoLCATs hybrid)
    alive_init: bool = False  # raise b2 at init so that no channel starts dead at u = 0 (features.py)

    def __post_init__(self) -> None:
        for name, low in (("m", 1), ("L", 1), ("hidden", 1), ("chunk", 1), ("window", 0)):
            _check_int(name, getattr(self, name), low)
        for name in ("shared_channels", "nonneg", "ch_rms", "alive_init"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"luna param {name} must be a bool, got {getattr(self, name)!r}")
        if self.envelope not in ENVELOPES:
            raise ValueError(f"luna param envelope must be one of {ENVELOPES}, got {self.envelope!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not self.eps > 0:
            raise ValueError(f"luna param eps must be a float > 0, got {self.eps!r}")


def _param_count(params: LunaParams, d: int) -> int:
    """Number of learnable scalars: W, b, w1, b1, w2, b2 (+ env_a, env_c)."""
    G = 1 if params.shared_channels else params.L
    count = params.m * (d + 1) + 2 * G * params.hidden + params.L * (params.hidden + 1)
    return count + (d + 1 if params.envelope == "learned" else 0)


def _triton_reasons(problem: Problem, params: LunaParams) -> list[str]:
    """Why impl "triton" cannot run this case (empty: it can)."""
    reasons = [WINDOW_REASON.format(impl="triton")] if params.window > 0 else []
    if problem.device == "cpu" and os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on"):
        reasons.append(TRITON_CPU_REASON)
    if params.ch_rms:
        reasons.append("luna/triton does not implement ch_rms (use impl chunked)")
    if params.envelope != "none":
        reasons.append(f"luna/triton does not implement envelope={params.envelope!r} (use impl chunked)")
    if params.m * params.L > TRITON_MAX_FEATURES:
        reasons.append(f"luna/triton supports m*L <= {TRITON_MAX_FEATURES}")
    if problem.head_dim > TRITON_MAX_HEAD_DIM:
        reasons.append(f"luna/triton supports head_dim <= {TRITON_MAX_HEAD_DIM}")
    return reasons


def _compile_reasons(problem: Problem, params: LunaParams) -> list[str]:
    """Why impl "compile" cannot run this case (empty: it can)."""
    reasons = [WINDOW_REASON.format(impl="compile")] if params.window > 0 else []
    if params.ch_rms:
        reasons.append("luna/compile does not implement ch_rms (use impl chunked)")
    compilers = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++"]
    if problem.device == "cpu" and not any(shutil.which(c) for c in compilers):
        reasons.append(f"luna/compile on CPU needs a C++ compiler for inductor (none of {compilers} found)")
    if problem.device == "cuda" and importlib.util.find_spec("triton") is None:
        reasons.append("luna/compile on CUDA needs triton (inductor's GPU code generator)")
    return reasons


class LunaAttention(AttentionVariant):
    """LUNA with learnable W, b, scalar MLPs psi (and envelope), distilled to softmax by `fit`."""

    name: ClassVar[str] = "luna"
    version: ClassVar[int] = 1
    paper: ClassVar[str] = (
        "Abbasi et al. 2025, LUNA: Linear Universal Neural Attention with Generalization Guarantees, "
        "arXiv 2512.08061"
    )
    reference_impl: ClassVar[str] = "attentions/luna/naive.py (Eq. 11 and Listing 1 of the paper)"
    reference: ClassVar[str] = "attentions.luna.naive:reference"
    # Worst relative Frobenius errors measured (conformance inputs; CPU, torch 2.13): naive and chunked,
    # fp32 vs naive.py over N 63/1000, d 32..128, causal and not: 4.2e-7 outputs, 7.7e-6 gradients
    # (q, k, v and the parameters); bf16 inputs (computed in fp32) vs fp32: 1.6e-3 / 2.5e-3.
    tolerances: ClassVar[dict[str, Tolerance]] = {
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
    }
    flop_rtol: ClassVar[float] = 1e-9  # naive and chunked (checkpoint recomputation included) exactly
    Params: ClassVar[type] = LunaParams
    impls: ClassVar[tuple[str, ...]] = ("naive", "chunked", "triton", "compile")
    impl_requires: ClassVar[dict[str, tuple[str, ...]]] = {"triton": ("triton",)}
    capabilities: ClassVar[Capabilities] = Capabilities(learnable=True, masking=True)

    def __init__(
        self,
        params: LunaParams,
        impl: str,
        heads: int,
        head_dim: int,
        device: str = "cpu",
        dtype: str = "fp32",
    ) -> None:
        super().__init__(params, impl, heads, head_dim, device, dtype)
        init = init_luna_params(
            head_dim, params.m, params.L, params.hidden, params.shared_channels, alive=params.alive_init
        )
        names = ["W", "b", "w1", "b1", "w2", "b2"]
        if params.envelope == "learned":
            names += ["env_a", "env_c"]
        for key in names:
            self.register_parameter(key, nn.Parameter(init[key].to(device=device, dtype=torch.float32)))
        if (
            params.window > 0
        ):  # the hybrid's per-head log-weight of the feature scores (LoLCATs' window factor)
            self.log_linear_scale = nn.Parameter(torch.zeros(heads, device=device))

    @classmethod
    def capabilities_for(cls, impl: str) -> Capabilities:
        """naive, chunked and compile take a key-padding mask; the Triton kernels have no mask argument."""
        return dataclasses.replace(cls.capabilities, masking=impl != "triton")

    # ----- description --------------------------------------------------------------------
    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: LunaParams, impl: str) -> list[str]:
        reasons = super().not_supported_reasons(problem, params, impl)
        if params.ch_rms and problem.causal:
            reasons.append(CH_RMS_CAUSAL_REASON)
        if impl == "triton":
            reasons += _triton_reasons(problem, params)
        if impl == "compile":
            reasons += _compile_reasons(problem, params)
        return reasons

    @classmethod
    def feature_dim(cls, problem: Problem, params: LunaParams) -> int:
        return params.m * params.L

    @classmethod
    def state_bytes(cls, problem: Problem, params: LunaParams, impl: str) -> float:
        """Per head the fp32 D x d state and D normalizer; with a window also the last W keys and values
        (input dtype) that the exact part reads."""
        D, d = params.m * params.L, problem.head_dim
        window = 2.0 * min(params.window, problem.seq_len) * d * element_bytes(problem)
        return problem.heads * ((D * d + D) * FP32_BYTES + window)

    @classmethod
    def flop_terms(cls, problem: Problem, params: LunaParams, impl: str) -> dict[str, float]:
        """Features of q and k (projection, scalar MLP, envelope) + linear attention, per impl, as
        `cost_model.luna_flop_terms` counts what each executes (checkpoint recomputation included)."""
        return luna_flop_terms(problem, params, impl)

    @classmethod
    def bytes_moved(cls, problem: Problem, params: LunaParams, impl: str) -> float:
        """I/O minimum a fused kernel could reach: q, k, v, o (+ dO, dq, dk, dv) and the fp32 parameters
        (read once in the forward; read and their gradients written in the backward). The naive impl
        moves far more: it writes and reads B*H*N*m*hidden (or *L*hidden) MLP activations."""
        param_bytes = 4.0 * _param_count(params, problem.head_dim)
        per_mode = {"fwd": param_bytes, "bwd": 2 * param_bytes, "fwd_bwd": 3 * param_bytes}[problem.mode]
        return io_bytes_for_mode(problem) + per_mode

    # ----- per case -----------------------------------------------------------------------
    def weights(self) -> LunaWeights:
        """The learnable tensors, envelope ones None when the envelope is off."""
        env = (self.env_a, self.env_c) if self.params.envelope == "learned" else (None, None)
        return LunaWeights(self.W, self.b, self.w1, self.b1, self.w2, self.b2, *env)

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """q, k, v: (B, H, N, d) any float dtype; key_padding_mask (B, N) bool, True = real (naive,
        chunked) -> (B, H, N, d) in q's dtype (computed in fp32)."""
        p, w, mask = self.params, self.weights(), key_padding_mask
        beta = self.log_linear_scale if p.window > 0 else None
        if p.ch_rms and causal:
            raise ValueError(CH_RMS_CAUSAL_REASON)
        if p.window > 0 and self.impl in ("triton", "compile"):
            raise ValueError(WINDOW_REASON.format(impl=self.impl))
        if self.impl == "naive":
            out = luna_attention_dense(q, k, v, w, causal, p.nonneg, p.eps, p.ch_rms, mask, p.window, beta)
        elif self.impl == "chunked" and p.window > 0:
            out = luna_hybrid_chunked(
                q, k, v, w, causal, p.nonneg, p.eps, p.ch_rms, p.chunk, mask, p.window, beta
            )
        elif self.impl == "chunked":
            out = luna_attention_chunked(q, k, v, w, causal, p.nonneg, p.eps, p.ch_rms, p.chunk, mask)
        elif self.impl == "triton":
            check_no_mask(self, mask)
            if p.ch_rms:
                raise ValueError("luna/triton does not implement ch_rms")
            from attentions.luna.triton_autograd import luna_attention_triton  # imports triton

            out = luna_attention_triton(q, k, v, w, causal, p.nonneg, p.eps)
        elif self.impl == "compile":
            if p.ch_rms:
                raise ValueError("luna/compile does not implement ch_rms")
            # Dynamo cannot trace under a TorchDispatchMode (FlopCounterMode, debug modes): there the
            # function it compiles runs eagerly, the same aten graph; `info()["compiled"]` says which ran.
            self._compiled = _dispatch_mode() is None
            fn = compiled_luna if self._compiled else luna_attention_blocked
            out = fn(q, k, v, w, causal, p.nonneg, p.eps, p.chunk, mask)
        else:
            raise ValueError(f"luna has no impl {self.impl!r} (impls: {', '.join(self.impls)})")
        return out.to(q.dtype)

    def info(self) -> dict[str, object]:
        """compile: whether the last call ran compiled (False only under a TorchDispatchMode)."""
        return {"compiled": self._compiled} if self.impl == "compile" and hasattr(self, "_compiled") else {}

    def fit(
        self, calib_batches: Sequence[tuple[Tensor, Tensor, Tensor]], teacher: Teacher, spec: FitSpec
    ) -> FitResult:
        """Distil phi to the softmax teacher (see fit.py): row-wise KL, Adam, fp32, seeded by spec.seed."""
        p = self.params

        def features(x: Tensor) -> Tensor:
            return features_blockwise(x, self.weights(), p.nonneg, FIT_BLOCK)

        return fit_luna(
            features, self.parameters(), calib_batches, teacher, spec,
            eps=p.eps, ch_rms=p.ch_rms, device=self.W.device, window=p.window,
            log_scale=self.log_linear_scale if p.window > 0 else None,
        )  # fmt: skip
