"""The scenario's optional blocks that do not define cases: `execute:` (how its case groups run
unless the command line says otherwise: `--executor`, `--workers`, `--gpus`, the Slurm options)
and `report:` (the report's baseline and noise thresholds); `task:` holds the kind's own options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from harness.common.names import suggest
from harness.config import validate as v
from harness.config.slurm_syntax import SlurmSyntaxError, check_param, check_value
from harness.plugins.kinds import KINDS


@dataclass(frozen=True)
class ExecuteSpec:
    executor: str | None = None  # None: the command line's (default subprocess)
    workers: int | None = None
    gpus: tuple[str, ...] | None = None
    partition: str | None = None
    time_min: int | None = None
    gpus_per_task: int | None = None
    max_jobs: int | None = None
    cases_per_job: int | None = None
    slurm_params: tuple[tuple[str, str | bool], ...] | None = None  # sbatch options, checked


@dataclass(frozen=True)
class ReportSpec:
    """The scenario's `report:` block.

    baseline: a variant name or label the report measures speedups against (default: the fastest
    exact configuration at each length). max_noise and min_samples: a time whose noise
    (IQR / median) is above max_noise, or that has fewer samples, is marked noisy where it feeds
    a claim (the summary's fastest, speedups, efficiency lengths).
    """

    baseline: str | None = None
    max_noise: float = 0.25
    min_samples: int = 5

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ReportSpec:
        """From scenario.json's `report` mapping; unknown keys ignored, absent keys default."""
        known = {k: v for k, v in (raw or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _gpus(raw: Any, where: str) -> tuple[str, ...]:
    """A list of non-negative device ids (ints or digit strings)."""
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, bool) or not (isinstance(item, int) and item >= 0 or str(item).isdigit()):
            raise v.Invalid(f"{where}[{i}]", f"expected a GPU id (an int >= 0), found {v.show(item)}")
        out.append(str(item))
    return tuple(out)


def _slurm_word(raw: Any, where: str) -> str:
    """A string that reaches a Slurm batch script as written (harness/execute/slurm.py)."""
    try:
        return check_value("", v.as_str(raw, where))
    except SlurmSyntaxError as err:
        raise v.Invalid(where, str(err).removeprefix(": ")) from None


def _slurm_params(raw: Any, where: str) -> tuple[tuple[str, str | bool], ...]:
    """A mapping of sbatch options (account: x, cpus_per_task: 8, exclusive: true), each checked."""
    if not isinstance(raw, dict):
        raise v.Invalid(where, f"expected a mapping of sbatch options (account: NAME), found {v.show(raw)}")
    out = []
    for name, value in raw.items():
        try:
            out.append(check_param("", name, value))
        except SlurmSyntaxError as err:
            raise v.Invalid(v.key(where, name), str(err).removeprefix(": ")) from None
    return tuple(out)


EXECUTE_CHECKS: dict[str, v.Check] = {
    "executor": v.optional(v.as_str),
    "workers": v.optional(partial(v.as_int, minimum=1)),
    "gpus": v.optional(_gpus),
    "partition": v.optional(_slurm_word),
    "time_min": v.optional(partial(v.as_int, minimum=1)),
    "gpus_per_task": v.optional(partial(v.as_int, minimum=0)),
    "max_jobs": v.optional(partial(v.as_int, minimum=1)),
    "cases_per_job": v.optional(partial(v.as_int, minimum=1)),
    "slurm_params": v.optional(_slurm_params),
}


def execute_block(raw: Any) -> ExecuteSpec:
    return v.block(raw, "execute", ExecuteSpec, EXECUTE_CHECKS)


REPORT_CHECKS: dict[str, v.Check] = {
    "baseline": v.optional(v.as_str),
    "max_noise": partial(v.as_float, minimum=0.0, strict=True),
    "min_samples": partial(v.as_int, minimum=1),
}


def report_block(raw: Any, entries: list[dict[str, Any]]) -> ReportSpec:
    """`report:`; `baseline` is a variant name or label of the (validated) `variants:` entries, or a
    label built from one (`flash[sdpa]`, `nystrom(landmarks=64)`)."""
    spec = v.block(raw, "report", ReportSpec, REPORT_CHECKS)
    names = sorted({e.get(k) for e in entries for k in ("name", "label")} - {None})
    if (b := spec.baseline) and not any(b == n or b.startswith((f"{n}[", f"{n}(")) for n in names):
        raise v.Invalid(
            "report.baseline",
            f"unknown variant or label {b!r}{suggest(b, names)}; expected one of {', '.join(names)}",
        )
    return spec


def task_block(kind: str, raw: Any) -> tuple[tuple[str, Any], ...]:
    """The `task:` block, validated by the kind's own `task_options` (kind-specific keys)."""
    if not isinstance(raw, dict):
        raise v.Invalid("task", f"expected a mapping of {kind} options, found {v.show(raw)}")
    try:
        options = KINDS.get(kind).task_options(raw, "task")
    except ValueError as err:
        raise v.Invalid("task", str(err).removeprefix("task: ")) from None
    return tuple(options.items())
