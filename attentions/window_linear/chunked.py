"""Linear attention on given features, alone or as the window + linear hybrid (LoLCATs' form), by blocks.

Shared by the learnable-map variants (`hedgehog`, `luna` with `window: W`). For row i, with exact
scores s_ij = q_i . k_j / sqrt(d) and feature scores phi(q_i) . phi(k_j):

    weight_ij ∝ exp(s_ij)            j in the window: i-W < j <= i (causal), |i - j| < W (non-causal)
                phi(q_i) . phi(k_j)  every other visible key (the linear part)
    out_i = sum_j weight_ij v_j / (sum_j weight_ij + eps)        one normalizer over both parts

With a window the feature scores carry a learned per-head factor exp(beta_h) (`log_scale`, init 0):
LoLCATs' learned window factor (there sigmoid(w_h) on the window part), which lets a fit set the
absolute level of the feature scores against exp(s); without a window it would cancel, so it is absent.

W = 0 is plain linear attention. Features arrive scaled, with log-scales: the true phi(x_t) is
phi_t * exp(l_t) (hedgehog: phi_t = exp(+-u_t - max|u_t|) <= 1 and l_t = max|u_t|; luna: l_t = 0), so
that nothing here ever exponentiates a large number:

    keys      K_j = max_{j' <= j} l_j' (running max over real keys; padded keys count as 0) and each key
              is carried as phi_j exp(l_j - K_j) <= phi_j
    window    exp(s_ij - a_i), a_i = max_{j in window} s_ij: the largest term is exactly 1
    linear    (phi_i . phi_j exp(l_j - K_j)) exp(K_j - K_i) = feature score * exp(-(l_i + K_i)),
              exponent <= 0 for j <= i (every factor <= 1, strictly causal: K_i sees keys <= i only)
    merge     each part p of row i holds its numerator and normalizer on its own scale c_p; both are
              rescaled to M_i = max_p (c_p + log den_p), the row's largest actual log-mass, and eps
              becomes eps exp(-M_i). All these constants cancel in the ratio exactly, so they are
              detached (the function does not depend on them, so neither does its gradient).
              LoLCATs instead subtracts the window's row max from the window part only and leaves the
              linear part unscaled, which ties the two parts' relative weight to that max; here they
              stay on the same scale: the feature map has one job inside and outside, mimic exp(s).
              Limit (fp32): a linear part whose scores all sit more than ~87 nats below its bound
              l_i + K_i underflows to 0. Measured with Hedgehog's map (tests/test_hedgehog.py): exact to 2e-6
              at max|W x + b| = 107 (plain exp(u_q + u_k) overflows fp32 at 44 each), 0.15 off at 214.

Causal, by blocks of C rows [s, s+C): keys j < s - W + 1 are out of the window for every row of the
block and live in a carried state S = sum_j phi_j exp(l_j - Kref) [v_j, 1] (D, d + 1), Kref the K of
its last key, rescaled when Kref grows; keys [s - W + 1, s + C) form one (C, C + W - 1) tile holding
the window scores and the feature scores of the not-yet-carried keys, masked per row. Memory: one
tile and one state per block, linear in N; never an (N, D, d) cumsum, never the N x N weights.
Non-causal with W >= 1: the causal pass over keys j <= i plus the same pass on the reversed sequence
with the diagonal excluded (keys j > i), all four parts merged as above; no subtraction of an
in-window part from a total, so nothing cancels catastrophically.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def normalize(num1: Tensor) -> Tensor:
    """[numerator, normalizer] (..., d + 1) -> numerator / normalizer (..., d); a row whose normalizer is
    0 (every visible key padded) has numerator 0 and gives 0."""
    den = num1[..., -1:]
    return num1[..., :-1] / torch.where(den > 0, den, torch.ones_like(den))


def _ones_column(v: Tensor) -> Tensor:
    """[v, 1]: (B, H, N, d) -> (B, H, N, d + 1), so one product gives numerator and normalizer."""
    return torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)


Part = tuple[
    Tensor, Tensor
]  # (num1 (B, H, N, d + 1) = sum_j w'_ij [v_j, 1], c (B, H, N)): w'_ij = w_ij exp(-c_i)


def causal_pass(
    q: Tensor, k: Tensor, v1: Tensor, phi_q: Tensor, lq: Tensor, phi_k: Tensor, lk: Tensor,
    window: int, chunk: int, strict: bool = False, mask: Tensor | None = None,
) -> list[Part]:  # fmt: skip
    """The window part and the linear part of keys j <= i (j < i when `strict`), each on its own scale.

    q, k: (B, H, N, d) (read only when window > 0); v1: (B, H, N, d + 1) = [v, 1]; phi_q, phi_k:
    (B, H, N, D) scaled features (padded keys: phi_k = 0); lq, lk: (B, H, N) log-scales, detached
    (padded keys: lk = 0); mask (B, N) bool, True = real key (padded keys get no window score).
    Returns [linear part] or [window part, linear part]: window c_i = max of row i's window scores
    (0 when it has none), linear c_i = l_i + K_i (a bound of its feature scores).
    """
    N = phi_q.shape[-2]
    span0 = max(window - 1, 0)  # tile keys start span0 tokens before the block
    K = torch.cummax(lk, dim=-1).values  # (B, H, N)
    fk = phi_k * torch.exp(lk - K)[..., None]  # each key relative to its own running max: <= phi_k
    scale = q.shape[-1] ** -0.5
    state, kref, carried = None, None, 0  # keys [0, carried) are in the state
    win_num, win_c, lin_num = [], [], []
    for s in range(0, N, chunk):
        e = min(s + chunk, N)
        t0 = max(s - span0, 0)
        rows = torch.arange(s, e, device=q.device)[:, None]
        cols = torch.arange(t0, e, device=q.device)[None, :]
        visible = cols < rows if strict else cols <= rows
        in_window = visible & (cols > rows - window)
        linear = visible & ~in_window  # (c, t)
        if window > 0:
            if mask is not None:
                in_window = in_window & mask[:, None, None, t0:e]  # (B, 1, c, t)
            scores = (q[:, :, s:e] @ k[:, :, t0:e].transpose(-1, -2)) * scale  # (B, H, c, t)
            scores = scores.masked_fill(~in_window, -math.inf)
            top = scores.detach().amax(dim=-1)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # rows without window keys
            win_num.append(torch.exp(scores - top[..., None]) @ v1[:, :, t0:e])  # (B, H, c, d + 1)
            win_c.append(top)
        lin_exp = (K[..., None, t0:e] - K[..., s:e, None]).masked_fill(~linear, -math.inf)  # <= 0
        tile = (phi_q[:, :, s:e] @ fk[:, :, t0:e].transpose(-1, -2)) * torch.exp(lin_exp)
        num1 = tile @ v1[:, :, t0:e]
        if state is not None:
            num1 = num1 + (phi_q[:, :, s:e] @ state) * torch.exp(kref - K[..., s:e])[..., None]
        lin_num.append(num1)
        new_carried = max(e - span0, 0) if e < N else carried  # the last block's keys are never read
        if new_carried > carried:
            a, b = carried, new_carried
            new_ref = K[..., b - 1 : b]  # (B, H, 1)
            keys = fk[:, :, a:b] * torch.exp(K[..., a:b] - new_ref)[..., None]
            inc = keys.transpose(-1, -2) @ v1[:, :, a:b]
            state = inc if state is None else state * torch.exp(kref - new_ref)[..., None] + inc
            kref, carried = new_ref, new_carried
    linear_part = (torch.cat(lin_num, dim=2), lq + K)
    return (
        [(torch.cat(win_num, dim=2), torch.cat(win_c, dim=2)), linear_part] if window > 0 else [linear_part]
    )


def merge_parts(parts: list[Part], eps: float) -> Tensor:
    """(sum_p num_p) / (sum_p den_p + eps) from parts on their own scales -> (B, H, N, d).

    Written as a mixture of each part's own average num_p / den_p with weights den_p exp(c_p - M),
    M = max_p (c_p + log den_p) the row's largest actual log-mass (detached): every exponent <= 0, so
    no part's scale can overflow another's. Empty parts (den_p = 0) weigh 0; a row with no visible
    key gives 0.
    """
    avgs, logs, present = [], [], []
    for num1, c in parts:
        den = num1[..., -1]
        pos = den > 0
        safe = torch.where(pos, den, torch.ones_like(den))
        avgs.append(num1[..., :-1] / safe[..., None])
        logs.append(c + torch.log(safe))
        present.append(pos)
    top = torch.stack(
        [torch.where(p, m, torch.full_like(m, -math.inf)) for m, p in zip(logs, present, strict=True)]
    )
    top = top.detach().amax(dim=0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = [
        torch.where(p, torch.exp(m - top), torch.zeros_like(m)) for m, p in zip(logs, present, strict=True)
    ]
    num = sum(w[..., None] * avg for w, avg in zip(weights, avgs, strict=True))
    den = sum(weights) + eps * torch.exp(-top)
    return num / torch.where(den > 0, den, torch.ones_like(den))[..., None]


def hybrid_attention_chunked(
    q: Tensor, k: Tensor, v: Tensor, phi_q: Tensor, lq: Tensor, phi_k: Tensor, lk: Tensor,
    causal: bool, window: int, chunk: int, eps: float = 0.0, mask: Tensor | None = None,
    log_scale: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The hybrid (window >= 1) or, causal, plain linear attention (window 0) on scaled features.

    q, k, v: (B, H, N, d); phi_q, phi_k: (B, H, N, D) scaled features, lq, lk: (B, H, N) their
    log-scales (>= 0); mask (B, N) bool, True = real key; log_scale (H,): beta, or None (0)
    -> (B, H, N, d) in the features' dtype.
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
    parts = causal_pass(q, k, v1, phi_q, lq, phi_k, lk, window, chunk, mask=mask)
    if log_scale is not None:  # learned weight of the linear part against the window part (a parameter)
        num1, c = parts[-1]
        parts[-1] = (num1, c + log_scale[:, None])
    if not causal:
        rmask = None if mask is None else mask.flip(-1)
        rq, rk, rv1, rphi_q, rphi_k = (x.flip(2) for x in (q, k, v1, phi_q, phi_k))
        rlq, rlk = lq.flip(-1), lk.flip(-1)
        rparts = causal_pass(rq, rk, rv1, rphi_q, rlq, rphi_k, rlk, window, chunk, True, rmask)
        if log_scale is not None:
            num1, c = rparts[-1]
            rparts[-1] = (num1, c + log_scale[:, None])
        parts += [(num1.flip(2), c.flip(-1)) for num1, c in rparts]
    return merge_parts(parts, eps)
