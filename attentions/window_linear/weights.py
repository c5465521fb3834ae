"""The hybrid's attention weights of sampled query rows (what `fit` distils), on scaled features.

Same function as chunked.hybrid_attention_chunked (see its docstring), written as explicit weights of
R rows against all N keys: w_ij = exp(s_ij - c_i) in the window, (phi_i . phi_j) exp(l_i + l_j - c_i)
for the other visible keys, divided by sum_j w_ij + eps exp(-c_i); c_i = max(l_i + max_j l_j,
max_{j in window} s_ij), detached (it cancels).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attentions.window_linear.chunked import TINY


def hybrid_row_weights(
    q_rows: Tensor, k: Tensor, phi_q: Tensor, lq: Tensor, phi_k: Tensor, lk: Tensor,
    rows: Tensor, causal: bool, window: int, eps: float = 0.0,
) -> Tensor:  # fmt: skip
    """q_rows: (B, H, R, d) queries of `rows` (R,), k: (B, H, N, d); phi_q (B, H, R, D), lq (B, H, R);
    phi_k (B, H, N, D), lk (B, H, N) -> (B, H, R, N) weights, rows summing to 1 (less eps' share)."""
    cols = torch.arange(k.shape[-2], device=k.device)
    rel = cols[None, :] - rows[:, None]  # (R, N): j - i
    visible = rel <= 0 if causal else torch.ones_like(rel, dtype=torch.bool)
    in_window = visible & (rel > -window) & (rel < window)
    linear = visible & ~in_window
    lq, lk = lq.detach(), lk.detach()
    top_k = lk.amax(dim=-1, keepdim=True)  # (B, H, 1)
    c = lq + top_k
    if window > 0:
        scores = (q_rows @ k.transpose(-1, -2)) * q_rows.shape[-1] ** -0.5
        scores = scores.masked_fill(~in_window, -math.inf)
        c = torch.maximum(c, scores.detach().amax(dim=-1))
    c = c.detach()
    fk = phi_k * torch.exp(lk - top_k)[..., None]
    lin_exp = (lq[..., None] + top_k[..., None] - c[..., None]).masked_fill(~linear, -math.inf)
    weights = (phi_q @ fk.transpose(-1, -2)) * torch.exp(lin_exp)
    if window > 0:
        weights = weights + torch.exp(scores - c[..., None])
    return weights / (weights.sum(dim=-1, keepdim=True) + eps * torch.exp(-c)[..., None]).clamp_min(TINY)
