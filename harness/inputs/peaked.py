"""peaked: low-entropy attention, each query a noisy copy of one key.

Keys k = scale * k0, k0 ~ N(0, 1). Query i copies one key j(i) (uniform over all keys; causal:
over visible keys j <= i) plus relative noise: q_i = scale * sharpness * (k0_j + noise * z). Its
logit on k_j is about scale^2 * sharpness * sqrt(d), the others ~ N(0, (scale^2 sharpness)^2
(1 + noise^2)), so peakedness grows with d and shrinks slowly with N. Measured mean row entropy
with the defaults (sharpness 2, noise 0.1), d = 64: 0.25 nats at N = 4K, 1.3 at 32K (gaussian:
7.8 and 9.9); d = 16, N = 4K: 5.4 (gaussian 7.8).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness.common.checks import non_negative, positive
from harness.inputs.seeded import SyntheticSource, gather_rows, randn
from harness.inputs.source import Knob, Shape


class PeakedSource(SyntheticSource):
    """Each query copies one (visible) key plus noise: near one-hot attention."""

    name: ClassVar[str] = "peaked"
    description: ClassVar[str] = "each query a noisy copy of one visible key: near one-hot attention"
    knobs: ClassVar[dict[str, Knob]] = {
        "noise": Knob(0.1, non_negative, "relative noise added to the copied key (>= 0)"),
        "sharpness": Knob(2.0, positive, "multiplies the queries: larger is more peaked (> 0)"),
    }

    def draw_qk(
        self, options: Mapping[str, Any], shape: Shape, causal: bool, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """k: (B, H, N, d) standard normal; q: (B, H, N, d) sharpness * (k[j(i)] + noise * z)."""
        B, H, N, d = shape
        k = randn(shape, gen)
        if causal:  # j uniform over 0..i
            u = torch.rand((B, H, N), generator=gen, device=gen.device)
            rows = torch.arange(N, device=gen.device)
            j = torch.minimum((u * (rows + 1)).long(), rows)
        else:
            j = torch.randint(0, N, (B, H, N), generator=gen, device=gen.device)
        q = gather_rows(k, j) + options["noise"] * randn(shape, gen)
        return options["sharpness"] * q, k
