"""The base of the synthetic input sources: q and k from a seeded generator, then v ~ N(0, 1).

Every synthetic source draws, from one `torch.Generator` on the target device, first its q and k
(`draw_qk`, fp32 (B, H, N, d)) and then v ~ N(0, 1) of the same shape. The generator is seeded
with `seed` on the evaluation split and `seed + CALIB_SEED_OFFSET` on the calibration split
(calibration data is the same distribution with another seed). Nothing here is ever N x N.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from harness.inputs.source import SPLITS, InputBatch, InputSource, Shape
from harness.measure.accuracy import make_generator

CALIB_SEED_OFFSET = 10_000
"""Calibration batch i of a fit uses seed spec.seed + 10_000 + fit.seed + i."""


def randn(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Standard normal fp32 values of `shape` from `gen`, on the generator's device."""
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32)


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x: (B, H, M, d), idx: (B, H, N) -> x[b, h, idx[b, h, n]] of shape (B, H, N, d)."""
    B, H, M, d = x.shape
    bh = torch.arange(B * H, device=x.device)[:, None]
    return x.reshape(B * H, M, d)[bh, idx.reshape(B * H, -1)].reshape(B, H, -1, d)


class SyntheticSource(InputSource):
    """A seeded synthetic regime: subclasses implement `draw_qk`; v ~ N(0, 1) is drawn after q, k."""

    def draw_qk(
        self, options: Mapping[str, Any], shape: Shape, causal: bool, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """q, k fp32 (B, H, N, d) drawn from `gen` (before v; the order fixes every value)."""
        raise NotImplementedError

    def make(
        self,
        options: Mapping[str, Any],
        shape: Shape,
        causal: bool,
        split: str,
        seed: int,
        device: str,
    ) -> InputBatch:
        """q, k from `draw_qk`, then v ~ N(0, 1); all fp32 (B, H, N, d), no padding."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        gen = make_generator(device, seed + (CALIB_SEED_OFFSET if split == "calib" else 0))
        q, k = self.draw_qk(options, shape, causal, gen)
        return InputBatch(q, k, randn(shape, gen))
