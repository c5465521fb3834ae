"""The hybrid's attention weights of sampled query rows (what `fit` distils), on scaled features.

Same function as chunked.hybrid_attention_chunked (see its docstring for the scales), written as
explicit weights of R rows against all N keys: the window part exp(s_ij - a_i) (a_i its row max), the
linear part (phi_i . phi_j exp(l_j - L)) with L = max_j l_j (a bound exp(l_i + L) factored out), each
rescaled to the row's largest actual log-mass M_i and divided by sum_j w_ij + eps exp(-M_i).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def hybrid_row_weights(
    q_rows: Tensor, k: Tensor, phi_q: Tensor, lq: Tensor, phi_k: Tensor, lk: Tensor,
    rows: Tensor, causal: bool, window: int, eps: float = 0.0, log_scale: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """q_rows: (B, H, R, d) queries of `rows` (R,), k: (B, H, N, d); phi_q (B, H, R, D), lq (B, H, R);
    phi_k (B, H, N, D), lk (B, H, N); log_scale (H,) beta of the feature scores or None
    -> (B, H, R, N) weights, rows summing to 1 (less eps' share)."""
    cols = torch.arange(k.shape[-2], device=k.device)
    rel = cols[None, :] - rows[:, None]  # (R, N): j - i
    visible = rel <= 0 if causal else torch.ones_like(rel, dtype=torch.bool)
    in_window = visible & (rel > -window) & (rel < window)
    linear = visible & ~in_window
    lq, lk = lq.detach(), lk.detach()
    top_k = lk.amax(dim=-1, keepdim=True)  # (B, H, 1)
    fk = phi_k * torch.exp(lk - top_k)[..., None]
    lin = (phi_q @ fk.transpose(-1, -2)).masked_fill(~linear, 0.0)  # feature scores * exp(-(l_i + L))
    parts = [(lin, lq + top_k + (0.0 if log_scale is None else log_scale[:, None]))]
    if window > 0:
        scores = (q_rows @ k.transpose(-1, -2)) * q_rows.shape[-1] ** -0.5
        scores = scores.masked_fill(~in_window, -math.inf)
        a = scores.detach().amax(dim=-1)
        a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
        parts.append((torch.exp(scores - a[..., None]), a))
    masses = torch.stack([c + torch.log(w.detach().sum(dim=-1)) for w, c in parts]).amax(dim=0)
    top = torch.where(torch.isfinite(masses), masses, torch.zeros_like(masses)).detach()
    weights = sum(w * torch.exp(c - top)[..., None] for w, c in parts)
    den = weights.sum(dim=-1, keepdim=True) + eps * torch.exp(-top)[..., None]
    return weights / torch.where(den > 0, den, torch.ones_like(den))
