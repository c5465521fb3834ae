"""Planning: a scenario's cases, grouped into the units an executor hands to one worker.

A case group holds the cases that share the OOM rule and a fit: one variant configuration on one
problem and input regime, over all sequence lengths and modes. Running a group in order (lengths
ascending) lets the worker skip longer lengths after an OOM and reuse one fit across modes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from harness.config.scenario import Scenario
from harness.config.sweep import Case, expand


@dataclass(frozen=True)
class CaseGroup:
    """Cases sharing a fit and the OOM rule, in run order (seq_len ascending within a mode)."""

    key: str
    cases: tuple[Case, ...]


def group_key(case: Case) -> str:
    """The case without its length and mode: everything a fit and the OOM rule depend on."""
    problem = dataclasses.replace(case.problem, seq_len=0, mode="-")
    parts = [case.variant, case.impl, case.params, dataclasses.asdict(problem), str(case.inputs)]
    parts += [case.task] if case.task else []  # a task point is a configuration of its own
    return json.dumps(parts, sort_keys=True, default=str)


def select_cases(
    scenario: Scenario, device: str, only: list[str] | None = None, case_ids: list[str] | None = None
) -> list[Case]:
    """The sweep's cases on `device`, narrowed to the variants `only` and the ids `case_ids`."""
    cases = expand(scenario, device, only=only)
    if case_ids:
        wanted = set(case_ids)
        cases = [c for c in cases if c.case_id in wanted]
    return cases


def group_cases(cases: list[Case], done: set[str] | frozenset[str] = frozenset()) -> list[CaseGroup]:
    """The groups of the cases not in `done`, in the sweep's order."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        if case.case_id not in done:
            groups.setdefault(group_key(case), []).append(case)
    return [CaseGroup(key, tuple(members)) for key, members in groups.items()]


def plan(
    scenario: Scenario,
    device: str,
    only: list[str] | None = None,
    case_ids: list[str] | None = None,
    done: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[Case], list[CaseGroup]]:
    """(every selected case, the groups of those not yet in `done`), both in the sweep's order."""
    cases = select_cases(scenario, device, only, case_ids)
    return cases, group_cases(cases, done)
