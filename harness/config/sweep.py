"""Scenario -> Cases: the cartesian product of problem axes, variant impls and param axes.

A case id is a hash of everything that defines the case (not of the run), so the same case has
the same id across runs, machines and revisions: that is what `--resume` and `compare` key on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from harness.common.names import distinct_labels
from harness.config.scenario import InputSpec, Scenario, ScenarioError, VariantEntry
from harness.inputs import get_source
from harness.plugins.contract import FitSpec, Problem
from harness.plugins.kinds import KINDS
from harness.plugins.variants import VARIANTS


@dataclass(frozen=True)
class Case:
    """One measured unit: a variant configuration on one problem."""

    case_id: str
    variant: str
    impl: str
    params: dict[str, Any]  # resolved: defaults filled in
    label: str
    problem: Problem
    fit: FitSpec | None
    config_key: str  # identifies the variant config + problem minus seq_len (OOM skipping)
    inputs: InputSpec  # the input regime (distribution, scale, seed, knobs)
    task: dict[str, Any] = field(default_factory=dict)  # the kind's options, one point of its task axes
    point: tuple[tuple[str, Any], ...] = ()  # that point: (axis, value) of each task axis

    def describe(self) -> str:
        p = self.problem
        causal = "causal" if p.causal else "full"
        point = "".join(f" {name}={value}" for name, value in self.point)
        shape = f"N={p.seq_len} B={p.batch} H={p.heads} d={p.head_dim}"
        return f"{self.label}{point} {shape} {p.dtype} {causal} {p.mode}"


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve_params(entry: VariantEntry, values: dict[str, Any]) -> dict[str, Any]:
    """Full parameter dict for one point of the entry's param sweep, defaults filled in."""
    cls = VARIANTS.get(entry.name)
    return dataclasses.asdict(cls.make_params(values))


def _param_points(entry: VariantEntry) -> list[dict[str, Any]]:
    names = [k for k, _ in entry.params]
    axes = [vals for _, vals in entry.params]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)] or [{}]


def _label(entry: VariantEntry, impl: str, default_impl: str, point: dict[str, Any]) -> str:
    base = entry.label or entry.name
    if impl != default_impl or len(entry.impl) > 1:
        base += f"[{impl}]"
    swept = [k for k, vals in entry.params if len(vals) > 1]
    if swept:
        base += "(" + ",".join(f"{k}={point[k]}" for k in swept) + ")"
    return base


def task_points(scenario: Scenario) -> list[dict[str, Any]]:
    """The scenario's `task:` options once per point of the kind's task axes ([{}] without options)."""
    options = scenario.task_options
    if not options:
        return [{}]
    axes = KINDS.get(scenario.kind).task_axes(options)
    combos = itertools.product(*(options[name] for name in axes))
    return [{**options, **dict(zip(axes, combo, strict=True))} for combo in combos]


def expand(scenario: Scenario, device: str, only: list[str] | None = None) -> list[Case]:
    """All cases of `scenario` on `device` ("cpu" | "cuda"), in a stable order.

    Order: variant entry, impl, params, problem axes, task axes (`task_points`), seq_len innermost, so the
    OOM rule (skip longer lengths of a configuration that ran out of memory) sees lengths
    ascending.
    """
    ps = scenario.problem
    pads = {spec: get_source(spec.dist).pads for spec in scenario.inputs}  # masked inputs?
    points = task_points(scenario)
    axes = KINDS.get(scenario.kind).task_axes(scenario.task_options) if scenario.task else ()
    cases: list[Case] = []
    seen: dict[str, str] = {}  # case_id -> the entry (and label) that gave it
    ids: set[str] = set()
    for index, entry in enumerate(scenario.variants):
        if only and entry.name not in only:
            continue
        cls = VARIANTS.get(entry.name)
        impls = entry.impl or (cls.impls[0],)
        for impl in impls:
            for point in _param_points(entry):
                params = resolve_params(entry, point)
                label = _label(entry, impl, cls.impls[0], point)
                for spec, batch, heads, head_dim, dtype, causal, mode, task in itertools.product(
                    scenario.inputs, ps.batch, ps.heads, ps.head_dim, ps.dtype, ps.causal, ps.mode, points
                ):
                    fit = None
                    if entry.fit is not None and cls.capabilities.learnable:
                        fit = FitSpec(**dataclasses.asdict(entry.fit))
                    config = {
                        "variant": entry.name,
                        "impl": impl,
                        "params": params,
                        "batch": batch,
                        "heads": heads,
                        "head_dim": head_dim,
                        "dtype": dtype,
                        "device": device,
                        "causal": causal,
                        "mode": mode,
                        "fit": dataclasses.asdict(fit) if fit else None,
                        "inputs": dataclasses.asdict(spec),
                        "accuracy": dataclasses.asdict(scenario.accuracy),
                    }
                    if task:  # kernel scenarios have none: their case ids stay as they were
                        config["task"] = task
                    config_key = _digest(config)
                    for seq_len in sorted(ps.seq_len):
                        case_id = _digest({**config, "seq_len": seq_len})
                        origin = f"variants[{index}] ({label})"
                        if seen.setdefault(case_id, origin) != origin or case_id in ids:
                            _same_case(scenario, seen[case_id], origin, seq_len)
                        ids.add(case_id)
                        problem = Problem(
                            batch, heads, seq_len, head_dim, dtype, device, causal, mode, masked=pads[spec]
                        )
                        point = tuple((name, task[name]) for name in axes)
                        case = Case(case_id, entry.name, impl, params, label, problem, fit, config_key, spec)
                        cases.append(dataclasses.replace(case, task=task, point=point))
    labels = distinct_labels([(c.label, c.variant, c.impl, c.params) for c in cases])
    return [
        c if c.label == lab else dataclasses.replace(c, label=lab)
        for c, lab in zip(cases, labels, strict=True)
    ]


def _same_case(scenario: Scenario, first: str, second: str, seq_len: int) -> None:
    """Two sweep points giving one case id (a label alone does not make a case different)."""
    raise ScenarioError(
        f"{scenario.path}: variants: {first} and {second} give the same case (seq_len {seq_len} and "
        "every other setting equal; a label does not make a case different); remove one or change its params"
    )


def static_skip_reasons(case: Case) -> list[str]:
    """Reasons known before running anything (capabilities, missing packages)."""
    cls = VARIANTS.get(case.variant)
    params = cls.make_params(case.params)
    return cls.not_supported_reasons(case.problem, params, case.impl)
