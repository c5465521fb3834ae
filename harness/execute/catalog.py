"""What is installed: every registry's entries as readable lines (`run_bench.py list`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from harness.execute.executors import EXECUTORS
from harness.inputs import SOURCES
from harness.plugins.kinds import KINDS
from harness.plugins.metrics import _ORDER, METRICS
from harness.plugins.registry import PluginLoadError, Registry
from harness.plugins.variants import VARIANTS


def _loaded(registry: Registry, lines: list[str]) -> Iterator[tuple[str, Any]]:
    """(name, entry) of every entry that loads; a broken one (a third-party entry point that
    fails to import or is of the wrong kind) is listed in `lines` as broken, with its reason."""
    for name in registry.names():
        try:
            entry = registry.get(name)
        except PluginLoadError as err:
            lines.append(f"{name}: BROKEN, cannot be used: {' '.join(str(err).split())}")
            continue
        yield name, entry


def _variants() -> list[str]:
    lines: list[str] = []
    for name, cls in _loaded(VARIANTS, lines):
        caps = cls.capabilities
        params = ", ".join(
            f"{f.name}={f.default!r}"
            for f in dataclasses.fields(cls.Params)
            if f.default is not dataclasses.MISSING
        )
        kinds = [k for k, on in (("causal", caps.causal), ("non-causal", caps.non_causal)) if on]
        masking = [impl for impl in cls.impls if cls.capabilities_for(impl).masking]  # key-padding mask
        lines += [
            f"{name} (v{cls.version}): {cls.paper}",
            f"    impls: {', '.join(cls.impls)}; params: {params or '-'}",
            f"    devices: {','.join(caps.devices)}; dtypes: {','.join(caps.dtypes)}; {' + '.join(kinds)}; "
            f"backward: {'yes' if caps.backward else 'no'}; learnable: {'yes' if caps.learnable else 'no'}; "
            f"masking: {'yes' if len(masking) == len(cls.impls) else ', '.join(masking) or 'no'}",
        ]
    return lines


def _inputs() -> list[str]:
    lines: list[str] = []
    for name, source in _loaded(SOURCES, lines):
        knobs = ", ".join(f"{k}={knob.default!r}" for k, knob in source.knobs.items()) or "-"
        lines += [
            f"{name}: {source.description}",
            f"    knobs: {knobs}; pads: {'yes' if source.pads else 'no'}",
        ]
    return lines


def _metrics() -> list[str]:
    lines: list[str] = []
    for _, m in sorted(_loaded(METRICS, lines), key=lambda item: (_ORDER.get(item[0], len(_ORDER)), item[0])):
        better = {"lower": "lower is better", "higher": "higher is better"}.get(
            m.direction or "", "descriptive"
        )
        gate = "; gated" if m.gate is not None else ""
        lines.append(f"{m.name} [{m.unit}] ({m.group}; {better}{gate}): {m.description}")
    return lines


def _executors() -> list[str]:
    lines: list[str] = []
    return [f"{name}: {ex.description}" for name, ex in _loaded(EXECUTORS, lines)] + lines


def _kinds() -> list[str]:
    lines: list[str] = []
    return [f"{name}: {kind.description}" for name, kind in _loaded(KINDS, lines)] + lines


SECTIONS: dict[str, Callable[[], list[str]]] = {
    "variants": _variants,
    "inputs": _inputs,
    "metrics": _metrics,
    "executors": _executors,
    "kinds": _kinds,
}


def describe(what: str = "all") -> list[str]:
    """Lines describing one registry (`what` in SECTIONS), or all of them under headings."""
    if what != "all":
        return SECTIONS[what]()
    lines: list[str] = []
    for title, section in SECTIONS.items():
        lines += ([""] if lines else []) + [f"# {title}"] + section()
    return lines
