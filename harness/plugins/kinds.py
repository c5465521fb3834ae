"""The contract and registry of benchmark kinds (`kind:` in a scenario).

A kind is one package under `harness/kinds/<kind>/` (or an outside package registered through the
entry-point group ``attnbench.kinds``) that declares everything about itself: its task options and
axes, the metrics its records carry (`metrics`, scoped: no other kind's record carries them), how
it measures one case (`measure`), its progress line, its headline columns, its report section and
its plots. The harness owns the case lifecycle for every kind (`harness.execute.lifecycle`): skip
reasons, the OOM rule, the hard timeout, `--raise`, `error_trace`, non-finite results recorded as
`nan`, device cache release. A kind only fills the record it is given.

The registry sits here, at the bottom of the stages, so scenario validation can list the kinds
without importing any of them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

from harness.plugins.registry import PluginLoadError, Registry, UnknownPluginError


class BenchmarkKind:
    """One kind of measurement. Subclasses set `name`, `description` and `metrics` (a tuple of
    `harness.plugins.metrics.Metric`) and implement `measure`; everything else has a default."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[Any, ...]] = ()  # the Metric declarations its records may carry
    headline: ClassVar[tuple[str, ...]] = ()  # metric names of the end-of-run table, most telling first
    # whether the scenario's `seeds:` applies: the kind runs a variant with random parameters once per
    # seed and records the mean and spread (harness/measure/seeds.py); others refuse the key
    takes_seeds: ClassVar[bool] = False

    # ----- the scenario ------------------------------------------------------------------------
    @classmethod
    def task_options(cls, raw: dict[str, Any], where: str) -> dict[str, Any]:
        """Validate the scenario's `task:` block (the kind's own options, e.g. a vocabulary size)
        and return it with defaults filled in. Raise `ValueError` with a message naming the key
        (relative to `where`) and what was expected. Kinds without options accept only `{}`."""
        if raw:
            raise ValueError(f"{where}: kind {cls.name!r} takes no task options, found {sorted(raw)}")
        return {}

    @classmethod
    def task_axes(cls, options: dict[str, Any]) -> tuple[str, ...]:
        """The task options that are sweep axes (their validated value is a tuple of points): the
        sweep makes one case per point, and `case.task` holds the options with that point's value
        (a recall task's number of pairs). Default: none."""
        return ()

    @classmethod
    def check_inputs(cls, inputs: tuple[Any, ...]) -> None:
        """Reject input regimes (the scenario's validated `inputs:`, InputSpecs) this kind cannot
        use, when the scenario loads: raise `harness.common.checks.Invalid(where, message)` with
        `where` a key path such as `inputs.layer`. Default: any."""
        return None

    @classmethod
    def skip_reasons(cls, case: Any) -> list[str] | None:
        """Why `case` will be skipped before it runs, when the kind decides that itself (`validate`
        shows them); None (the default): the variant's capabilities on the case's problem."""
        return None

    @classmethod
    def claims_legacy(cls, row: dict[str, Any]) -> bool:
        """Whether a record written before records named their kind (schema 1-3) is one of this
        kind's (the kernel kind claims the rest)."""
        return False

    # ----- one case ----------------------------------------------------------------------------
    def measure(self, case: Any, record: Any, ctx: Any) -> None:
        """Measure `case` into `record` (`record.set(metric, value)`, `record.info`). Raise on
        failure: the lifecycle records the status (`oom`, `timeout`, `error` with its trace). Set
        `record.status`/`reason` only for outcomes that are results (`nan`, `leak`)."""
        raise NotImplementedError

    def finish(self, case: Any, record: Any, ctx: Any) -> None:
        """After `measure`, whatever its outcome (not for skipped cases): figures that do not
        depend on the measurement succeeding (the kernel kind's cost model). Default: nothing."""

    def non_finite(self, record: Any) -> str | None:
        """The first measured metric with a gate (a result `compare` judges, not a description or
        a score that may be undefined, like a skill against a zero floor) whose value is NaN or
        infinite, as `name=value`; None when every such result is finite."""
        for name, value in record.metrics.items():
            values = value if isinstance(value, list | tuple) else [value]
            bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
            if bad and _gated(self, name):
                return f"{name}={bad[0]}"
        return None

    # ----- presentation ------------------------------------------------------------------------
    def progress(self, record: Any) -> str:
        """The result part of a progress line for a finished ok case: its headline metrics."""
        parts = []
        for m in self.metrics:
            if m.name in self.headline and record.metrics.get(m.name) is not None:
                parts.append(f"{m.name}={m.format(record.metrics[m.name])}")
        return " ".join(parts)

    def digest(self, df: Any) -> Any:
        """The end-of-run table of this kind's records (a `rich.table.Table`), or None for the
        harness's generic one (the `headline` metrics at each configuration's longest length)."""
        return None

    def report_section(self, df: Any, scenario: dict | None, plot_files: dict[str, str]) -> list[str]:
        """Markdown lines of this kind's part of report.md, for its records (`df`, a DataFrame
        from `harness.results.records.to_dataframe`). Default: nothing (the report then shows the
        generic table of every metric)."""
        return []

    def plots(self, df: Any, out_dir: Path) -> dict[str, Path]:
        """Write this kind's plots for its records under `out_dir`; {key: path} for the section."""
        return {}


def _gated(kind: BenchmarkKind, name: str) -> bool:
    """Whether `name` is one of the kind's gated metrics (a result compare judges)."""
    return any(m.name == name and m.gate is not None for m in kind.metrics)


KINDS: Registry[type[BenchmarkKind]] = Registry(
    "benchmark kind", group="attnbench.kinds", builtins="harness.kinds", base=BenchmarkKind
)


def installed_kind(name: str) -> type[BenchmarkKind] | None:
    """The class of kind `name`, or None when it is not installed here (or cannot be loaded): a
    run directory read elsewhere still shows every record of it, through the generic paths."""
    try:
        return KINDS.get(name)
    except (UnknownPluginError, PluginLoadError):
        return None
