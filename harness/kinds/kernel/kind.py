"""`kind: kernel` (the default): one attention call per case, timed, with memory and error against
exact softmax attention. The steps are in `steps.py`, the metrics in `metrics.py`, the report
section in `report.py` and its plots in `plots.py`, `slide.py` and `plot_regimes.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from harness.config.sweep import Case
from harness.kinds.kernel import steps
from harness.kinds.kernel.metrics import KERNEL
from harness.plugins.kinds import BenchmarkKind
from harness.plugins.metrics import Metric
from harness.results.records import Record


class KernelKind(BenchmarkKind):
    """`kind: kernel`: one attention call per case: time, memory and error against exact softmax."""

    name: ClassVar[str] = "kernel"
    description: ClassVar[str] = "one attention call per case: time, memory and error against exact softmax"
    metrics: ClassVar[tuple[Metric, ...]] = KERNEL
    headline: ClassVar[tuple[str, ...]] = ("time_ms_median", "peak_mem_bytes", "skill")

    @classmethod
    def claims_legacy(cls, row: dict[str, Any]) -> bool:
        return True  # the kernel kind was the only one before schema 4 named kinds, but for MQAR and e2e

    def measure(self, case: Case, record: Record, ctx: Any) -> None:
        steps.measure_case(record, case, ctx)

    def finish(self, case: Case, record: Record, ctx: Any) -> None:
        steps.cost_model(record, case)
        steps.roofline_floor(record, ctx.roofline)

    def progress(self, record: Record) -> str:
        parts = []
        time_ms, err = record.get("time_ms_median"), record.get("rel_err")
        parts += [f"{time_ms:.3g} ms"] if time_ms is not None else []
        parts += [f"rel_err={err:.3g}"] if err is not None else []
        return " ".join(parts)

    def digest(self, df: Any) -> Any:
        from harness.kinds.kernel.digest import digest, digest_table

        rows, where = digest(df)
        return digest_table(rows, where) if len(rows) else None

    def report_section(self, df: Any, scenario: dict | None, plot_files: dict[str, str]) -> list[str]:
        from harness.kinds.kernel.report import kernel_section

        return kernel_section(df, scenario, plot_files)

    def plots(self, df: Any, out_dir: Path) -> dict[str, Path]:
        from harness.kinds.kernel.plot_regimes import regime_plots
        from harness.kinds.kernel.plots import make_plots

        return {**make_plots(df, out_dir), **regime_plots(df, out_dir)}
