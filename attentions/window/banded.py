"""Sliding-window softmax attention by blocks: memory linear in N, never an N x N matrix.

The sequence is cut into blocks of `block` = min(W, N) tokens. Query block b needs keys from the
blocks b-1, b (causal: keys i-W+1..i) and b+1 (non-causal: keys i-W+1..i+W-1), since a window of W
tokens reaches at most one block to each side. Keys and values are padded with one block of zeros
at each end and unfolded into (blocks, span) views, span = 2 or 3 blocks; each query block then
takes an ordinary masked softmax over its span: (B, H, blocks, block, span) scores, i.e.
N x span of them, linear in N for a fixed window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def block_geometry(n: int, window: int, causal: bool) -> tuple[int, int, int]:
    """(block, blocks, span_blocks): block length min(W, N), number of query blocks, and the number of
    key blocks each query block reads (2 causal: itself and the one before; 3 non-causal)."""
    block = min(window, n)
    return block, -(-n // block), 2 if causal else 3


def visible_keys(n: int, window: int, causal: bool, device: torch.device) -> Tensor:
    """(blocks, block, span) bool: query r of block b may see key c of its span (position
    (b - 1) * block + c): inside the window and inside the sequence (not the zero padding)."""
    block, blocks, span_blocks = block_geometry(n, window, causal)
    r = torch.arange(block, device=device)[:, None]  # query offset in its block
    c = torch.arange(span_blocks * block, device=device)[None, :]  # key offset in the span
    rel = c - block - r  # key position - query position
    band = (rel <= 0) & (rel > -window) if causal else rel.abs() < window  # (block, span)
    b = torch.arange(blocks, device=device)[:, None, None]
    key_pos = (b - 1) * block + c[None]  # (blocks, 1, span)
    return band[None] & (key_pos >= 0) & (key_pos < n)


def unfold_keys(x: Tensor, block: int, blocks: int, span_blocks: int) -> Tensor:
    """x (B, H, N, e) -> (B, H, blocks, span, e): for each block b, the rows (b - 1) * block ...
    (b - 1 + span_blocks) * block - 1 of x padded with zeros (a strided view of the padded copy)."""
    after = blocks * block - x.shape[2] + (span_blocks - 2) * block
    padded = F.pad(x, (0, 0, block, after))  # (B, H, (blocks + span_blocks - 1) * block, e)
    return padded.unfold(2, span_blocks * block, block).transpose(-1, -2)


def window_attention_banded(
    q: Tensor, k: Tensor, v: Tensor, window: int, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """q, k, v: (B, H, N, d); key_padding_mask (B, N) bool, True = real -> (B, H, N, d) in q's dtype.

    Scores q k^T / sqrt(d) and P v are products in the input dtype; the scale, mask and softmax run
    in fp32 (fp64 for fp64 inputs). Hidden keys get the lowest float, so a row with no visible key
    (a padded query) stays finite.
    """
    B, H, n, d = q.shape
    block, blocks, span_blocks = block_geometry(n, window, causal)
    acc = torch.promote_types(q.dtype, torch.float32)
    qb = F.pad(q, (0, 0, 0, blocks * block - n)).view(B, H, blocks, block, d)
    kb = unfold_keys(k, block, blocks, span_blocks)  # (B, H, blocks, span, d)
    vb = unfold_keys(v, block, blocks, span_blocks)
    scores = (qb @ kb.transpose(-1, -2)).to(acc) * d**-0.5  # (B, H, blocks, block, span)
    visible = visible_keys(n, window, causal, q.device)[None, None]  # (1, 1, blocks, block, span)
    if key_padding_mask is not None:
        real = unfold_keys(key_padding_mask[:, None, :, None].to(q.dtype), block, blocks, span_blocks)
        visible = visible & (real[..., 0] > 0)[:, :, :, None, :]  # (B, 1, blocks, 1, span)
    scores = scores.masked_fill(~visible, torch.finfo(acc).min)
    weights = torch.softmax(scores, dim=-1).to(q.dtype)
    out = weights @ vb  # (B, H, blocks, block, d)
    return out.reshape(B, H, blocks * block, d)[:, :, :n]
