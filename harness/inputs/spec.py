"""What a scenario's `inputs:` entry resolves to (owned by the inputs stage, composed by config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InputSpec:
    """Input distribution: `dist` in gaussian|peaked|clustered|local, its knobs and the seed."""

    dist: str = "gaussian"
    scale: float = 1.0
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()  # distribution-specific knobs (sorted items)
