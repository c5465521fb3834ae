"""LUNA computed block by block, so the MLP activations of the whole sequence never exist at once.

The function is `naive.luna_attention`'s; only the order of work changes. The feature map phi
(features.luna_features) is evaluated on `chunk` tokens at a time, inside the loop that consumes it:

    non-causal: pass 1 over key blocks    S = sum_j phi(k_j)^T v_j (B, H, D, d), z = sum_j phi(k_j) (B, H, D)
                pass 2 over query blocks  out_i = phi(q_i) S / (phi(q_i) . z + eps)
    causal:     one pass over blocks; block b uses its masked intra-block product plus the state
                (S, z) carried from blocks < b (as attentions/linear/chunked.py), then adds its keys.
    ch_rms:     (non-causal only) channel RMS over the sequence, r_c = sqrt(mean_j phi_c^2 + eps).
                A first pass over query blocks accumulates sum phi(q)^2; the key pass accumulates
                sum phi(k)^2 beside S and z. Dividing phi(q) by r_q and phi(k) by r_k is folded into
                the state: S <- S / (r_q r_k), z <- z / (r_q r_k), which is the same function.
    mask:       padded keys get phi(k) = 0 (they add nothing to S, z); the channel RMS sums and
                counts real tokens only.

Neither the (B, H, N, m, hidden) MLP activations nor the full phi(q), phi(k) (B, H, N, D) are ever
materialized: the largest temporaries are one block's activations, (B, H, chunk, m, G, hidden).
When autograd is recording, each block runs under `torch.utils.checkpoint` (non-reentrant), so the
backward keeps only the block inputs (slices of q, k, v) and, in causal mode, the carried state of
each block (B, H, D, d + 1); phi is recomputed block by block during the backward.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from attentions.luna.features import LunaWeights, channel_rms, luna_features
from attentions.window_linear.chunked import hybrid_attention_chunked


def _features(nonneg: bool, x: Tensor, *w: Tensor | None) -> Tensor:
    """phi of one block. x: (B, H, c, d) -> (B, H, c, D) in W's dtype; w: the 8 fields of LunaWeights."""
    return luna_features(x, LunaWeights(*w), nonneg)


def _keep(mask: Tensor | None, like: Tensor) -> Tensor | float:
    """A block's key mask (B, c) as a (B, 1, c, 1) multiplier in `like`'s dtype; 1.0 without a mask."""
    return 1.0 if mask is None else mask[:, None, :, None].to(like.dtype)


def _run(fn, *args):
    """Call `fn(*args)`, under a non-reentrant checkpoint when autograd records a graph through it."""
    needs_grad = torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)
    if needs_grad:
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def features_blockwise(x: Tensor, weights: LunaWeights, nonneg: bool, chunk: int) -> Tensor:
    """phi(x) for the whole sequence, computed and checkpointed per block. x: (B, H, N, d) -> (B, H, N, D).

    Materializes phi (D floats per token) but never the MLP activations of more than one block,
    neither in the forward nor saved for the backward. Used by `fit`.
    """
    fn = partial(_features, nonneg)
    blocks = [_run(fn, x[:, :, s : s + chunk], *weights) for s in range(0, x.shape[-2], chunk)]
    return torch.cat(blocks, dim=-2)


def _sumsq_block(nonneg: bool, x: Tensor, mask: Tensor | None, *w: Tensor | None) -> Tensor:
    """sum over the block's real tokens of phi^2 per channel. x: (B, H, c, d) -> (B, H, D)."""
    fx = _features(nonneg, x, *w)
    return (fx.pow(2) * _keep(mask, fx)).sum(dim=-2)


def _key_block(nonneg: bool, ch_rms: bool, k: Tensor, v: Tensor, mask: Tensor | None, *w: Tensor | None):
    """Key-side statistics of one block: phi(k)^T v (B, H, D, d), sum phi(k) (B, H, D), sum phi(k)^2
    (padded keys excluded)."""
    fk = _features(nonneg, k, *w)
    fk = fk * _keep(mask, fk)
    sumsq = fk.pow(2).sum(dim=-2) if ch_rms else fk.new_zeros(())
    return fk.transpose(-1, -2) @ v.to(fk.dtype), fk.sum(dim=-2), sumsq


def _query_block(
    nonneg: bool, eps: float, q: Tensor, state: Tensor, norm: Tensor, *w: Tensor | None
) -> Tensor:
    """Outputs of one query block from the key statistics. q: (B, H, c, d) -> (B, H, c, d)."""
    fq = _features(nonneg, q, *w)
    return (fq @ state) / ((fq @ norm[..., None]) + eps)


def _causal_block(
    nonneg: bool, eps: float, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, state: Tensor,
    norm: Tensor, *w: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One causal block: outputs (B, H, c, d) from the masked intra-block product plus the carried
    state, and this block's increments to the state (B, H, D, d) and normalizer (B, H, D)."""
    fq, fk = _features(nonneg, q, *w), _features(nonneg, k, *w)
    fk = fk * _keep(mask, fk)
    v = v.to(fq.dtype)
    local = (fq @ fk.transpose(-1, -2)).tril()  # (B, H, c, c): weights of keys j <= i in the block
    num = local @ v + fq @ state
    den = local.sum(dim=-1) + (fq @ norm[..., None]).squeeze(-1)  # (B, H, c)
    return num / (den[..., None] + eps), fk.transpose(-1, -2) @ v, fk.sum(dim=-2)


def luna_attention_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    weights: LunaWeights,
    causal: bool,
    nonneg: bool = True,
    eps: float = 1e-6,
    ch_rms: bool = False,
    chunk: int = 128,
    mask: Tensor | None = None,
) -> Tensor:
    """LUNA attention by blocks of `chunk` tokens. q, k, v: (B, H, N, d); mask (B, N) bool, True =
    real key, or None -> (B, H, N, d), computed in the parameters' dtype (fp32 in the variant)."""
    if ch_rms and causal:
        raise ValueError("ch_rms pools over all tokens; it has no causal form")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    B, H, N, d = q.shape
    D = weights.W.shape[0] * weights.w2.shape[0]
    dtype = weights.W.dtype
    state = q.new_zeros(B, H, D, v.shape[-1], dtype=dtype)
    norm = q.new_zeros(B, H, D, dtype=dtype)
    starts = range(0, N, chunk)

    def blk_mask(s: int) -> Tensor | None:
        return None if mask is None else mask[:, s : s + chunk]

    if causal:
        outs = []
        for s in starts:
            blk = slice(s, s + chunk)
            out, d_state, d_norm = _run(
                partial(_causal_block, nonneg, eps),
                q[:, :, blk],
                k[:, :, blk],
                v[:, :, blk],
                blk_mask(s),
                state,
                norm,
                *weights,
            )
            outs.append(out)
            state, norm = state + d_state, norm + d_norm
        return torch.cat(outs, dim=2)

    key_fn = partial(_key_block, nonneg, ch_rms)
    sumsq_k = q.new_zeros(B, H, D, dtype=dtype)
    for s in range(0, k.shape[-2], chunk):
        blk = slice(s, s + chunk)
        d_state, d_norm, d_sumsq = _run(key_fn, k[:, :, blk], v[:, :, blk], blk_mask(s), *weights)
        state, norm, sumsq_k = state + d_state, norm + d_norm, sumsq_k + d_sumsq
    if ch_rms:
        sq_fn = partial(_sumsq_block, nonneg)
        sumsq_q = sum(_run(sq_fn, q[:, :, s : s + chunk], blk_mask(s), *weights) for s in starts)
        count = float(N) if mask is None else mask.sum(dim=-1).clamp_min(1)[:, None, None].to(dtype)
        r_q = torch.sqrt(sumsq_q / count + eps)  # (B, H, D) channel RMS of phi(q) over real tokens
        r_k = torch.sqrt(sumsq_k / count + eps)
        scale = 1.0 / (r_q * r_k)
        state, norm = state * scale[..., None], norm * scale
    q_fn = partial(_query_block, nonneg, eps)
    return torch.cat([_run(q_fn, q[:, :, s : s + chunk], state, norm, *weights) for s in starts], dim=2)


def luna_hybrid_chunked(
    q: Tensor, k: Tensor, v: Tensor, weights: LunaWeights, causal: bool, nonneg: bool = True,
    eps: float = 1e-6, ch_rms: bool = False, chunk: int = 128, mask: Tensor | None = None, window: int = 1,
    log_scale: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """LUNA's window + linear hybrid (`window` >= 1) by blocks: phi of q and k per block (checkpointed,
    `features_blockwise`; with ch_rms divided by the channel RMS over real tokens), then
    window_linear.chunked.hybrid_attention_chunked with log-scales 0 (ReLU features need no stabilizer)
    and eps in the shared normalizer; log_scale (H,) the learned log-weight of the feature scores.
    q, k, v: (B, H, N, d) -> (B, H, N, d) in the weights' dtype."""
    if ch_rms and causal:
        raise ValueError("ch_rms pools over all tokens; it has no causal form")
    phi_q, phi_k = (features_blockwise(x, weights, nonneg, chunk) for x in (q, k))  # (B, H, N, D)
    if ch_rms:
        phi_q, phi_k = channel_rms(phi_q, eps, mask), channel_rms(phi_k, eps, mask)
    zeros = phi_q.new_zeros(phi_q.shape[:-1])
    return hybrid_attention_chunked(
        q, k, v, phi_q, zeros, phi_k, zeros, causal, window, chunk, eps, mask, log_scale
    )  # fmt: skip
