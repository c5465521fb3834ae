"""What attention an input batch produces: softmax row entropy and mass near the diagonal.

Both are means over all query rows, estimated from sampled rows (`harness.measure.rowsample`:
each sampled row weighted by its inverse inclusion probability, so early causal rows, which the
sample over-represents, do not bias the mean), in fp32 blocks, never the full N x N matrix.
With a key padding mask (B, N) bool (True = real token), padded keys get no weight and padded
query rows are left out of the mean (a real query i always sees key i, so no counted row is
empty).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from harness.measure import accuracy
from harness.measure.accuracy import row_logits, rows_per_block
from harness.measure.rowsample import row_weights, sample_rows


def _sampled_weights(
    q: Tensor, k: Tensor, causal: bool, rows: int, seed: int, key_padding_mask: Tensor | None
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """Yield (row indices (r,), row weights (r,) fp32, softmax weights (B, H, r, N), rows counted
    (B, 1, r) bool or None).

    q, k: (B, H, N, d), any float dtype (upcast to fp32). Softmax weights of padded query rows may
    be nan; the last item is False there (None without a mask: every row counts).
    """
    idx = sample_rows(q.shape[2], rows, seed, q.device)
    row_w = row_weights(idx, q.shape[2], rows).to(torch.float32)
    k32 = k.float()
    B, H, N, _ = k.shape
    block = rows_per_block(B * H, N, 4, accuracy.BLOCK_BYTES)
    for start in range(0, idx.numel(), block):
        r = idx[start : start + block]
        logits = row_logits(q[:, :, r].float(), k32, r, causal)
        w = row_w[start : start + block]
        if key_padding_mask is None:
            yield r, w, torch.softmax(logits, dim=-1), None
            continue
        mask = key_padding_mask.to(device=q.device, dtype=torch.bool)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        yield r, w, torch.softmax(logits, dim=-1), mask[:, None, r]


def _weighted(per_row: Tensor, w: Tensor, counted: Tensor | None) -> tuple[float, float]:
    """(sum of w * per_row over counted (b, h, row), sum of w over them). per_row: (B, H, r)."""
    weights = w.expand_as(per_row)
    if counted is not None:
        weights = torch.where(counted.expand_as(per_row), weights, torch.zeros_like(weights))
        per_row = torch.where(weights > 0, per_row, torch.zeros_like(per_row))  # nan of padded rows
    return float((per_row * weights).sum()), float(weights.sum())


@torch.no_grad()
def softmax_row_entropy(
    q: Tensor,
    k: Tensor,
    causal: bool,
    rows: int = 256,
    seed: int = 0,
    key_padding_mask: Tensor | None = None,
) -> float:
    """Mean entropy in nats of softmax(q k^T / sqrt(d)) rows. q, k: (B, H, N, d).

    The mean over all rows and (b, h), estimated from `rows` sampled rows (exact when rows >= N),
    in fp32. Uniform attention over n keys has entropy ln(n); one-hot attention has 0.
    key_padding_mask: (B, N) bool, True = real token; padded keys get no weight, padded query
    rows are not counted. nan when no sampled row is a real token.
    """
    total, count = 0.0, 0.0
    for _, w, p, counted in _sampled_weights(q, k, causal, rows, seed, key_padding_mask):
        ent = -(p * torch.log(p.clamp_min(1e-38))).sum(-1)  # (B, H, r)
        part, n = _weighted(ent, w, counted)
        total, count = total + part, count + n
    return total / count if count else float("nan")


@torch.no_grad()
def band_mass(
    q: Tensor,
    k: Tensor,
    causal: bool,
    window: int,
    rows: int = 256,
    seed: int = 0,
    key_padding_mask: Tensor | None = None,
) -> float:
    """Mean softmax mass on keys with |i - j| <= window, estimated like `softmax_row_entropy`.

    q, k: (B, H, N, d).
    key_padding_mask: (B, N) bool as in `softmax_row_entropy`.
    """
    total, count = 0.0, 0.0
    cols = torch.arange(k.shape[2], device=k.device)
    for r, w, p, counted in _sampled_weights(q, k, causal, rows, seed, key_padding_mask):
        inside = (cols[None, :] - r[:, None]).abs() <= window  # (r, N)
        part, n = _weighted((p * inside).sum(-1), w, counted)
        total, count = total + part, count + n
    return total / count if count else float("nan")
