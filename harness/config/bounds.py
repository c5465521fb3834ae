"""Bounds on what a scenario may ask for, checked before anything is built or run.

The number of cases is computed as a product of the sweep axes (never by listing them), so a
three-line params sweep of 10**9 points is refused in microseconds with its count instead of
hanging `validate`; only under the limit are the param points checked one by one. Problem axes
are range-checked against what torch can index.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

from harness.common.checks import Invalid
from harness.plugins.contract import AttentionVariant
from harness.plugins.kinds import KINDS
from harness.plugins.variants import VARIANTS

# Scenario, ProblemSpec and VariantEntry (harness.config.scenario, which imports this module) are
# typed `Any` here: importing them, even for type hints only, would be an import cycle.

MAX_CASES = 10_000  # default of --max-cases
MAX_AXIS = 2**31 - 1  # batch, heads, head_dim, seq_len: torch's kernels index dimensions with int32
MAX_ELEMENTS = 2**63 - 1  # torch's numel (int64)


def problem_size(problem: Any) -> None:
    """Refuse problem axes whose largest combination gives a q no torch tensor can hold."""
    biggest = max(problem.batch) * max(problem.heads) * max(problem.seq_len) * max(problem.head_dim)
    if biggest > MAX_ELEMENTS:
        raise Invalid(
            "problem",
            f"the largest q would have {biggest:.3g} elements (batch x heads x seq_len x head_dim), "
            f"more than torch can index ({MAX_ELEMENTS:.3g})",
        )


def entry_points_count(entry: Any) -> int:
    """Cases of one variant entry per problem point: impls x params points."""
    return max(len(entry.impl), 1) * math.prod(len(values) for _, values in entry.params)


def case_count(scenario: Any) -> tuple[int, str]:
    """(number of cases, how it is made up): entries x problem axes x input regimes x task points,
    as products of the axis lengths."""
    p = scenario.problem
    problem = math.prod(
        len(axis) for axis in (p.batch, p.heads, p.head_dim, p.seq_len, p.dtype, p.causal, p.mode)
    )
    variants = sum(entry_points_count(e) for e in scenario.variants)
    task = 1
    options = scenario.task_options
    if options:
        task = math.prod(len(options[name]) for name in KINDS.get(scenario.kind).task_axes(options))
    total = variants * problem * len(scenario.inputs) * task
    made = (
        f"{variants} variant configurations x {problem} problem points x {len(scenario.inputs)} input regimes"
    )
    return total, made + (f" x {task} task points" if task > 1 else "")


def check_case_count(scenario: Any, max_cases: int | None) -> None:
    """Refuse a sweep of more than `max_cases` cases (None: no limit), naming the count."""
    if max_cases is None:
        return
    total, made = case_count(scenario)
    if total > max_cases:
        raise Invalid(
            "(sweep)",
            f"{total} cases ({made}) is more than --max-cases {max_cases}; narrow the sweep, "
            f"or pass --max-cases {total} if you mean it",
        )


def check_param_points(
    variant: str, cls: type[AttentionVariant], axes: tuple[tuple[str, tuple[Any, ...]], ...], where: str
) -> list[tuple[dict[str, Any], str]]:
    """Every point of a params sweep must build a valid `cls.Params` (called under the case limit);
    returns each point's resolved params (defaults filled in) and how the point was written."""
    names = [name for name, _ in axes]
    resolved = []
    for point in itertools.product(*(vals for _, vals in axes)):
        shown = ", ".join(f"{n}={p!r}" for n, p in zip(names, point, strict=True))
        try:
            params = cls.make_params(dict(zip(names, point, strict=True)))
        except (ValueError, TypeError) as err:
            raise Invalid(where, f"{variant} rejects params {shown or 'defaults'}: {err}") from None
        resolved.append((dataclasses.asdict(params), shown))
    return resolved


def check_entries(variants: tuple[Any, ...]) -> None:
    """Check every params point of every variant entry, and refuse two points (of one entry or of
    two) that give the same case: same variant, impl, resolved params and fit. The problem axes,
    inputs and accuracy settings are shared by all entries, so this is exactly when two case ids
    would coincide; a label alone does not make a case different."""
    seen: dict[str, str] = {}
    for i, entry in enumerate(variants):
        cls = VARIANTS.get(entry.name)
        fit = dataclasses.asdict(entry.fit) if entry.fit is not None and cls.capabilities.learnable else None
        for params, shown in check_param_points(entry.name, cls, entry.params, f"variants[{i}].params"):
            for impl in entry.impl or (cls.impls[0],):
                key = repr((entry.name, impl, sorted(params.items()), fit))
                where = f"variants[{i}] ({entry.label or entry.name}{f': {shown}' if shown else ''})"
                if key in seen:
                    raise Invalid(
                        f"variants[{i}]",
                        f"{seen[key]} and {where} give the same case (every setting equal; a label does not "
                        "make a case different); remove one or change its params",
                    )
                seen[key] = where
