"""Which query rows the exact reference is computed on, and how much each one counts.

Row i of softmax attention depends only on q_i and the keys/values it may see, so the error of
a variant can be measured on a sample of R rows at O(R N d) cost. The sample must not bias the
estimate: causal rows differ wildly (row 0 sees one key and its output norm is about sqrt(N)
times that of the last row), so forcing row 0 into a uniform sample, as the first version did,
made causal errors and the uniform floor 1.5-2.7x too low at N = 1K-8K.

Design (stratified sampling with inverse-inclusion weights, the Horvitz-Thompson estimator):

    stratum 0          rows [0, h), h = max(1, R // 8), all taken, weight 1
    strata 1..S        geometric ranges [h, 2h), [2h, 4h), ... up to N; each gets an equal share
                       of the remaining R - h rows (a stratum smaller than its share is taken
                       whole and its leftover goes to the larger strata), drawn uniformly without
                       replacement; a row drawn from a stratum of size s with a rows taken has
                       inclusion probability a / s and weight s / a

For any per-row quantity x_i, sum_{sampled} w_i x_i is an unbiased estimate of sum_{all} x_i.
Geometric strata hold rows of similar causal context length (within 2x), so the estimate also
has low variance where the per-row terms fall like 1/i. Errors are ratios of two such sums
(||out - ref||^2 and ||ref||^2 over rows), a ratio estimator that agrees with all rows within a
few percent at R = 256 (tests check N = 2048 and 8192, causal and not, within 5%).
"""

from __future__ import annotations

import torch
from torch import Tensor


def strata(n: int, rows: int) -> list[tuple[int, int, int]]:
    """The sampling design: (start, stop, rows taken) per stratum, covering [0, n)."""
    if n < 1 or rows < 1:
        raise ValueError(f"sampling needs n >= 1 and rows >= 1, got n={n}, rows={rows}")
    if rows >= n:
        return [(0, n, n)]
    if rows < 4:  # too few rows to stratify: one uniform stratum
        return [(0, n, rows)]
    head = max(1, rows // 8)
    budget = rows - head
    bounds, start = [], head
    while start < n:
        bounds.append((start, min(n, 2 * start)))
        start = bounds[-1][1]
    while len(bounds) > budget:  # every stratum needs a row: merge neighbours from the start
        bounds = [(a[0], b[1]) for a, b in zip(bounds[::2], bounds[1::2], strict=False)] + (
            [bounds[-1]] if len(bounds) % 2 else []
        )
    takes: dict[tuple[int, int], int] = {}
    by_size = sorted(bounds, key=lambda b: b[1] - b[0])  # small strata first: their leftover moves on
    for i, (lo, hi) in enumerate(by_size):
        takes[(lo, hi)] = min(hi - lo, budget // (len(by_size) - i))  # equal share of what is left
        budget -= takes[(lo, hi)]
    return [(0, head, head)] + [(lo, hi, takes[(lo, hi)]) for lo, hi in bounds]


def sample_rows(n: int, rows: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """Sorted unique query-row indices (R,), int64, on `device`, drawn by the stratified design.

    All rows when rows >= n. The draw uses a CPU generator seeded with `seed`, so the choice is
    the same on every device. Use `row_weights` to weight per-row terms of the sample.
    """
    picked = []
    gen = torch.Generator().manual_seed(seed)
    for lo, hi, take in strata(n, rows):
        if take == hi - lo:
            picked.append(torch.arange(lo, hi))
        elif take > 0:
            picked.append(torch.randperm(hi - lo, generator=gen)[:take] + lo)
    return torch.cat(picked).sort().values.to(device)


def row_weights(idx: Tensor, n: int, rows: int) -> Tensor:
    """Inverse inclusion probability (R,) float64 of each sampled row `idx` (R,) of the design
    `strata(n, rows)`: weighted sums over the sample estimate sums over all n rows without bias."""
    weights = torch.ones(idx.shape, dtype=torch.float64, device=idx.device)
    for lo, hi, take in strata(n, rows):
        inside = (idx >= lo) & (idx < hi)
        weights[inside] = (hi - lo) / max(take, 1)
    return weights
