"""Exact softmax reference on sampled query rows, error metrics, causality and batch checks.

Row i of softmax attention depends only on q_i and the keys/values it may see, so the exact
output of R sampled rows costs O(R N d) at any N and never builds the N x N matrix:

    ref_i     = softmax(q_i K^T / sqrt(d)) V          (causal: keys j <= i only)
    uniform_i = mean_{j visible to i} v_j             (the floor: attention that ignores q, k)
    rel_err   = ||out - ref||_F / ||ref||_F           over all rows, estimated from the sample:
                sqrt(sum_i w_i ||out_i - ref_i||^2 / sum_i w_i ||ref_i||^2) with the rows'
                inverse-inclusion weights w_i (harness.measure.rowsample: unbiased sums)
    skill     = 1 - rel_err / uniform_rel_err         1 = exact, 0 = no better than uniform

The reference is computed in fp64 on CPU and fp32 on CUDA, from the (possibly low-precision)
inputs upcast, in blocks of rows so the (B, H, rows, N) score block stays under 256 MiB.
All tensors here are in the canonical "bhnd" layout (B, H, N, d).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.measure.rowsample import row_weights, sample_rows

BLOCK_BYTES = 256 * 2**20  # budget of one (B, H, block, N) score block
TINY = torch.finfo(torch.float32).tiny

Forward = Callable[[Tensor, Tensor, Tensor], Tensor]


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """fp64 on CPU (cheap there), fp32 elsewhere (fp64 is slow on most GPUs)."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def rows_per_block(bh: int, n: int, elem_bytes: int, budget: int = BLOCK_BYTES) -> int:
    """How many query rows fit one (bh, rows, n) block of `elem_bytes` elements in `budget`."""
    return max(1, budget // max(1, bh * n * elem_bytes))


def row_logits(q_rows: Tensor, k: Tensor, rows_idx: Tensor, causal: bool) -> Tensor:
    """Scaled scores of some query rows. q_rows: (B, H, R, d), k: (B, H, N, d) -> (B, H, R, N).

    Causal rows mask keys j > i with -inf (row i always sees key i, so no row is empty).
    """
    scores = q_rows @ k.transpose(-1, -2) / math.sqrt(q_rows.shape[-1])
    if causal:
        cols = torch.arange(k.shape[-2], device=k.device)
        scores = scores.masked_fill(cols[None, :] > rows_idx[:, None], float("-inf"))
    return scores


def _key_mask(mask: Tensor | None, device: torch.device) -> Tensor | None:
    """(B, N) bool key padding mask (True = real token) as (B, 1, 1, N) on `device`, or None."""
    return None if mask is None else mask.to(device=device, dtype=torch.bool)[:, None, None, :]


def reference_rows(
    q: Tensor, k: Tensor, v: Tensor, rows_idx: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """Exact softmax attention of the rows `rows_idx` (R,). q, k, v: (B, H, N, d) -> (B, H, R, d).

    Padded keys (key_padding_mask (B, N) False) get no weight; rows of padded queries are still
    computed (over the real keys they may see; nan when they see none) and left out by the metrics.
    Computed in `compute_dtype(q.device)` (fp64 CPU, fp32 CUDA), row block by row block.
    """
    ct = compute_dtype(q.device)
    rows_idx = rows_idx.to(q.device)
    k, v = k.to(ct), v.to(ct)
    keep = _key_mask(key_padding_mask, q.device)
    B, H, N, _ = k.shape
    block = rows_per_block(B * H, N, torch.finfo(ct).bits // 8, BLOCK_BYTES)
    outs = []
    for start in range(0, rows_idx.numel(), block):
        idx = rows_idx[start : start + block]
        logits = row_logits(q[:, :, idx].to(ct), k, idx, causal)
        if keep is not None:
            logits = logits.masked_fill(~keep, float("-inf"))
        outs.append(torch.softmax(logits, dim=-1) @ v)  # (B, H, r, d)
    return torch.cat(outs, dim=2)


def uniform_rows(v: Tensor, rows_idx: Tensor, causal: bool, key_padding_mask: Tensor | None = None) -> Tensor:
    """Uniform attention (mean of visible V) at rows `rows_idx`. v: (B, H, N, d) -> (B, H, R, d).

    Non-causal: the mean of all (real) v. Causal: the prefix mean, cumsum(v)[i] / (i + 1), O(N d);
    with a key padding mask (B, N) only real keys count.
    """
    ct = compute_dtype(v.device)
    rows_idx = rows_idx.to(v.device)
    v = v.to(ct)
    if key_padding_mask is None:
        if not causal:
            return v.mean(dim=2, keepdim=True).expand(-1, -1, rows_idx.numel(), -1)
        return v.cumsum(dim=2)[:, :, rows_idx] / (rows_idx.to(ct) + 1)[:, None]
    real = key_padding_mask.to(device=v.device, dtype=ct)[:, None, :, None]  # (B, 1, N, 1)
    total, count = (v * real), real.expand(-1, v.shape[1], -1, 1)
    if causal:
        total, count = total.cumsum(dim=2)[:, :, rows_idx], count.cumsum(dim=2)[:, :, rows_idx]
        return total / count
    return (total.sum(2, keepdim=True) / count.sum(2, keepdim=True)).expand(-1, -1, rows_idx.numel(), -1)


def is_finite(t: Tensor) -> bool:
    """True when every element of `t` is finite (no nan, no +-inf)."""
    return bool(torch.isfinite(t).all())


@dataclass
class AccuracyResult:
    """Error of a variant's output against exact softmax attention on `rows` sampled rows.

    rel_err, uniform_rel_err: relative Frobenius errors of the output and of uniform attention.
    max_abs_err: largest absolute elementwise error. cos_sim: mean over (b, h, row) of the cosine
    between output and reference rows. skill = 1 - rel_err / uniform_rel_err; when the floor is
    0 (exact attention is uniform, e.g. all keys equal) skill is 1.0 if rel_err == 0 else nan
    (undefined). A non-finite output gives rel_err = max_abs_err = cos_sim = skill = nan.
    """

    rel_err: float
    max_abs_err: float
    cos_sim: float
    uniform_rel_err: float
    skill: float
    rows: int


def weighted_rel_frobenius(x: Tensor, ref: Tensor, weights: Tensor) -> float:
    """sqrt(sum w ||x_row - ref_row||^2 / sum w ||ref_row||^2) over the rows of (B, H, R, d).

    `weights` broadcasts against (B, H, R): (R,) per sampled row, or (B, 1, R) when padded rows
    weigh 0. With all weights 1 this is ||x - ref||_F / ||ref||_F. 0 when both are 0, inf when
    only ref is 0. Rows of weight 0 are ignored even where x or ref is not finite there.
    """
    w = weights.to(device=ref.device, dtype=torch.float64)
    counted = (w > 0).expand(ref.shape[:-1])
    err = torch.where(counted, (x - ref).double().pow(2).sum(-1), 0.0)
    norm = torch.where(counted, ref.double().pow(2).sum(-1), 0.0)
    num, den = float((err * w).sum()), float((norm * w).sum())
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)


def rel_frobenius(x: Tensor, ref: Tensor) -> float:
    """||x - ref||_F / ||ref||_F; 0 when both are 0, inf when only ref is 0."""
    num, den = float(torch.linalg.vector_norm(x - ref)), float(torch.linalg.vector_norm(ref))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def skill_score(rel_err: float, uniform_rel_err: float) -> float:
    """1 - rel_err / uniform_rel_err; see `AccuracyResult` for the zero-floor case."""
    if math.isnan(rel_err) or math.isnan(uniform_rel_err):
        return math.nan
    if uniform_rel_err == 0.0:
        return 1.0 if rel_err == 0.0 else math.nan
    return 1.0 - rel_err / uniform_rel_err


def accuracy_metrics(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    causal: bool,
    rows: int,
    seed: int,
    key_padding_mask: Tensor | None = None,
) -> AccuracyResult:
    """Compare `out` (B, H, N, d), any dtype, to exact attention of q, k, v on sampled rows.

    rel_err, uniform_rel_err and cos_sim weight each sampled row by its inverse inclusion
    probability, so they estimate the all-rows values without bias; max_abs_err is the largest
    error over the sampled rows (a sample maximum, never above the all-rows one). With a key
    padding mask (B, N) bool (True = real token), padded keys get no weight in the reference and
    the floor, and rows of padded queries are not compared (their output is unspecified).
    """
    n = q.shape[2]
    idx = sample_rows(n, rows, seed, q.device)
    weights = row_weights(idx, n, rows).to(q.device)  # (R,)
    if key_padding_mask is not None:
        weights = weights * key_padding_mask.to(q.device)[:, None, idx]  # (B, 1, R): padded rows 0
    ref = reference_rows(q, k, v, idx, causal, key_padding_mask)
    uniform_err = weighted_rel_frobenius(uniform_rows(v, idx, causal, key_padding_mask), ref, weights)
    real_out = out if key_padding_mask is None else out.transpose(1, 2)[key_padding_mask.to(out.device)]
    if not is_finite(real_out):  # anywhere in a real row, sampled or not
        nan = math.nan
        return AccuracyResult(nan, nan, nan, uniform_err, nan, idx.numel())
    o = out[:, :, idx.to(out.device)].to(device=ref.device, dtype=ref.dtype)
    counted = (weights > 0).to(ref.device).expand(ref.shape[:-1])  # (B, H, R)
    rel = weighted_rel_frobenius(o, ref, weights)
    norms = torch.linalg.vector_norm(o, dim=-1) * torch.linalg.vector_norm(ref, dim=-1)
    cos = torch.where(counted, (o * ref).sum(-1) / norms.clamp_min(TINY), 0.0)  # (B, H, R)
    w = weights.to(device=cos.device, dtype=cos.dtype).expand_as(cos)
    return AccuracyResult(
        rel_err=rel,
        max_abs_err=float((o - ref).abs()[counted].max()),
        cos_sim=float((cos * w).sum() / w.sum()),
        uniform_rel_err=uniform_err,
        skill=skill_score(rel, uniform_err),
        rows=idx.numel(),
    )


def fresh_like(x: Tensor, gen: torch.Generator) -> Tensor:
    """Fresh N(0, std(x)^2) values shaped and typed like x (std 1 when x is constant)."""
    std = float(x.float().std()) if x.numel() > 1 else 0.0
    std = std if std > 0.0 and math.isfinite(std) else 1.0
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=torch.float32)
    return (noise * std).to(x.dtype)


def relative_change(new: Tensor, old: Tensor) -> float:
    """max |new - old| / (max |old| + tiny), in fp32."""
    new, old = new.float(), old.float()
    return float((new - old).abs().max() / (old.abs().max() + TINY))


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A torch.Generator on `device` (CPU or CUDA) seeded with `seed`."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


@torch.no_grad()
def causality_change(forward: Forward, q: Tensor, k: Tensor, v: Tensor, seed: int = 0) -> float:
    """Relative change of past outputs when the future changes (0 for a causal forward).

    q, k, v: (B, H, N, d); `forward(q, k, v) -> (B, H, N, d)` computes causal attention.
    Split t = (N - 1) // 2: rows 0..t are the past (at least 1), rows t+1..N-1 the future (at
    least 1 when N >= 2). Future q, k and v are replaced with fresh random values of the same
    dtype and spread (q too: a causal output must not depend on future queries either, which
    catches statistics pooled over the sequence). Returns
    max |out_new[:, :, :t+1] - out[:, :, :t+1]| / (max |out[:, :, :t+1]| + tiny); 0.0 when N == 1.
    """
    n = q.shape[2]
    if n < 2:
        return 0.0
    t = (n - 1) // 2
    gen = make_generator(q.device, seed)
    out = forward(q, k, v)
    perturbed = []
    for x in (q, k, v):
        x = x.clone()
        x[:, :, t + 1 :] = fresh_like(x[:, :, t + 1 :], gen)
        perturbed.append(x)
    out_new = forward(*perturbed)
    return relative_change(out_new[:, :, : t + 1], out[:, :, : t + 1])


OTHERS_SPREAD = 3.0  # spread of the replaced batch elements, relative to the originals


@torch.no_grad()
def batch_change(forward: Forward, q: Tensor, k: Tensor, v: Tensor, seed: int = 0) -> float | None:
    """Relative change of batch element 0's output when every other batch element changes.

    q, k, v: (B, H, N, d); `forward(q, k, v) -> (B, H, N, d)`. Batch elements 1..B-1 of q, k
    and v are replaced with fresh random values of the same dtype and OTHERS_SPREAD times the
    spread, so any statistic pooled over the batch (a max, a mean) moves; the shapes stay the
    same, so a kernel that tiles by batch size computes sample 0 the same way. Returns
    max |out_new[0] - out[0]| / (max |out[0]| + tiny), or None when B == 1 (nothing to change).
    """
    if q.shape[0] < 2:
        return None
    gen = make_generator(q.device, seed)
    out = forward(q, k, v)
    perturbed = []
    for x in (q, k, v):
        x = x.clone()
        x[1:] = fresh_like(x[1:], gen) * OTHERS_SPREAD
        perturbed.append(x)
    out_new = forward(*perturbed)
    return relative_change(out_new[0], out[0])
