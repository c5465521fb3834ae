"""Nyströmformer attention (Xiong et al. 2021), written for reading: the fp32/fp64 reference.

For one (batch, head), q, k, v of shape (N, d), m = min(landmarks, N) landmarks:

    q~, k~  = segment means of q and k                           (m, d)
    F       = softmax(q  k~^T / sqrt(d))                          (N, m)
    A       = softmax(q~ k~^T / sqrt(d))                          (m, m)
    Bm      = softmax(q~ k^T  / sqrt(d))                          (m, N)
    out     = F A^+ Bm v                                          (N, d)

A^+ is the iterative Moore-Penrose pseudo-inverse of the paper (its Eq. 16):

    Z_0     = A^T / (max_i sum_j |A_ij| * max_j sum_i |A_ij|)      = A^T / (||A||_inf ||A||_1)
    Z_{t+1} = 1/4 Z_t (13 I - A Z_t (15 I - A Z_t (7 I - A Z_t)))

Choices that differ from the `nystrom-attention` package (documented in README.md):
  * Segments. N is split into m contiguous segments whose sizes differ by at most one (the first
    N mod m segments hold one token more), and each landmark is the true mean of its segment.
    The package instead zero-pads N up to a multiple of m at the front, which biases the first
    landmark towards 0 and adds padded (zero) keys that take softmax weight.
  * Pseudo-inverse init. The scale of Z_0 is computed per (batch, head) matrix. The package's
    `moore_penrose_iter_pinv` takes the max over the whole (B, H) batch, so one sample's output
    depends on the other samples in the batch (six iterations do not fully converge).
  * m >= N: the landmarks are the tokens themselves (segments of one token), so F = A = Bm = the
    exact softmax matrix P and out = P P^+ P v = P v up to the pseudo-inverse's convergence.

No depthwise-conv skip on v (a learned part of the original model). Everything is computed in
fp64 for fp64 inputs and in fp32 otherwise; the output has that dtype (not the input dtype).

`package_pinv` transcribes nystrom-attention 0.0.14's `moore_penrose_iter_pinv` (Z_0 scaled by the
maxima over the whole (B, H) batch): the reference of impl `package` is the function above with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def segment_sizes(n: int, m: int) -> list[int]:
    """Sizes of m contiguous segments covering n tokens, differing by at most one (m <= n)."""
    if not 1 <= m <= n:
        raise ValueError(f"need 1 <= m <= n segments, got m={m}, n={n}")
    base, extra = divmod(n, m)
    return [base + 1] * extra + [base] * (m - extra)


def segment_means(x: Tensor, m: int) -> Tensor:
    """Mean of each of the m contiguous segments of the sequence axis. (B, H, N, d) -> (B, H, m, d)."""
    segments = torch.split(x, segment_sizes(x.shape[-2], m), dim=-2)  # m views (B, H, size_i, d)
    return torch.stack([segment.mean(dim=-2) for segment in segments], dim=-2)


def iterative_pinv(a: Tensor, iters: int) -> Tensor:
    """Iterative Moore-Penrose pseudo-inverse of each (m, m) matrix in a: (..., m, m) -> (..., m, m).

    Z_0 is scaled per matrix (never by a max over the batch), so each matrix's result depends on
    that matrix alone.
    """
    abs_a = a.abs()
    max_row_sum = abs_a.sum(dim=-1).amax(dim=-1)  # (...,) = ||A||_inf
    max_col_sum = abs_a.sum(dim=-2).amax(dim=-1)  # (...,) = ||A||_1
    z = a.transpose(-1, -2) / (max_row_sum * max_col_sum)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def package_pinv(a: Tensor, iters: int) -> Tensor:
    """nystrom-attention's pseudo-inverse: Z_0 = A^T / (max over ALL matrices of the row sums of |A|
    x max over all of the column sums), then the same iteration. (..., m, m) -> (..., m, m)."""
    abs_a = a.abs()
    z = a.transpose(-1, -2) / (abs_a.sum(dim=-1).max() * abs_a.sum(dim=-2).max())
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    landmarks: int,
    pinv_iters: int,
    pinv: Callable[[Tensor, int], Tensor] = iterative_pinv,
) -> Tensor:
    """Non-causal Nyström attention. q, k, v: (B, H, N, d) -> (B, H, N, d) in fp64 or fp32."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    m = min(landmarks, q.shape[-2])
    scale = 1.0 / math.sqrt(q.shape[-1])
    q_land, k_land = segment_means(q, m), segment_means(k, m)  # (B, H, m, d)
    kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2) * scale, dim=-1)  # F  (B, H, N, m)
    kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2) * scale, dim=-1)  # A  (B, H, m, m)
    kernel_3 = torch.softmax(q_land @ k.transpose(-1, -2) * scale, dim=-1)  # Bm (B, H, m, N)
    kernel_2_inv = pinv(kernel_2, pinv_iters)  # (B, H, m, m)
    # Right to left: O(N m d + m^2 d) instead of forming F A^+ (N m^2).
    return kernel_1 @ (kernel_2_inv @ (kernel_3 @ v))


def reference(
    variant: Any, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of impl `torch` (non-causal, no mask) at the instance's params."""
    assert not causal and key_padding_mask is None, "Nyström attention here is non-causal and unmasked"
    return nystrom_attention_naive(q, k, v, variant.params.landmarks, variant.params.pinv_iters)


def package_reference(
    variant: Any, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of impl `package`: the same with `package_pinv`."""
    assert not causal and key_padding_mask is None, "Nyström attention here is non-causal and unmasked"
    p = variant.params
    return nystrom_attention_naive(q, k, v, p.landmarks, p.pinv_iters, package_pinv)
