"""local: banded attention, each query attending to keys within about `window` tokens.

q_i and k_j share a positional code p(i) of random Fourier features, p(i) = [cos(w i), sin(w i)]
/ sqrt(F), F = d // 2, w ~ N(0, 1/l^2) per (batch, head), so p(i).p(j) ~ exp(-(i-j)^2 / (2 l^2))
(1/sqrt(2F) ripple). q = scale * (A p + noise A/sqrt(d) z), k likewise, A^2 / sqrt(d) = sharpness:
the logit of key j is ~ sharpness * exp(-(i-j)^2 / (2 l^2)), a bump of std l / sqrt(sharpness)
tokens. l = window * sqrt(sharpness) / 2.5 puts that std at window / 2.5. Measured mass within
`window` of the diagonal (defaults): 0.98 at d = 64 and 0.95 at d = 16 for N = 4K; 0.97 / 0.87
at N = 32K. Needs head_dim >= 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness.common.checks import non_negative, positive, positive_int
from harness.inputs.seeded import SyntheticSource, randn
from harness.inputs.source import Knob, Shape


class LocalSource(SyntheticSource):
    """Queries and keys share a positional code: attention is a band around the diagonal."""

    name: ClassVar[str] = "local"
    description: ClassVar[str] = "banded attention: most mass within `window` tokens of the diagonal"
    knobs: ClassVar[dict[str, Knob]] = {
        "window": Knob(64, positive_int, "half-width in tokens holding most of the mass (>= 1)"),
        "noise": Knob(0.1, non_negative, "content noise added to the positional code (>= 0)"),
        "sharpness": Knob(12.0, positive, "height of the logit bump at the diagonal (> 0)"),
    }

    def draw_qk(
        self, options: Mapping[str, Any], shape: Shape, causal: bool, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """frequencies w (B, H, 1, d // 2); then q, k: (B, H, N, d) = scaled code + noise."""
        B, H, N, d = shape
        if d < 2:
            raise ValueError(f"local inputs need head_dim >= 2, got {d}")
        window, sharpness = float(options["window"]), float(options["sharpness"])
        noise = float(options["noise"])
        F = d // 2
        length = window * math.sqrt(sharpness) / 2.5  # kernel lengthscale l
        w = randn((B, H, 1, F), gen) / length
        angles = torch.arange(N, device=gen.device, dtype=torch.float32)[:, None] * w  # (B, H, N, F)
        pos = torch.cat([angles.cos(), angles.sin()], dim=-1) / math.sqrt(F)  # (B, H, N, 2F)
        del angles
        if d > 2 * F:
            pos = torch.nn.functional.pad(pos, (0, d - 2 * F))
        amp = math.sqrt(sharpness) * d**0.25
        pos = amp * pos
        q = pos + noise * amp / math.sqrt(d) * randn(shape, gen)
        k = pos.add_(noise * amp / math.sqrt(d) * randn(shape, gen))
        return q, k
