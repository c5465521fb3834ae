"""The delta rule by chunks: the WY / UT-transform algorithm of Yang et al. 2024 (gated: Yang et al. 2025).

Recurrence (per batch and head; h = S^T, (d_k, d_v), alpha_t = 1 without the gate):
    h_t = alpha_t h_{t-1} + beta_t k_t (v_t - alpha_t h_{t-1}^T k_t)^T,    o_t = h_t^T q_t

For a block of c tokens entering with state h, G_t = sum_{s<=t} log alpha_s inside the block,
Gamma_ij = exp(G_i - G_j) (1 without the gate):
    A  = I + strict_tril(diag(beta) (Gamma o K K^T))          unit lower triangular (c, c)
    W  = A^-1 diag(beta) diag(exp(G)) K,  U = A^-1 diag(beta) V    (the UT transform: one solve)
    U' = U - W h                                                the block's effective updates
    O  = diag(exp(G)) Q h + tril(Gamma o Q K^T) U'
    h  = exp(G_c) h + (diag(exp(G_c - G)) K)^T U'
Every exponent is <= 0 (log alpha <= 0; masked above the diagonal before exp), so nothing
overflows. The solve is `torch.linalg.solve_triangular` (unitriangular: forward substitution,
backward stable), on the right-hand sides [beta exp(G) K, beta V] at once. State in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

L2_EPS = 1e-6  # inside the square root of the L2 norm (fla's l2norm uses the same)


def l2_normalize(x: Tensor) -> Tensor:
    """x / sqrt(|x|^2 + 1e-6) over the last dim. (..., d) -> (..., d)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + L2_EPS)


def delta_rule_chunked(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, chunk: int) -> Tensor:
    """q, k: (B, H, N, d_k) (q already normalized and scaled, k normalized); v: (B, H, N, d_v);
    beta: (B, H, N) in [0, 1]; g: (B, H, N) log decays <= 0, or None (ungated) -> (B, H, N, d_v)."""
    B, H, N, dk = k.shape
    dv = v.shape[-1]
    h = k.new_zeros(B, H, dk, dv)
    outs = []
    for start in range(0, N, chunk):
        stop = min(start + chunk, N)
        c = stop - start
        qc, kc, vc, bc = q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], beta[:, :, start:stop]
        kk = kc @ kc.transpose(-1, -2)  # (B, H, c, c)
        qk = qc @ kc.transpose(-1, -2)
        ones = torch.ones(c, c, dtype=torch.bool, device=k.device)
        if g is not None:
            G = g[:, :, start:stop].cumsum(dim=-1)  # (B, H, c)
            diff = (G[..., :, None] - G[..., None, :]).masked_fill(~ones.tril(), -torch.inf)
            decay = diff.exp()  # Gamma, 0 above the diagonal
            kk, qk = kk * decay, qk * decay
            g_in = G.exp()[..., None]  # (B, H, c, 1): decay from the block start to t
            g_out = (G[..., -1:] - G).exp()[..., None]  # decay from t to the block end
            g_all = G[..., -1].exp()[..., None, None]  # over the whole block
            kw, qh, ku = kc * g_in, qc * g_in, kc * g_out
        else:
            kw, qh, ku, g_all = kc, qc, kc, None
        A = (bc[..., None] * kk).tril(-1) + torch.eye(c, dtype=k.dtype, device=k.device)
        rhs = torch.cat([bc[..., None] * kw, bc[..., None] * vc], dim=-1)  # (B, H, c, dk + dv)
        X = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
        W, U = X[..., :dk], X[..., dk:]
        U = U - W @ h  # U' (B, H, c, dv)
        outs.append(qh @ h + qk.masked_fill(~ones.tril(), 0.0) @ U)
        h = (h if g_all is None else h * g_all) + ku.transpose(-1, -2) @ U
    return torch.cat(outs, dim=2)
