"""Seeded q, k, v generators (the input distributions) and calibration vs evaluation splits.

Inputs are built outside any timed region, in fp32 in the canonical (B, H, N, d) layout from a
`torch.Generator` on the target device seeded with `spec.seed + seed_offset`, then cast to the
problem's dtype and, for "bnhd" variants, transposed and made contiguous. Every distribution
costs O(B H N d) memory (never N x N). v ~ N(0, 1) always; `spec.scale` multiplies q and k, so
logits scale with scale^2. Knobs come from `spec.options`; unknown knobs are errors.

    gaussian   q, k ~ N(0, scale^2) iid. Logits ~ N(0, scale^4): near-uniform attention, mean
               row entropy ~ ln(N) - scale^4 / 2 nats.
    peaked     low-entropy attention. Keys k = scale * k0, k0 ~ N(0, 1). Query i copies one key
               j(i) (uniform over all keys; causal: over visible keys j <= i) plus relative noise:
               q_i = scale * sharpness * (k0_j + noise * z). Its logit on k_j is about
               scale^2 * sharpness * sqrt(d), the others ~ N(0, (scale^2 sharpness)^2 (1 + noise^2)),
               so peakedness grows with d and shrinks slowly with N. Measured mean row entropy
               with the defaults (sharpness 2, noise 0.1), d = 64: 0.25 nats at N = 4K, 1.3 at
               32K (gaussian: 7.8 and 9.9); d = 16, N = 4K: 5.4 (gaussian 7.8).
    clustered  `clusters` centres c ~ N(0, 1) per (batch, head); each key and each query picks a
               centre uniformly: x = scale * (c + spread * z) / sqrt(1 + spread^2). A query
               attends to the ~N/clusters keys of its own cluster.
    local      banded attention. q_i and k_j share a positional code p(i) of random Fourier
               features, p(i) = [cos(w i), sin(w i)] / sqrt(F), F = d // 2, w ~ N(0, 1/l^2)
               per (batch, head), so p(i).p(j) ~ exp(-(i-j)^2 / (2 l^2)) (1/sqrt(2F) ripple).
               q = scale * (A p + noise A/sqrt(d) z), k likewise, A^2 / sqrt(d) = sharpness:
               the logit of key j is ~ sharpness * exp(-(i-j)^2 / (2 l^2)), a bump of std
               l / sqrt(sharpness) tokens. l = window * sqrt(sharpness) / 2.5 puts that std
               at window / 2.5. Measured mass within `window` of the diagonal (defaults):
               0.98 at d = 64 and 0.95 at d = 16 for N = 4K; 0.97 / 0.87 at N = 32K.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from harness.inputs.spec import InputSpec
from harness.measure import accuracy
from harness.measure.accuracy import make_generator, row_logits, rows_per_block, sample_rows
from harness.plugins.contract import LAYOUTS, FitSpec, Problem

QKV = tuple[Tensor, Tensor, Tensor]

DIST_OPTIONS: dict[str, dict[str, Any]] = {
    "gaussian": {},
    "peaked": {"noise": 0.1, "sharpness": 2.0},
    "clustered": {"clusters": 8, "spread": 0.3},
    "local": {"window": 64, "noise": 0.1, "sharpness": 12.0},
}
"""Each distribution's knobs and their defaults (what `spec.options` may set)."""


def dist_options(spec: InputSpec) -> dict[str, Any]:
    """The distribution's knobs: defaults updated by `spec.options`. Unknown names raise ValueError."""
    if spec.dist not in DIST_OPTIONS:
        raise ValueError(f"unknown input dist {spec.dist!r}; expected one of {sorted(DIST_OPTIONS)}")
    opts = dict(DIST_OPTIONS[spec.dist])
    unknown = sorted(set(dict(spec.options)) - set(opts))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dist {spec.dist!r}; expected {sorted(opts)}")
    opts.update(dict(spec.options))
    return opts


def _randn(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x: (B, H, M, d), idx: (B, H, N) -> x[b, h, idx[b, h, n]] of shape (B, H, N, d)."""
    B, H, M, d = x.shape
    bh = torch.arange(B * H, device=x.device)[:, None]
    return x.reshape(B * H, M, d)[bh, idx.reshape(B * H, -1)].reshape(B, H, -1, d)


def _gaussian(
    shape: tuple[int, ...], causal: bool, gen: torch.Generator, opts: dict
) -> tuple[Tensor, Tensor]:
    return _randn(shape, gen), _randn(shape, gen)


def _peaked(shape: tuple[int, ...], causal: bool, gen: torch.Generator, opts: dict) -> tuple[Tensor, Tensor]:
    B, H, N, d = shape
    k = _randn(shape, gen)
    if causal:  # j uniform over 0..i
        u = torch.rand((B, H, N), generator=gen, device=gen.device)
        rows = torch.arange(N, device=gen.device)
        j = torch.minimum((u * (rows + 1)).long(), rows)
    else:
        j = torch.randint(0, N, (B, H, N), generator=gen, device=gen.device)
    q = _gather_rows(k, j) + opts["noise"] * _randn(shape, gen)
    return opts["sharpness"] * q, k


def _clustered(
    shape: tuple[int, ...], causal: bool, gen: torch.Generator, opts: dict
) -> tuple[Tensor, Tensor]:
    B, H, N, d = shape
    c, spread = int(opts["clusters"]), float(opts["spread"])
    if c < 1:
        raise ValueError(f"clustered inputs need clusters >= 1, got {c}")
    centres = _randn((B, H, c, d), gen)
    norm = math.sqrt(1.0 + spread**2)
    qk = []
    for _ in range(2):  # queries, then keys
        pick = torch.randint(0, c, (B, H, N), generator=gen, device=gen.device)
        qk.append((_gather_rows(centres, pick) + spread * _randn(shape, gen)) / norm)
    return qk[0], qk[1]


def _local(shape: tuple[int, ...], causal: bool, gen: torch.Generator, opts: dict) -> tuple[Tensor, Tensor]:
    B, H, N, d = shape
    if d < 2:
        raise ValueError(f"local inputs need head_dim >= 2, got {d}")
    window, sharpness, noise = float(opts["window"]), float(opts["sharpness"]), float(opts["noise"])
    F = d // 2
    length = window * math.sqrt(sharpness) / 2.5  # kernel lengthscale l
    w = _randn((B, H, 1, F), gen) / length
    angles = torch.arange(N, device=gen.device, dtype=torch.float32)[:, None] * w  # (B, H, N, F)
    pos = torch.cat([angles.cos(), angles.sin()], dim=-1) / math.sqrt(F)  # (B, H, N, 2F)
    del angles
    if d > 2 * F:
        pos = torch.nn.functional.pad(pos, (0, d - 2 * F))
    amp = math.sqrt(sharpness) * d**0.25
    pos = amp * pos
    q = pos + noise * amp / math.sqrt(d) * _randn(shape, gen)
    k = pos.add_(noise * amp / math.sqrt(d) * _randn(shape, gen))
    return q, k


_DISTS = {"gaussian": _gaussian, "peaked": _peaked, "clustered": _clustered, "local": _local}


def make_qkv(
    problem: Problem,
    spec: InputSpec,
    layout: str = "bhnd",
    seed_offset: int = 0,
    requires_grad: bool = False,
    device: str | None = None,
) -> QKV:
    """q, k, v for `problem`: (B, H, N, d) ("bhnd") or (B, N, H, d) ("bnhd"), problem's dtype.

    Drawn in fp32 from a generator on `device` (default `problem.device`) seeded with
    `spec.seed + seed_offset`, in the order: q/k draws of the distribution, then v. With
    `requires_grad` the three are leaf tensors that require grad.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    opts = dist_options(spec)
    gen = make_generator(device or problem.device, spec.seed + seed_offset)
    shape = (problem.batch, problem.heads, problem.seq_len, problem.head_dim)
    q, k = _DISTS[spec.dist](shape, problem.causal, gen, opts)
    v = _randn(shape, gen)
    out = []
    for x, s in ((q, spec.scale), (k, spec.scale), (v, 1.0)):
        x = (x * s if s != 1.0 else x).to(problem.torch_dtype)
        if layout == "bnhd":
            x = x.transpose(1, 2).contiguous()
        out.append(x.requires_grad_(requires_grad))
    return out[0], out[1], out[2]


def calibration_batches(problem: Problem, spec: InputSpec, fit: FitSpec) -> list[QKV]:
    """`fit.batches` fp32 (B, H, Nc, d) batches of the same distribution, other seeds, on problem.device.

    Nc = fit.seq_len or min(problem.seq_len, 1024); batch i uses seed
    spec.seed + 10_000 + fit.seed + i, never the evaluation seed spec.seed.
    """
    nc = fit.seq_len or min(problem.seq_len, 1024)
    calib = dataclasses.replace(problem, seq_len=nc, dtype="fp32")
    return [make_qkv(calib, spec, seed_offset=10_000 + fit.seed + i) for i in range(fit.batches)]


def to_canonical(x: Tensor, layout: str) -> Tensor:
    """A tensor in `layout` -> "bhnd" (B, H, N, d): transposes "bnhd", returns "bhnd" unchanged."""
    if layout == "bhnd":
        return x
    if layout == "bnhd":
        return x.transpose(1, 2)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def _sampled_weights(q: Tensor, k: Tensor, causal: bool, rows: int, seed: int):
    """Yield (row indices (r,), softmax weights (B, H, r, N)) in fp32 over sampled row blocks."""
    idx = sample_rows(q.shape[2], rows, seed, q.device)
    k32 = k.float()
    B, H, N, _ = k.shape
    block = rows_per_block(B * H, N, 4, accuracy.BLOCK_BYTES)
    for start in range(0, idx.numel(), block):
        r = idx[start : start + block]
        yield r, torch.softmax(row_logits(q[:, :, r].float(), k32, r, causal), dim=-1)


@torch.no_grad()
def softmax_row_entropy(q: Tensor, k: Tensor, causal: bool, rows: int = 256, seed: int = 0) -> float:
    """Mean entropy in nats of softmax(q k^T / sqrt(d)) rows. q, k: (B, H, N, d).

    Averaged over `rows` sampled rows (see `accuracy.sample_rows`) and all (b, h), in fp32.
    Uniform attention over n keys has entropy ln(n); one-hot attention has 0.
    """
    total, count = 0.0, 0
    for _, p in _sampled_weights(q, k, causal, rows, seed):
        total += float(-(p * torch.log(p.clamp_min(1e-38))).sum(-1).sum())
        count += p.shape[0] * p.shape[1] * p.shape[2]
    return total / count


@torch.no_grad()
def band_mass(q: Tensor, k: Tensor, causal: bool, window: int, rows: int = 256, seed: int = 0) -> float:
    """Mean softmax mass on keys with |i - j| <= window, over sampled rows. q, k: (B, H, N, d)."""
    total, count = 0.0, 0
    cols = torch.arange(k.shape[2], device=k.device)
    for r, p in _sampled_weights(q, k, causal, rows, seed):
        inside = (cols[None, :] - r[:, None]).abs() <= window  # (r, N)
        total += float((p * inside).sum())
        count += p.shape[0] * p.shape[1] * p.shape[2]
    return total / count
