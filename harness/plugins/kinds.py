"""The contract and registry of benchmark kinds (`kind:` in a scenario).

Kinds are plugins (entry-point group ``attnbench.kinds``). The built-in `kernel` kind (inputs ->
fit -> accuracy -> checks -> time -> memory for one attention call) is the harness's own per-case
pipeline and lives with it in `harness.execute.pipeline`; kinds that measure something else (a
model with its attention swapped, a trained task) live in `harness/kinds/`. The registry sits
here, at the bottom of the stages, so scenario validation can list the kinds without importing
any of them.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from harness.plugins.registry import Registry


class BenchmarkKind(abc.ABC):
    """One kind of measurement. `run_case(case, ctx, oom_at)` measures one planned case and
    returns its record; it never raises except KeyboardInterrupt (failures are statuses)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    def task_options(cls, raw: dict[str, Any], where: str) -> dict[str, Any]:
        """Validate the scenario's `task:` block (the kind's own options, e.g. MQAR's vocabulary)
        and return it with defaults filled in. Raise `ValueError` with a message naming the key
        (relative to `where`) and what was expected. Kinds without options accept only `{}`."""
        if raw:
            raise ValueError(f"{where}: kind {cls.name!r} takes no task options, found {sorted(raw)}")
        return {}

    @classmethod
    def task_axes(cls, options: dict[str, Any]) -> tuple[str, ...]:
        """The task options that are sweep axes (their validated value is a tuple of points): the
        sweep makes one case per point, and `case.task` holds the options with that point's value
        (MQAR's `pairs`). Default: none."""
        return ()

    @classmethod
    def skip_reasons(cls, case: Any) -> list[str] | None:
        """Why `case` will be skipped before it runs, when the kind decides that itself (`validate`
        shows them); None (the default): the variant's capabilities on the case's problem."""
        return None

    @abc.abstractmethod
    def run_case(self, case: Any, ctx: Any, oom_at: dict[str, int]) -> Any: ...


KINDS: Registry[type[BenchmarkKind]] = Registry(
    "benchmark kind", group="attnbench.kinds", builtins="harness.kinds", base=BenchmarkKind
)
