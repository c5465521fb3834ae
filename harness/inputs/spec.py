"""What a scenario's `inputs:` entry resolves to (owned by the inputs stage, composed by config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InputSpec:
    """One input regime: `dist` names a source in `harness.inputs.SOURCES`; its knobs and the seed.

    Only the knobs the scenario sets are in `options` (defaults are the source's), so the case ids
    that hash this spec do not change when a source gains a knob.
    """

    dist: str = "gaussian"
    scale: float = 1.0  # multiplies q and k
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()  # the source's knobs that were set (sorted items)
