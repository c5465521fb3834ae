"""gaussian: i.i.d. standard normal q and k (the default input source).

q, k ~ N(0, scale^2) iid (`scale` from the scenario multiplies q and k). Logits ~ N(0, scale^4):
near-uniform attention, mean row entropy ~ ln(N) - scale^4 / 2 nats. No knobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness.inputs.seeded import SyntheticSource, randn
from harness.inputs.source import Knob, Shape


class GaussianSource(SyntheticSource):
    """q, k, v ~ N(0, 1) iid, drawn in that order."""

    name: ClassVar[str] = "gaussian"
    description: ClassVar[str] = "q, k ~ N(0, 1) iid: near-uniform attention (row entropy ~ ln N)"
    knobs: ClassVar[dict[str, Knob]] = {}

    def draw_qk(
        self, options: Mapping[str, Any], shape: Shape, causal: bool, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """q, k: (B, H, N, d) standard normal."""
        return randn(shape, gen), randn(shape, gen)
