"""Strict scenario YAML -> typed `Scenario`.

Data model only in this header; the loader below validates every key (see `load_scenario`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from harness.common.errors import UserError
from harness.common.names import suggest
from harness.config import bounds
from harness.config import validate as v
from harness.config.blocks import ExecuteSpec, ReportSpec, execute_block, report_block, task_block
from harness.config.regimes import input_regimes
from harness.config.shipped import resolve_scenario
from harness.inputs.spec import InputSpec
from harness.measure.specs import AccuracySpec, ChecksSpec, MeasureSpec
from harness.plugins.contract import DTYPES, MODES, AttentionVariant
from harness.plugins.kinds import KINDS
from harness.plugins.variants import VARIANTS


class ScenarioError(UserError, ValueError):
    """Bad scenario input. `str(err)` is one line: `FILE: KEY.PATH: what was expected`."""


@dataclass(frozen=True)
class ProblemSpec:
    """Sweep axes of the problem; every field is a non-empty tuple (a scalar in YAML = 1 value)."""

    batch: tuple[int, ...]
    heads: tuple[int, ...]
    head_dim: tuple[int, ...]
    seq_len: tuple[int, ...]
    dtype: tuple[str, ...] = ("fp32",)
    causal: tuple[bool, ...] = (False,)
    mode: tuple[str, ...] = ("fwd",)


@dataclass(frozen=True)
class FitBlock:
    """The `fit:` block of a variant entry (mirrors harness.plugins.contract.FitSpec)."""

    steps: int = 200
    lr: float = 1e-2
    seed: int = 1234
    batches: int = 4
    seq_len: int | None = None
    rows: int = 256
    mse_weight: float = 0.0


@dataclass(frozen=True)
class VariantEntry:
    """One entry of `variants:`. `params` maps each param name to its sweep values."""

    name: str
    impl: tuple[str, ...] = ()  # empty = the variant's default impl
    params: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    fit: FitBlock | None = None  # None for variants that are not learnable; default FitBlock() otherwise
    label: str | None = None  # display name in reports


@dataclass(frozen=True)
class Scenario:
    path: str
    name: str
    version: int
    description: str
    device: str  # cpu | cuda | auto
    problem: ProblemSpec
    inputs: tuple[InputSpec, ...]  # one per input regime; a list in the YAML sweeps them
    variants: tuple[VariantEntry, ...]
    accuracy: AccuracySpec = field(default_factory=AccuracySpec)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    checks: ChecksSpec = field(default_factory=ChecksSpec)
    kind: str = "kernel"  # a registered benchmark kind (harness.plugins.kinds)
    execute: ExecuteSpec = field(default_factory=ExecuteSpec)  # how groups run, unless the CLI says
    report: ReportSpec = field(default_factory=ReportSpec)  # the `report:` block
    task: tuple[tuple[str, Any], ...] = ()  # the kind's own options (`task:`), validated by the kind
    seeds: tuple[int, ...] = (0,)  # draws of a variant with random parameters (harness/measure/seeds.py)

    @property
    def task_options(self) -> dict[str, Any]:
        """The `task:` block as a dict (defaults filled in by the kind)."""
        return dict(self.task)


def load_scenario(path: str, max_cases: int | None = bounds.MAX_CASES) -> Scenario:
    """Read and validate `path` or a shipped scenario's name (`ScenarioError`: one line naming file,
    key, expectation); refuses over `max_cases` cases (None: no limit) and two entries giving one case."""
    try:
        return _scenario(found := resolve_scenario(str(path)), v.read_yaml(found), max_cases)
    except v.Invalid as err:
        raise ScenarioError(v.one_line(f"{path}: {err.where}: {err.message}")) from None


def scenario_from_dict(raw: dict[str, Any], path: str) -> Scenario:
    """Validate a scenario given as a dict (`scenario_to_dict` output, its `path` key ignored);
    errors as `load_scenario`'s, naming `path`."""
    try:
        return _scenario(path, {k: val for k, val in raw.items() if k != "path"})
    except v.Invalid as err:
        raise ScenarioError(v.one_line(f"{path}: {err.where}: {err.message}")) from None


def scenario_to_dict(s: Scenario) -> dict[str, Any]:
    """Plain JSON-able dict of `s`; without its `path` key it is a scenario that loads back to `s`."""
    variants = []
    for e in s.variants:
        entry: dict[str, Any] = {"name": e.name, "params": {k: list(vals) for k, vals in e.params}}
        if e.impl:
            entry["impl"] = list(e.impl)
        if e.fit is not None:
            entry["fit"] = dataclasses.asdict(e.fit)
        if e.label is not None:
            entry["label"] = e.label
        variants.append(entry)
    inputs = [{"dist": i.dist, "scale": i.scale, "seed": i.seed, **dict(i.options)} for i in s.inputs]
    seeds = {} if s.seeds == (0,) else {"seeds": list(s.seeds)}  # the default: hashes stay as they were
    return {
        "path": s.path,
        "name": s.name,
        "version": s.version,
        "description": s.description,
        "kind": s.kind,
        "device": s.device,
        "problem": {k: list(vals) for k, vals in dataclasses.asdict(s.problem).items()},
        "inputs": inputs[0] if len(inputs) == 1 else inputs,
        "variants": variants,
        "accuracy": dataclasses.asdict(s.accuracy),
        "measure": dataclasses.asdict(s.measure),
        "checks": dataclasses.asdict(s.checks),
        "report": dataclasses.asdict(s.report),
        "task": dict(s.task),
        **seeds,
        "execute": {
            k: (dict(val) if k == "slurm_params" else list(val)) if isinstance(val, tuple) else val
            for k, val in dataclasses.asdict(s.execute).items()
        },
    }


# ----- schema -------------------------------------------------------------------------------
TOP_KEYS = tuple(
    "name version description kind task seeds device problem inputs variants accuracy measure "
    "checks execute report".split()
)
DEVICES = ("cpu", "cuda", "auto")
VARIANT_KEYS = ("name", "impl", "params", "fit", "label")

_positive_int = partial(v.as_int, minimum=1)
_axis_int = partial(v.as_int, minimum=1, maximum=bounds.MAX_AXIS)
_seed = partial(v.as_int, minimum=0)
_nonneg = partial(v.as_float, minimum=0.0)
_positive = partial(v.as_float, minimum=0.0, strict=True)

PROBLEM_AXES: dict[str, tuple[v.Check, str]] = {
    "batch": (_axis_int, "a positive int"),
    "heads": (_axis_int, "a positive int"),
    "head_dim": (_axis_int, "a positive int"),
    "seq_len": (_axis_int, "a positive int"),
    "dtype": (v.choice(tuple(DTYPES), "dtype"), "a dtype"),
    "causal": (v.as_bool, "true or false"),
    "mode": (v.choice(MODES, "mode"), "a mode"),
}
FIT_CHECKS: dict[str, v.Check] = {
    "steps": _seed,  # any int >= 0
    "lr": _positive,
    "seed": _seed,
    "batches": _positive_int,
    "seq_len": v.optional(_positive_int),
    "rows": _positive_int,
    "mse_weight": _nonneg,
}
ACCURACY_CHECKS: dict[str, v.Check] = {"enabled": v.as_bool, "rows": _positive_int, "seed": _seed}
MEASURE_CHECKS: dict[str, v.Check] = {
    "warmup_ms": _nonneg,
    "min_samples": _positive_int,
    "max_samples": _positive_int,
    "rep_ms": _nonneg,
    "flush_l2": v.as_bool,
    "timeout_s": _positive,
    "memory": v.as_bool,
    "roofline": v.as_bool,
    "threads": v.optional(_positive_int),  # null: leave torch's default
}
CHECKS_CHECKS: dict[str, v.Check] = {
    "causality": v.as_bool,
    "batch_independence": v.as_bool,
    "tolerance": _positive,
}


def _scenario(path: str, raw: dict[str, Any], max_cases: int | None = None) -> Scenario:
    """Validate the top-level mapping section by section, in document order; then the size of the
    sweep (a product of its axes) and, under the limit, every point of each params sweep."""
    top = v.mapping(raw, v.TOP, TOP_KEYS, required=("name", "problem", "variants"))
    scenario = Scenario(
        path=path,
        name=v.as_str(top["name"], "name"),
        version=v.as_int(top.get("version", 1), "version", minimum=1),
        description=_text(top.get("description", ""), "description"),
        kind=(kind := v.choice(tuple(KINDS.names()), "kind")(top.get("kind", "kernel"), "kind")),
        task=task_block(kind, top.get("task", {})),
        seeds=_seeds(top.get("seeds", [0]), kind),
        device=v.choice(DEVICES, "device")(top.get("device", "auto"), "device"),
        problem=(problem := _problem(top["problem"])),
        inputs=(inputs := input_regimes(top.get("inputs", {}), dataclasses.asdict(problem))),  # fixed axes
        variants=_variants(top["variants"]),
        accuracy=v.block(top.get("accuracy", {}), "accuracy", AccuracySpec, ACCURACY_CHECKS),
        measure=_measure(top.get("measure", {})),
        checks=v.block(top.get("checks", {}), "checks", ChecksSpec, CHECKS_CHECKS),
        report=report_block(top.get("report", {}), top["variants"]),
        execute=execute_block(top.get("execute", {})),
    )
    KINDS.get(kind).check_inputs(inputs)  # the kind's own checks of the regimes
    bounds.problem_size(scenario.problem)
    bounds.check_case_count(scenario, max_cases)
    bounds.check_entries(scenario.variants)  # every params point; no two giving the same case
    return scenario


MAX_SEEDS = 100


def _seeds(raw: Any, kind: str) -> tuple[int, ...]:
    """`seeds:` a seed (int >= 0) or a list of distinct ones, for a kind that takes them."""
    seeds = v.axis(raw, "seeds", _seed, "a seed (int >= 0)")
    if len(seeds) > MAX_SEEDS:
        raise v.Invalid("seeds", f"expected at most {MAX_SEEDS} seeds, found {len(seeds)}")
    if seeds != (0,) and not KINDS.get(kind).takes_seeds:
        raise v.Invalid("seeds", f"kind {kind!r} does not take `seeds:` (it sets its own draws in `task:`)")
    return seeds


def _measure(raw: Any) -> MeasureSpec:
    measure = v.block(raw, "measure", MeasureSpec, MEASURE_CHECKS)
    if measure.max_samples < measure.min_samples:
        found = f"found {measure.max_samples} < min_samples {measure.min_samples}"
        raise v.Invalid("measure.max_samples", f"expected an int >= min_samples, {found}")
    return measure


def _text(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        raise v.Invalid(where, f"expected a string, found {v.show(raw)}")
    return raw


def _problem(raw: Any) -> ProblemSpec:
    required = ("batch", "heads", "head_dim", "seq_len")
    values = v.mapping(raw, "problem", list(PROBLEM_AXES), required=required)
    axes = {}
    for name, value in values.items():
        check, desc = PROBLEM_AXES[name]
        axes[name] = v.axis(value, f"problem.{name}", check, desc)
    return ProblemSpec(**axes)


def _variant_class(raw: Any, where: str) -> type[AttentionVariant]:
    known = VARIANTS.names()
    if not isinstance(raw, str):
        raise v.Invalid(where, f"expected a variant name (one of {', '.join(known)}), found {v.show(raw)}")
    if raw not in known:
        hint = suggest(raw, known)
        raise v.Invalid(where, f"unknown variant {raw!r}{hint}; expected one of {', '.join(known)}")
    try:
        return VARIANTS.get(raw)
    except (ImportError, AttributeError) as err:
        raise v.Invalid(where, f"variant {raw!r} is registered but cannot be imported: {err!r}") from None


def _variants(raw: Any) -> tuple[VariantEntry, ...]:
    if not isinstance(raw, list) or not raw:
        raise v.Invalid("variants", f"expected a non-empty list of variant entries, found {v.show(raw)}")
    return tuple(_variant(entry, f"variants[{i}]") for i, entry in enumerate(raw))


def _variant(raw: Any, where: str) -> VariantEntry:
    if isinstance(raw, str):
        raise v.Invalid(where, f"expected a mapping like {{name: {raw}}}, found {v.show(raw)}")
    entry = v.mapping(raw, where, VARIANT_KEYS, required=("name",))
    cls = _variant_class(entry["name"], f"{where}.name")
    impl = ()
    if "impl" in entry:
        impl = v.axis(entry["impl"], f"{where}.impl", v.choice(cls.impls, "impl"), "an impl name")
    params = _params(entry["name"], cls, entry.get("params", {}), f"{where}.params")
    # Learnable variants are always distilled before their error is measured (`steps: 0` opts out).
    fit = FitBlock() if cls.capabilities.learnable else None
    if "fit" in entry:
        if not cls.capabilities.learnable:
            raise v.Invalid(
                f"{where}.fit", f"variant {entry['name']!r} is not learnable, it has nothing to fit"
            )
        fit = v.block(entry["fit"], f"{where}.fit", FitBlock, FIT_CHECKS)
    label = v.as_str(entry["label"], f"{where}.label") if "label" in entry else None
    return VariantEntry(name=entry["name"], impl=impl, params=params, fit=fit, label=label)


def _params(variant: str, cls: type[AttentionVariant], raw: Any, where: str) -> tuple[tuple[str, tuple], ...]:
    """`params:` -> (name, values) axes in YAML order; every sweep point must build a valid `cls.Params`."""
    fields = cls.param_fields()
    values = v.mapping(raw, where, list(fields))
    axes = []
    for name in values:
        check, desc = v.param_check(fields[name])
        axes.append((name, v.axis(values[name], f"{where}.{name}", check, desc)))
    return tuple(axes)  # every point is checked by bounds.check_entries, under the case limit
