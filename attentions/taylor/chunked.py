"""The second-order Taylor feature map and linear attention with it, non-causal and chunked causal.

    x      = q' d^-1/4  (q' = q, or q P with the fixed projection P: d -> d')
    phi(x) = [1, x, vec(x x^T) / sqrt(2)]                      D = 1 + d' + d'^2 features
    phi(x_q) . phi(x_k) = 1 + s + s^2 / 2,  s = q'.k' / sqrt(d)

Causal: blocks of `chunk` tokens; inside a block the weights 1 + s + s^2/2 come from the (c x c)
product x_q x_k^T (c d' per pair, not c D), masked to j <= i; earlier blocks enter through the
carried state S = sum phi(x_k) v^T (D, d) and normalizer z = sum phi(x_k) (D,). No (N, D, d)
prefix sum exists. State and normalizer are fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

INV_SQRT2 = 1.0 / math.sqrt(2.0)


def taylor_features(x: Tensor) -> Tensor:
    """phi(x) = [1, x, vec(x x^T) / sqrt(2)]. (..., e) -> (..., 1 + e + e^2)."""
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2) * INV_SQRT2
    return torch.cat([torch.ones_like(x[..., :1]), x, outer], dim=-1)


def taylor_noncausal(xq: Tensor, xk: Tensor, v: Tensor, eps: float, key_mask: Tensor | None) -> Tensor:
    """xq, xk: (B, H, N, e) scaled inputs of the map; v: (B, H, N, d); key_mask (B, 1, N, 1) float
    (1 real, 0 padded) or None -> (B, H, N, d), in xq's dtype."""
    phi_q, phi_k = taylor_features(xq), taylor_features(xk)  # (B, H, N, D)
    if key_mask is not None:
        phi_k = phi_k * key_mask
    state = phi_k.transpose(-1, -2) @ v  # (B, H, D, d)
    norm = phi_k.sum(dim=-2)  # (B, H, D)
    return (phi_q @ state) / ((phi_q @ norm[..., None]) + eps)


def taylor_causal_chunked(
    xq: Tensor, xk: Tensor, v: Tensor, eps: float, chunk: int, key_mask: Tensor | None
) -> Tensor:
    """Causal form by blocks of `chunk` tokens; same shapes as `taylor_noncausal`."""
    B, H, N, e = xq.shape
    d = v.shape[-1]
    D = 1 + e + e * e
    state = xq.new_zeros(B, H, D, d)
    norm = xq.new_zeros(B, H, D)
    outs = []
    for start in range(0, N, chunk):
        stop = min(start + chunk, N)
        cq, ck, cv = xq[:, :, start:stop], xk[:, :, start:stop], v[:, :, start:stop]
        s = cq @ ck.transpose(-1, -2)  # (B, H, c, c)
        local = (1.0 + s + 0.5 * s * s).tril()  # phi(q_i) . phi(k_j) for j <= i in the block
        phi_q, phi_k = taylor_features(cq), taylor_features(ck)  # (B, H, c, D)
        if key_mask is not None:
            cm = key_mask[:, :, start:stop]  # (B, 1, c, 1)
            local = local * cm.transpose(-1, -2)
            phi_k = phi_k * cm
        num = local @ cv + phi_q @ state
        den = local.sum(-1) + (phi_q @ norm[..., None]).squeeze(-1)  # (B, H, c)
        outs.append(num / (den[..., None] + eps))
        state = state + phi_k.transpose(-1, -2) @ cv
        norm = norm + phi_k.sum(dim=-2)
    return torch.cat(outs, dim=2)
