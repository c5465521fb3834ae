"""The `inputs:` section of a scenario: input regimes, each validated by its input source.

`inputs:` is one mapping `{dist: NAME, scale, seed, <knobs>}` or a non-empty list of them (a
sweep over regimes). NAME is a source registered in `harness.inputs.SOURCES`; its knobs are
checked by the source's own validators, and a source that fixes problem axes (its
`fixed_axes`) rejects a `problem:` block that contradicts them. Errors are `Invalid(where, ...)`
like every other check of the loader.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from harness.common.checks import non_negative_int, positive
from harness.config import validate as v
from harness.inputs import FIXABLE_AXES, SOURCES, InputSource, InputSpec, knob_owners, regime_name
from harness.plugins.registry import PluginLoadError

BASE_KEYS = ("dist", "scale", "seed")
DEFAULT_SOURCE = "gaussian"


def input_regimes(raw: Any, problem: Mapping[str, tuple[Any, ...]]) -> tuple[InputSpec, ...]:
    """`inputs:` (a mapping or a non-empty list of mappings) -> one InputSpec per regime.

    problem: the validated problem axes (name -> values). Regimes of one scenario must differ in
    dist (with the knobs its source names regimes by, `regime_knobs`: captured's layer) or scale:
    reports group cases by those two.
    """
    if not isinstance(raw, list):
        return (input_spec(raw, "inputs", problem),)
    if not raw:
        raise v.Invalid("inputs", "expected a mapping or a non-empty list of mappings, found an empty list")
    specs = tuple(input_spec(item, f"inputs[{i}]", problem) for i, item in enumerate(raw))
    seen: dict[tuple[str, float], int] = {}
    for i, spec in enumerate(specs):
        name = regime_name(spec)  # the dist, plus the knobs its source names regimes by (regime_knobs)
        first = seen.setdefault((name, spec.scale), i)
        if first != i:
            raise v.Invalid(
                f"inputs[{i}]",
                f"same dist and scale as inputs[{first}] ({name}, {spec.scale:g}); regimes of one "
                "scenario must differ in dist or scale (put other knob sweeps in separate scenarios)",
            )
    return specs


def input_spec(raw: Any, where: str, problem: Mapping[str, tuple[Any, ...]]) -> InputSpec:
    """One regime mapping -> InputSpec (options: the knobs set, sorted by name, validated)."""
    if not isinstance(raw, dict):
        keys = ", ".join(BASE_KEYS)
        raise v.Invalid(
            where, f"expected a mapping with keys {keys} and the source's knobs, found {v.show(raw)}"
        )
    dist = raw.get("dist", DEFAULT_SOURCE)
    source = _source(dist, f"{where}.dist")
    for name in raw:
        if isinstance(name, str) and name not in BASE_KEYS and name not in source.knobs:
            raise v.Invalid(v.key(where, name), _not_a_knob(name, dist, source))
    values = v.mapping(raw, where, [*BASE_KEYS, *source.knobs])
    options = tuple(
        (name, source.check_knob(name, values[name], f"{where}.{name}"))
        for name in sorted(set(values) - set(BASE_KEYS))
    )
    spec = InputSpec(
        dist=dist,
        scale=positive(values.get("scale", 1.0), f"{where}.scale"),
        seed=non_negative_int(values.get("seed", 0), f"{where}.seed"),
        options=options,
    )
    source.check_options(source.options(options), where)  # across knobs, e.g. captured: the model's limits
    _check_fixed_axes(source, spec, where, problem)
    return spec


def _source(raw: Any, where: str) -> InputSource:
    if not isinstance(raw, str):
        known = ", ".join(SOURCES.names())
        raise v.Invalid(where, f"expected an input source name (one of {known}), found {v.show(raw)}")
    if raw not in SOURCES:
        raise v.Invalid(where, str(SOURCES.unknown(raw)))
    try:
        return SOURCES.get(raw)()
    except PluginLoadError as err:
        raise v.Invalid(where, str(err)) from None


def _not_a_knob(name: str, dist: str, source: InputSource) -> str:
    """Why `name` is not allowed in a regime of `dist`: another source's knob, or a typo."""
    owners = knob_owners()
    its = f"its knobs: {', '.join(source.knobs) or 'none'}"
    others = [o for o in owners.get(name, []) if o != dist]
    if others:
        return f"a knob of dist {' and '.join(others)}, not {dist} ({its})"
    close = difflib.get_close_matches(name, [*BASE_KEYS, *owners], n=1, cutoff=0.6)
    hint = ""
    if close and (close[0] in BASE_KEYS or close[0] in source.knobs):
        hint = f" (did you mean {close[0]!r}?)"
    elif close:
        hint = f" (did you mean {close[0]!r}, a knob of dist {' and '.join(owners[close[0]])}?)"
    return f"unknown key{hint}; expected one of {', '.join([*BASE_KEYS, *source.knobs])} (dist {dist}; {its})"


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_fixed_axes(
    source: InputSource, spec: InputSpec, where: str, problem: Mapping[str, tuple[Any, ...]]
) -> None:
    """Reject problem axes that take values the source does not allow (`InputSource.fixed_axes`)."""
    for axis, allowed in source.fixed_axes(source.options(spec.options)).items():
        if axis not in FIXABLE_AXES:
            raise v.Invalid(
                f"{where}.dist",
                f"input source {spec.dist} fixes {axis!r}, which is not a problem axis a source may fix "
                f"({', '.join(FIXABLE_AXES)})",
            )
        bad = [x for x in problem.get(axis, ()) if x not in allowed]
        if bad:
            expected = _show(allowed[0]) if len(allowed) == 1 else f"one of {', '.join(map(_show, allowed))}"
            raise v.Invalid(
                f"problem.{axis}",
                f"expected {expected}: input source {spec.dist} ({where}) fixes {axis}; "
                f"found {', '.join(map(_show, bad))}",
            )
