"""clustered: queries and keys around a few shared centres.

`clusters` centres c ~ N(0, 1) per (batch, head); each key and each query picks a centre
uniformly: x = scale * (c + spread * z) / sqrt(1 + spread^2). A query attends to the
~N/clusters keys of its own cluster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness.common.checks import non_negative, positive_int
from harness.inputs.seeded import SyntheticSource, gather_rows, randn
from harness.inputs.source import Knob, Shape


class ClusteredSource(SyntheticSource):
    """Queries and keys drawn around `clusters` random centres per (batch, head)."""

    name: ClassVar[str] = "clustered"
    description: ClassVar[str] = "queries and keys around shared centres: each query attends to its cluster"
    knobs: ClassVar[dict[str, Knob]] = {
        "clusters": Knob(8, positive_int, "number of centres per (batch, head) (>= 1)"),
        "spread": Knob(0.3, non_negative, "spread of a point around its centre, relative (>= 0)"),
    }

    def draw_qk(
        self, options: Mapping[str, Any], shape: Shape, causal: bool, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """centres (B, H, clusters, d); then q, k: (B, H, N, d), each row a noisy centre."""
        B, H, N, d = shape
        c, spread = int(options["clusters"]), float(options["spread"])
        if c < 1:
            raise ValueError(f"clustered inputs need clusters >= 1, got {c}")
        centres = randn((B, H, c, d), gen)
        norm = math.sqrt(1.0 + spread**2)
        qk = []
        for _ in range(2):  # queries, then keys
            pick = torch.randint(0, c, (B, H, N), generator=gen, device=gen.device)
            qk.append((gather_rows(centres, pick) + spread * randn(shape, gen)) / norm)
        return qk[0], qk[1]
