"""The report settings of a run: the scenario's `report:` block as the report reads it.

`ReportSpec` itself is declared in `harness.plugins.metrics` (config composes it into a
`Scenario`, and config sits below results in the stage order); here it is read back from the
`scenario.json` a run directory holds.
"""

from __future__ import annotations

from typing import Any

from harness.config.blocks import ReportSpec

__all__ = ["ReportSpec", "read_report_spec", "matches_baseline"]


def read_report_spec(scenario: dict[str, Any] | None) -> ReportSpec:
    """The `report` block of a scenario.json dict; defaults when absent (runs before schema 2)."""
    block = (scenario or {}).get("report")
    return ReportSpec.from_dict(block if isinstance(block, dict) else None)


def matches_baseline(label: str, variant: str, baseline: str) -> bool:
    """Whether a configuration is the named baseline: its label or variant name, or a label built
    from it (`flash` matches `flash[sdpa]`; `nystrom` matches `nystrom(landmarks=64)`)."""
    return baseline in (label, variant) or label.startswith((f"{baseline}[", f"{baseline}("))
