"""The measurement settings of a scenario (`accuracy:`, `measure:`, `checks:`), owned by the
measure stage and composed into a `Scenario` by config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AccuracySpec:
    enabled: bool = True
    rows: int = 256  # sampled query rows for the exact reference
    seed: int = 0


@dataclass(frozen=True)
class MeasureSpec:
    warmup_ms: float = 25.0
    min_samples: int = 10
    max_samples: int = 1000
    rep_ms: float = 200.0
    flush_l2: bool = True
    timeout_s: float = 600.0  # per case; exceeded -> status `timeout`
    memory: bool = True
    roofline: bool = False  # measure copy bandwidth + GEMM rate once; record each case's floor_ms
    threads: int | None = 1  # torch intra-op threads on CPU (harness.measure.hygiene); None: torch's default


@dataclass(frozen=True)
class ChecksSpec:
    causality: bool = True  # perturb future k/v, past outputs must not move (causal cases)
    batch_independence: bool = True  # a sample's output must not depend on the rest of the batch
    tolerance: float = 1e-4  # relative change that counts as a leak
