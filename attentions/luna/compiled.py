"""LUNA impl `compile`: torch.compile of the chunked algorithm, the baseline a user would try before
hand-written kernels.

The function is `naive.luna_attention`'s. `chunked.py` walks the blocks in a Python loop, which
torch.compile would unroll N / chunk times (a graph, and a compile time, growing with N: thousands
of blocks at 128K tokens). Here the same chunked algorithm is written without the loop, every block
at once, so one graph serves every length:

    non-causal: S = phi(K)^T V (B, H, D, d), z = phi(K)^T 1 (B, H, D); out = phi(Q) S / (phi(Q) z + eps)
    causal:     the sequence right-padded to nb = ceil(N / chunk) blocks of c = chunk tokens;
                per block the masked intra-block product tril(phi_q phi_k^T) (B, H, nb, c, c) plus
                the state of the blocks before it, an exclusive prefix sum over blocks of
                phi_k^T v (B, H, nb, D, d) and of phi_k^T 1 (B, H, nb, D)

Inductor fuses the scalar MLP of the feature map (features.luna_features) into the kernels that
produce phi, so the per-channel layout never writes the (B, H, N, m, L, hidden) activations; what
the backward keeps is decided by AOTAutograd's partitioner (recompute or save), as for any user of
torch.compile. Padded keys (mask False) get phi(k) = 0; ch_rms is not implemented (impl chunked has
it). Parameters are fp32; inputs of any dtype are read in fp32 and the output is fp32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attentions.luna.features import LunaWeights, luna_features


def _blocked_causal(
    fq: Tensor, fk: Tensor, v: Tensor, eps: float, chunk: int
) -> Tensor:  # fmt: skip
    """Causal linear attention on features, every block at once. fq, fk: (B, H, N, D) fp32, v (B, H, N, d)
    -> (B, H, N, d)."""
    B, H, N, D = fq.shape
    d, pad = v.shape[-1], (-N) % chunk
    if pad:  # padded rows come last: causally they reach no real row, and are dropped at the end
        fq, fk, v = (F.pad(x, (0, 0, 0, pad)) for x in (fq, fk, v))
    nb = (N + pad) // chunk
    fq, fk = fq.view(B, H, nb, chunk, D), fk.view(B, H, nb, chunk, D)
    v = v.view(B, H, nb, chunk, d)
    kv = fk.transpose(-1, -2) @ v  # (B, H, nb, D, d): each block's state increment
    ksum = fk.sum(dim=-2)  # (B, H, nb, D)
    # exclusive prefix sums (blocks < b) as inclusive minus own: block 0 gets exactly 0. Not by slicing
    # kv[:, :, :-1]: with dynamic shapes its nb - 1 = 1 was specialized without a working guard, and the
    # compiled CPU kernel of a 2-block call wrote out of bounds on a 1-block call (segfault, torch 2.13)
    state = kv.cumsum(dim=2) - kv
    norm = ksum.cumsum(dim=2) - ksum
    local = (fq @ fk.transpose(-1, -2)).tril()  # (B, H, nb, c, c): keys j <= i inside the block
    num = local @ v + fq @ state
    den = local.sum(dim=-1) + (fq @ norm[..., None]).squeeze(-1)  # (B, H, nb, c)
    return (num / (den[..., None] + eps)).reshape(B, H, nb * chunk, d)[:, :, :N]


def luna_attention_blocked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    weights: LunaWeights,
    causal: bool,
    nonneg: bool = True,
    eps: float = 1e-6,
    chunk: int = 128,
    mask: Tensor | None = None,
) -> Tensor:
    """LUNA, every block at once (what `compile` compiles). q, k, v: (B, H, N, d); mask (B, N) bool,
    True = real key, or None -> (B, H, N, d) in the weights' dtype."""
    fq, fk = luna_features(q, weights, nonneg), luna_features(k, weights, nonneg)  # (B, H, N, D)
    if mask is not None:
        fk = fk * mask[:, None, :, None].to(fk.dtype)
    v = v.to(fq.dtype)
    if causal:
        return _blocked_causal(fq, fk, v, eps, chunk)
    state = fk.transpose(-1, -2) @ v  # (B, H, D, d)
    norm = fk.sum(dim=-2)  # (B, H, D)
    return (fq @ state) / ((fq @ norm[..., None]) + eps)


# Graphs one process may compile for this function (dynamo's default limit is 8, after which it would
# raise here, fullgraph=True): one per device, input dtype, causality, mask or not and grad mode.
RECOMPILE_LIMIT = 64


@functools.cache
def _compiled() -> Callable[..., Tensor]:
    return torch.compile(luna_attention_blocked, fullgraph=True, dynamic=True)


def compiled_luna(*args: object) -> Tensor:
    """torch.compile(luna_attention_blocked)(*args): compiled once per process and graph (dynamic
    shapes: one graph serves every length, batch and head count); fullgraph, so a graph break raises
    instead of running parts eagerly."""
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return _compiled()(*args)
