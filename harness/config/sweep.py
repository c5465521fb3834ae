"""Scenario -> Cases: the cartesian product of problem axes, variant impls and param axes.

A case id is a hash of everything that defines the case (not of the run), so the same case has
the same id across runs, machines and revisions: that is what `--resume` and `compare` key on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from harness.config.scenario import InputSpec, Scenario, VariantEntry
from harness.inputs import get_source
from harness.plugins.contract import FitSpec, Problem
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

    def describe(self) -> str:
        p = self.problem
        causal = "causal" if p.causal else "full"
        return (
            f"{self.label} N={p.seq_len} B={p.batch} H={p.heads} d={p.head_dim} {p.dtype} {causal} {p.mode}"
        )


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


def expand(scenario: Scenario, device: str, only: list[str] | None = None) -> list[Case]:
    """All cases of `scenario` on `device` ("cpu" | "cuda"), in a stable order.

    Order: variant entry, impl, params, then problem axes with seq_len innermost, so the
    OOM rule (skip longer lengths of a configuration that ran out of memory) sees lengths
    ascending.
    """
    ps = scenario.problem
    pads = {spec: get_source(spec.dist).pads for spec in scenario.inputs}  # masked inputs?
    cases: list[Case] = []
    seen: set[str] = set()
    for entry in scenario.variants:
        if only and entry.name not in only:
            continue
        cls = VARIANTS.get(entry.name)
        impls = entry.impl or (cls.impls[0],)
        for impl in impls:
            for point in _param_points(entry):
                params = resolve_params(entry, point)
                label = _label(entry, impl, cls.impls[0], point)
                for spec, batch, heads, head_dim, dtype, causal, mode in itertools.product(
                    scenario.inputs, ps.batch, ps.heads, ps.head_dim, ps.dtype, ps.causal, ps.mode
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
                    config_key = _digest(config)
                    for seq_len in sorted(ps.seq_len):
                        case_id = _digest({**config, "seq_len": seq_len})
                        if case_id in seen:
                            continue
                        seen.add(case_id)
                        problem = Problem(
                            batch, heads, seq_len, head_dim, dtype, device, causal, mode, masked=pads[spec]
                        )
                        cases.append(
                            Case(case_id, entry.name, impl, params, label, problem, fit, config_key, spec)
                        )
    return cases


def static_skip_reasons(case: Case) -> list[str]:
    """Reasons known before running anything (capabilities, missing packages)."""
    cls = VARIANTS.get(case.variant)
    params = cls.make_params(case.params)
    return cls.not_supported_reasons(case.problem, params, case.impl)
