"""Measurement hygiene on a shared machine: torch's CPU thread count and the load average.

`apply_threads` pins torch's intra-op threads on CPU to `measure.threads` (1 by default, as
`torch.utils.benchmark` does): with torch's default of one thread per core, a busy machine slows
whole rounds by orders of magnitude and hides real slowdowns in the noise. `load_average` reads
the 1-minute load average, recorded just before and after a case's timed and memory passes; a
case measured with more runnable processes than cores is marked in the report.
"""

from __future__ import annotations

import os

import torch

from harness.measure.specs import MeasureSpec

# torch's thread count when this module was first imported (one per core unless OMP_NUM_THREADS
# or the caller said otherwise): what `threads: null` restores after a run that pinned it.
DEFAULT_THREADS = torch.get_num_threads()


def apply_threads(spec: MeasureSpec, device: str) -> int:
    """Set torch's intra-op threads for cases on `device` and return the count in force.

    On cpu: `spec.threads` when set, else torch's default (DEFAULT_THREADS). Other devices are
    left alone. Idempotent and cheap: call it at worker start-up and before each case."""
    if torch.device(device).type == "cpu":
        wanted = spec.threads if spec.threads is not None else DEFAULT_THREADS
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
    return torch.get_num_threads()


def load_average() -> float | None:
    """The 1-minute load average of the host, or None where the platform has none."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def cores() -> int | None:
    """Logical CPUs of the host (what the load average is compared with)."""
    return os.cpu_count()


def under_load(load_before: float | None, load_after: float | None, cores: int | None) -> bool:
    """A case measured while the load average exceeded the core count (before or after its passes)."""
    loads = [x for x in (load_before, load_after) if x is not None and x == x]
    return bool(loads and cores and max(loads) > cores)
