"""FAVOR+ (Choromanski et al. 2021): orthogonal random features and the fast attention paths.

Positive random features for the softmax kernel exp(q.k / sqrt(d)), with x' = x d^(-1/4):

    u_r(x)  = w_r . x' - |x'|^2 / 2                  r = 1..M   ("feature logits")
    phi(x)  = M^(-1/2) [exp(u_r(x))]_r               E_w[phi(q).phi(k)] = exp(q'.k') = exp(q.k / sqrt(d))

W (M, d) has rows drawn in blocks of d mutually orthogonal directions, each row rescaled by an
independent chi_d norm, so every row is marginally N(0, I_d) (the paper's ORF, `scaling=0`
in performer-pytorch).

exp(u) overflows for large inputs, so each path subtracts stabilizers that cancel exactly in
the normalized attention out_i = sum_j K_ij v_j / (sum_j K_ij + eps), K_ij = phi(q_i).phi(k_j):

    queries: the row max max_r u_r(q_i)      -- scales row i of K, cancels in row i's ratio
    keys:    non-causal: max over all keys and features (one constant per (batch, head))
             causal:     the running max m_i = max_{j <= i, r} u_r(k_j), carried chunk to chunk
                         like online softmax: keys seen by query i are all scaled by the same
                         exp(-m_i), and m_i depends only on keys j <= i, so nothing leaks from
                         the future (performer-pytorch uses the max over the whole sequence,
                         which reaches past outputs through its eps terms: upstream issue #82).

Stabilizers are detached (they change no value, only the floating-point range). A key-padding
mask (B, N) bool, True = real, removes padded keys from S, z and from every stabilizer (their
logits become -inf), so they change nothing at all, eps or not. Everything is computed in fp32,
or in the input dtype when that is wider (fp64 in tests).

Note on the package: performer-pytorch (like the google-research JAX code it transcribes) adds a
constant eps (1e-4; google-research: 1e-6) to every stabilized feature, AFTER the key max was
subtracted. That is not a numerical no-op: once typical keys sit far below the sequence max
(large inputs, long sequences), eps outweighs exp(u - max) and the package's output drifts
towards uniform attention (mean of v). Native adds nothing to the features; `eps` (default 0)
only enters the normalizer's denominator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for fp16 / bf16 / fp32 inputs, the input dtype when wider (fp64)."""
    return torch.promote_types(x.dtype, torch.float32)


def orthogonal_gaussian_features(features: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """W: (features, dim) fp32 on CPU; blocks of `dim` orthogonal rows with chi_dim norms.

    Each block is Q^T from the QR of a dim x dim Gaussian matrix, with Q's columns sign-corrected
    by sign(diag R) so Q is Haar distributed (Mezzadri 2007); the last block keeps its first rows.
    All blocks are drawn and factorized in one batched call (the same numbers as drawing them
    one after another from `generator`).
    """
    blocks = math.ceil(features / dim)
    gauss = torch.randn(blocks, dim, dim, generator=generator)
    q, r = torch.linalg.qr(gauss)  # (blocks, dim, dim) each
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar orthogonal
    directions = q.transpose(-1, -2).reshape(blocks * dim, dim)[:features]  # (M, d) unit rows
    norms = torch.randn(features, dim, generator=generator).norm(dim=1)  # (M,) chi_d
    return directions * norms[:, None]


def feature_logits(x: Tensor, W: Tensor) -> Tensor:
    """u(x) = W x' - |x'|^2 / 2 with x' = x d^(-1/4). x: (B, H, N, d), W: (M, d) -> (B, H, N, M).

    Computed in `compute_dtype(x)` (fp32 at least).
    """
    dtype = compute_dtype(x)
    xs = x.to(dtype) * x.shape[-1] ** -0.25
    return xs @ W.to(dtype).T - xs.pow(2).sum(-1, keepdim=True) / 2


def query_features(u_q: Tensor) -> Tensor:
    """phi(q) up to a per-row constant: M^(-1/2) exp(u - max_r u). (B, H, N, M) -> same."""
    stab = u_q.amax(dim=-1, keepdim=True).detach()
    return torch.exp(u_q - stab) / math.sqrt(u_q.shape[-1])


def finite_or_zero(x: Tensor) -> Tensor:
    """x with -inf (a stabilizer over no real key) replaced by 0."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def favor_noncausal(u_q: Tensor, u_k: Tensor, v: Tensor, eps: float, mask: Tensor | None = None) -> Tensor:
    """Non-causal FAVOR+. u_q, u_k: feature logits (B, H, N, M); v: (B, H, N, d); mask: (B, N) bool,
    True = real key, or None -> (B, H, N, d).

    out = phi(q) S / (phi(q) z + eps) with S = phi(k)^T v (M, d) and z = phi(k)^T 1 (M,), in the
    logits' dtype.
    """
    v = v.to(u_q.dtype)
    phi_q = query_features(u_q)
    if mask is not None:
        u_k = u_k.masked_fill(~mask[:, None, :, None], -math.inf)  # exp(-inf) = 0: no padded key
    stab_k = finite_or_zero(u_k.amax(dim=(-2, -1), keepdim=True).detach())  # one per (batch, head)
    phi_k = torch.exp(u_k - stab_k) / math.sqrt(u_k.shape[-1])
    state = phi_k.transpose(-1, -2) @ v  # (B, H, M, d)
    norm = phi_k.sum(dim=-2)  # (B, H, M)
    return (phi_q @ state) / (phi_q @ norm[..., None] + eps)


def favor_causal_chunked(
    u_q: Tensor, u_k: Tensor, v: Tensor, eps: float, chunk: int, mask: Tensor | None = None
) -> Tensor:
    """Causal FAVOR+ by chunks with a running key stabilizer. Shapes as `favor_noncausal`.

    With s_j = max_r u_r(k_j) and psi_j = M^(-1/2) exp(u(k_j) - s_j) (so phi(k_j) = psi_j e^(s_j)),
    query i uses m_i = max_{j <= i} s_j and weights K_ij e^(-m_i) = phi~(q_i).psi_j e^(s_j - m_i),
    all <= phi~(q_i).psi_j. The carried state holds S = sum_j psi_j e^(s_j - ref) v_j^T and
    z = sum_j psi_j e^(s_j - ref) for the keys before the chunk, with ref = their max; it is
    rescaled by e^(ref - m_i) for query i and by e^(ref - ref') when ref grows. Padded keys have
    psi = 0 and s = -inf; a stabilizer over no real key yet (-inf) is used as 0 where it is subtracted.
    """
    B, H, N, M = u_q.shape
    v = v.to(u_q.dtype)
    phi_q = query_features(u_q)
    s = u_k.amax(dim=-1).detach()  # (B, H, N) per-key max
    psi_k = torch.exp(u_k - s[..., None]) / math.sqrt(M)
    if mask is not None:
        psi_k = psi_k * mask[:, None, :, None].to(psi_k.dtype)
        s = s.masked_fill(~mask[:, None, :], -math.inf)
    state = v.new_zeros(B, H, M, v.shape[-1])
    norm = v.new_zeros(B, H, M)
    ref = v.new_full((B, H), -math.inf)  # max of s over the keys already in the state
    outs = []
    for start in range(0, N, chunk):
        stop = min(start + chunk, N)
        fq, fk, vc, sc = (
            phi_q[:, :, start:stop],
            psi_k[:, :, start:stop],
            v[:, :, start:stop],
            s[..., start:stop],
        )
        c = stop - start
        run = torch.maximum(torch.cummax(sc, dim=-1).values, ref[..., None])  # (B, H, c): m_i
        run0 = finite_or_zero(run)
        visible = torch.ones(c, c, dtype=torch.bool, device=v.device).tril()
        gap = (sc[..., None, :] - run0[..., :, None]).masked_fill(~visible, -math.inf)  # s_j - m_i
        local = (fq @ fk.transpose(-1, -2)) * torch.exp(gap)  # (B, H, c, c) masked weights
        carry = torch.exp(ref[..., None] - run0)  # (B, H, c): state rescale, 0 before any key
        num = local @ vc + (fq @ state) * carry[..., None]
        den = local.sum(-1) + (fq @ norm[..., None]).squeeze(-1) * carry
        outs.append(num / (den[..., None] + eps))
        new_ref, new_ref0 = run[..., -1], run0[..., -1]  # (B, H)
        decay = torch.exp(ref - new_ref0)
        fk_scaled = fk * torch.exp(sc - new_ref0[..., None])[..., None]  # (B, H, c, M)
        state = state * decay[..., None, None] + fk_scaled.transpose(-1, -2) @ vc
        norm = norm * decay[..., None] + fk_scaled.sum(dim=-2)
        ref = new_ref
    return torch.cat(outs, dim=2)
