"""Linear attention on given features, alone or as the window + linear hybrid (LoLCATs' form), by blocks.

Shared by the learnable-map variants (`hedgehog`, `luna` with `window: W`). For row i, with exact
scores s_ij = q_i . k_j / sqrt(d) and feature scores phi(q_i) . phi(k_j):

    weight_ij ∝ exp(s_ij)            j in the window: i-W < j <= i (causal), |i - j| < W (non-causal)
                phi(q_i) . phi(k_j)  every other visible key (the linear part)
    out_i = sum_j weight_ij v_j / (sum_j weight_ij + eps)        one normalizer over both parts

W = 0 is plain linear attention. Features arrive scaled, with log-scales: the true phi(x_t) is
phi_t * exp(l_t) (hedgehog: phi_t = exp(+-u_t - max|u_t|) <= 1 and l_t = max|u_t|; luna: l_t = 0), so
that nothing here ever exponentiates a large number:

    keys      K_j = max_{j' <= j} l_j' (running max over real keys; padded keys count as 0) and each key
              is carried as phi_j exp(l_j - K_j) <= phi_j
    row i     c_i = max(l_i + K_i, max_{j in window} s_ij); both parts are multiplied by exp(-c_i):
              window  exp(s_ij - c_i) <= 1
              linear  (phi_i . phi_j exp(l_j - K_j)) exp(l_i + K_j - c_i), exponent <= 0 for j <= i
              and eps becomes eps exp(-c_i). The factor cancels in the ratio exactly: c_i and K are
              detached (the function does not depend on them, so neither does its gradient).

Causal, by blocks of C rows [s, s+C): keys j < s - W + 1 are out of the window for every row of the
block and live in a carried state S = sum_j phi_j exp(l_j - Kref) [v_j, 1] (D, d + 1), Kref the K of
its last key, rescaled when Kref grows; keys [s - W + 1, s + C) form one (C, C + W - 1) tile holding
the window scores and the feature scores of the not-yet-carried keys, masked per row. Memory: one
tile and one state per block, linear in N; never an (N, D, d) cumsum, never the N x N weights.
Non-causal with W >= 1: the causal pass over keys j <= i plus the same pass on the reversed sequence
with the diagonal excluded (keys j > i), merged with their row constants (log-sum-exp merge); no
subtraction of an in-window part from a total, so nothing cancels catastrophically.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TINY = 1e-30  # floor of the normalizer: only rows whose visible keys are all padded reach it (output 0)


def _ones_column(v: Tensor) -> Tensor:
    """[v, 1]: (B, H, N, d) -> (B, H, N, d + 1), so one product gives numerator and normalizer."""
    return torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)


def causal_pass(
    q: Tensor, k: Tensor, v1: Tensor, phi_q: Tensor, lq: Tensor, phi_k: Tensor, lk: Tensor,
    window: int, chunk: int, strict: bool = False, mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Scaled numerator and normalizer of keys j <= i (j < i when `strict`), and the row constants.

    q, k: (B, H, N, d) (read only when window > 0); v1: (B, H, N, d + 1) = [v, 1] with padded keys'
    rows anything; phi_q, phi_k: (B, H, N, D) scaled features (padded keys: phi_k = 0); lq, lk: (B, H, N)
    log-scales, detached (padded keys: lk = 0); mask (B, N) bool, True = real key (padded keys get no
    window score). Returns (num1 (B, H, N, d + 1) = sum_j w'_ij [v_j, 1],
    c (B, H, N)) with w'_ij = weight_ij exp(-c_i).
    """
    B, H, N, _ = phi_q.shape
    span0 = max(window - 1, 0)  # tile keys start span0 tokens before the block
    K = torch.cummax(lk, dim=-1).values  # (B, H, N)
    fk = phi_k * torch.exp(lk - K)[..., None]  # each key relative to its own running max: <= phi_k
    scale = q.shape[-1] ** -0.5
    state, kref, carried = None, None, 0  # keys [0, carried) are in the state
    outs, consts = [], []
    for s in range(0, N, chunk):
        e = min(s + chunk, N)
        t0 = max(s - span0, 0)
        rows = torch.arange(s, e, device=q.device)[:, None]
        cols = torch.arange(t0, e, device=q.device)[None, :]
        visible = cols < rows if strict else cols <= rows
        in_window = visible & (cols > rows - window)
        linear = visible & ~in_window  # (c, t)
        if mask is not None:
            in_window = in_window & mask[:, None, None, t0:e]  # (B, 1, c, t)
        Kq = K[..., s:e]
        c = lq[..., s:e] + Kq  # (B, H, c): scale of the linear part
        if window > 0:
            scores = (q[:, :, s:e] @ k[:, :, t0:e].transpose(-1, -2)) * scale  # (B, H, c, t)
            scores = scores.masked_fill(~in_window, -math.inf)
            c = torch.maximum(c, scores.detach().amax(dim=-1))
        c = c.detach()
        lin_exp = (lq[..., s:e, None] + K[..., None, t0:e] - c[..., None]).masked_fill(~linear, -math.inf)
        tile = (phi_q[:, :, s:e] @ fk[:, :, t0:e].transpose(-1, -2)) * torch.exp(lin_exp)
        if window > 0:
            tile = tile + torch.exp(scores - c[..., None])
        num1 = tile @ v1[:, :, t0:e]  # (B, H, c, d + 1)
        if state is not None:
            num1 = num1 + (phi_q[:, :, s:e] @ state) * torch.exp(lq[..., s:e] + kref - c)[..., None]
        outs.append(num1)
        consts.append(c)
        new_carried = max(e - span0, 0) if e < N else carried  # the last block's keys are never read
        if new_carried > carried:
            a, b = carried, new_carried
            new_ref = K[..., b - 1 : b]  # (B, H, 1)
            inc = (fk[:, :, a:b] * torch.exp(K[..., a:b] - new_ref)[..., None]).transpose(-1, -2) @ v1[
                :, :, a:b
            ]
            state = inc if state is None else state * torch.exp(kref - new_ref)[..., None] + inc
            kref, carried = new_ref, new_carried
    return torch.cat(outs, dim=2), torch.cat(consts, dim=2)


def hybrid_attention_chunked(
    q: Tensor, k: Tensor, v: Tensor, phi_q: Tensor, lq: Tensor, phi_k: Tensor, lk: Tensor,
    causal: bool, window: int, chunk: int, eps: float = 0.0, mask: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The hybrid (window >= 1) or, causal, plain linear attention (window 0) on scaled features.

    q, k, v: (B, H, N, d); phi_q, phi_k: (B, H, N, D) scaled features, lq, lk: (B, H, N) their
    log-scales (>= 0); mask (B, N) bool, True = real key -> (B, H, N, d) in the features' dtype.
    Non-causal with window 0 is two GEMMs, not this (the variants do it themselves).
    """
    if chunk < 1 or window < 0:
        raise ValueError(f"chunk must be >= 1 and window >= 0, got chunk={chunk}, window={window}")
    if not causal and window == 0:
        raise ValueError("non-causal linear attention without a window is two GEMMs, not a blocked pass")
    dtype = phi_q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    lq, lk = lq.detach(), lk.detach()
    if mask is not None:
        real = mask[:, None, :]
        phi_k = torch.where(real[..., None], phi_k, torch.zeros_like(phi_k))
        lk = torch.where(real, lk, torch.zeros_like(lk))
    v1 = _ones_column(v)
    num1, c = causal_pass(q, k, v1, phi_q, lq, phi_k, lk, window, chunk, mask=mask)
    if not causal:
        rmask = None if mask is None else mask.flip(-1)
        rq, rk, rv1, rphi_q, rphi_k = (x.flip(2) for x in (q, k, v1, phi_q, phi_k))
        rnum1, rc = causal_pass(
            rq, rk, rv1, rphi_q, lq.flip(-1), rphi_k, lk.flip(-1), window, chunk, True, rmask
        )
        rnum1, rc = rnum1.flip(2), rc.flip(-1)
        top = torch.maximum(c, rc)
        num1 = num1 * torch.exp(c - top)[..., None] + rnum1 * torch.exp(rc - top)[..., None]
        c = top
    den = (num1[..., -1] + eps * torch.exp(-c)).clamp_min(TINY)
    return num1[..., :-1] / den[..., None]
