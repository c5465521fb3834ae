"""Hedgehog attention in PyTorch (impl `chunked`): features, then linear attention or the window hybrid.

    non-causal, window 0: S = phi(K)^T [V, 1] (B, H, D, d + 1), out = phi(Q) S, numerator / normalizer;
                          keys scaled by exp(l_j - max_j l_j), queries by their own exp(-l_i): both cancel
    otherwise:            window_linear.chunked.hybrid_attention_chunked, blocks of `chunk` tokens
                          (causal: masked intra-block tile + carried state; the window part banded)

Padded keys (mask False) get phi(k) = 0 and no window score. Computed in W's dtype (fp32 in the
variant; fp64 in tests), output in that dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attentions.hedgehog.features import hedgehog_features
from attentions.window_linear.chunked import hybrid_attention_chunked, normalize


def _noncausal_linear(phi_q: Tensor, phi_k: Tensor, lk: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Two GEMMs. phi_q, phi_k: (B, H, N, D) scaled, lk (B, H, N) -> (B, H, N, d)."""
    if mask is not None:
        real = mask[:, None, :]
        phi_k = torch.where(real[..., None], phi_k, torch.zeros_like(phi_k))
        lk = torch.where(real, lk, torch.zeros_like(lk))
    fk = phi_k * torch.exp(lk - lk.amax(dim=-1, keepdim=True))[..., None]
    v1 = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)
    num1 = phi_q @ (fk.transpose(-1, -2) @ v1)  # (B, H, N, d + 1)
    return normalize(num1)


def hedgehog_attention_chunked(
    q: Tensor, k: Tensor, v: Tensor, W: Tensor, b: Tensor, form: str, causal: bool,
    window: int = 0, chunk: int = 64, mask: Tensor | None = None, log_scale: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """q, k, v: (B, H, N, d); W (H, F, d), b (H, F); mask (B, N) bool, True = real key; log_scale (H,):
    the window hybrid's learned log-weight of the feature scores (None: 0) -> (B, H, N, d)."""
    phi_q, lq = hedgehog_features(q, W, b, form)
    phi_k, lk = hedgehog_features(k, W, b, form)
    v = v.to(W.dtype)
    if not causal and window == 0:
        return _noncausal_linear(phi_q, phi_k, lk, v, mask)
    return hybrid_attention_chunked(
        q, k, v, phi_q, lq, phi_k, lk, causal, window, chunk, 0.0, mask, log_scale
    )
