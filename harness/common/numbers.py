"""Number helpers every stage shares: finite values and significant-digit formatting."""

from __future__ import annotations

import math
from typing import Any


def finite(x: Any) -> float | None:
    """A finite float, or None for None, NaN, infinities, bools and non-numbers."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_sig(x: float, sig: int = 3) -> str:
    """`sig` significant digits without scientific notation for everyday magnitudes."""
    if x == 0:
        return "0"
    a = abs(x)
    if 1e-3 <= a < 1e5:
        return f"{x:.{max(0, sig - 1 - math.floor(math.log10(a)))}f}"
    return f"{x:.{sig - 1}e}"
