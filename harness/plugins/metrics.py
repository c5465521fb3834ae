"""Metrics as data: what every number in a record means, its unit, which way is better, how the
report formats it and how `compare` gates it.

Metrics are scoped by benchmark kind: a kind declares the metrics its records may carry (its
class's `metrics`, in `harness/kinds/<kind>/metrics.py`), so a kernel record never carries an
metric of another kind. `metrics_of(kind)` is that list: the kind's own declarations plus any metric another
package registers for it through the entry-point group ``attnbench.metrics`` (value
``"module:attr"``, a `Metric` whose `kinds` names the kinds it attaches to). Every metric of every
loaded kind is also in the `METRICS` registry by name (names are unique: they are columns). A
metric with `compute` is derived from other fields of a record (``tflops = flops / time``) and
filled when a record is written or a DataFrame is built; a metric with a `Gate` is judged by
`compare`, `ab` and `history check`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.common.numbers import finite, fmt_sig
from harness.plugins.kinds import KINDS, installed_kind
from harness.plugins.registry import Registry

DIRECTIONS = ("lower", "higher", None)
GROUPS = ("time", "memory", "accuracy", "cost", "check", "fit", "input", "environment", "task")
GATE_KINDS = ("exact", "samples")
ARROWS = {"lower": "↓", "higher": "↑", None: ""}
MIB = float(1 << 20)


@dataclass(frozen=True)
class Gate:
    """How `compare` judges a metric between a base and a head run.

    kind "exact": deterministic; REGRESSED when head is worse than base by more than
    `factor` x base + `abs` (in the metric's direction), IMPROVED when better by as much.
    kind "samples": timing; judged on the raw samples in the field `samples` (pooled rounds of an
    `ab` run in `rounds`) with a bootstrap CI and Mann-Whitney (`harness.measure.stats`).
    devices: gated only when both runs ran on one of these devices (None: any device).
    reason: the text a changed verdict carries (default: the threshold that was crossed).
    column: "found" = the comparison Markdown gives the metric a column when any case has a finding
    for it; "changed" = only when some finding is not SAME (otherwise it appears under "why").
    """

    kind: str = "exact"
    factor: float = 1.0
    abs: float = 0.0
    samples: str = ""
    rounds: str = ""
    devices: tuple[str, ...] | None = None
    reason: str = ""
    column: str = "found"

    def __post_init__(self) -> None:
        if self.kind not in GATE_KINDS:
            raise ValueError(f"gate kind must be one of {GATE_KINDS}, got {self.kind!r}")
        if self.kind == "samples" and not self.samples:
            raise ValueError("a 'samples' gate names the field that holds the raw samples")
        if self.factor < 1.0 or self.abs < 0.0:
            raise ValueError(f"a gate needs factor >= 1 and abs >= 0, got {self.factor}, {self.abs}")
        if self.column not in ("found", "changed"):
            raise ValueError(f"gate column must be 'found' or 'changed', got {self.column!r}")


@dataclass(frozen=True)
class Metric:
    """One named number (or list of numbers) a record carries.

    name: the record key and DataFrame column. unit: SI-style unit of the stored value ("ms",
    "bytes", "1" for ratios, "TFLOP/s"). direction: "lower" | "higher" is better, None for
    descriptive values. group: time | memory | accuracy | cost | check | fit | input | environment.
    gate: how `compare` judges it (None: reported only). compute: derives the value from the other
    fields of a flat record (None: measured by the pipeline step `measured_by`).
    title: short human name for headers; display_unit and scale: how the report shows it (bytes as
    MiB: display_unit "MiB", scale 1/2**20); digits: significant digits, or decimals: fixed decimal
    places (bounded scores like skill); table: give it a table of its own in the report when no
    other section shows it.
    """

    name: str
    unit: str
    direction: str | None
    description: str
    group: str
    gate: Gate | None = None
    compute: Callable[[Mapping[str, Any]], float | None] | None = None
    measured_by: str = ""
    title: str = ""
    display_unit: str = ""
    scale: float = 1.0
    digits: int = 3
    decimals: int | None = None
    table: bool = True
    kinds: tuple[str, ...] = ()  # a metric registered on its own (entry point): the kinds it attaches to

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"metric name must be an identifier, got {self.name!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.name}: direction must be one of {DIRECTIONS}")
        if self.group not in GROUPS:
            raise ValueError(f"metric {self.name}: group must be one of {GROUPS}, got {self.group!r}")
        if self.compute is not None and self.measured_by:
            raise ValueError(f"metric {self.name}: a derived metric (compute) is not measured_by a step")
        if self.compute is None and not self.measured_by:
            raise ValueError(f"metric {self.name}: name the pipeline step that measures it (measured_by)")

    @property
    def shown_unit(self) -> str:
        """The unit cells are shown in ("" for plain ratios)."""
        unit = self.display_unit or self.unit
        return "" if unit == "1" else unit

    @property
    def better(self) -> str:
        """'↓ better', '↑ better' or '' (descriptive)."""
        return f"{ARROWS[self.direction]} better" if self.direction else ""

    def header(self) -> str:
        """Column header: title, unit and direction, e.g. 'median time (ms, ↓ better)'."""
        extras = [x for x in (self.shown_unit, self.better) if x]
        return (self.title or self.name) + (f" ({', '.join(extras)})" if extras else "")

    def axis_label(self) -> str:
        """Plot axis label: title and unit, e.g. 'median time per call (ms)'."""
        return (self.title or self.name) + (f" ({self.shown_unit})" if self.shown_unit else "")

    def format(self, value: Any, unit: bool = False) -> str:
        """`value` in the display unit with `digits` significant digits; 'n/a' when missing."""
        v = finite(value)
        if v is None:
            return "n/a"
        v *= self.scale
        text = f"{v:.{self.decimals}f}" if self.decimals is not None else fmt_sig(v, self.digits)
        return f"{text} {self.shown_unit}" if unit and self.shown_unit else text

    def gate_rule(self) -> str:
        """The gate in words: `above base × 1.1 + 1e-06`, `above base × 1.01 + 1 MiB (on cuda only)`."""
        g = self.gate
        if g is None:
            return ""
        if g.kind == "samples":
            return f"judged on the raw samples in {g.samples} (bootstrap CI and Mann-Whitney)"
        tol = f"{g.abs * self.scale:g}{' ' + self.shown_unit if self.shown_unit else ''}"
        if self.direction == "higher":
            rule = f"below (base − {tol}) ÷ {g.factor:g}" if g.abs else f"below base ÷ {g.factor:g}"
        else:
            rule = f"above base × {g.factor:g}" + (f" + {tol}" if g.abs else "")
        return rule + (f" (on {', '.join(g.devices)} only)" if g.devices else "")

    def is_better(self, a: float, b: float) -> bool:
        """Whether `a` is strictly better than `b` in this metric's direction."""
        return a < b if self.direction == "lower" else a > b if self.direction == "higher" else False


METRICS: Registry[Metric] = Registry(
    "metric", group="attnbench.metrics", builtins="harness.kinds.builtin_metrics", base=Metric
)
_ORDER: dict[str, int] = {}  # declaration order of registered metrics (tables, docs, columns)


def register_metric(metric: Metric) -> Metric:
    """Register `metric` under its name (the one entry a new metric needs); returns it."""
    if not isinstance(metric, Metric):
        raise TypeError(f"expected a Metric, got {metric!r}")
    if metric.name in METRICS.names():
        known = METRICS.get(metric.name)
        if known is metric or known == metric:
            return known
    METRICS.register(metric.name, metric)
    _ORDER.setdefault(metric.name, len(_ORDER))
    return metric


def unregister_metric(name: str) -> None:
    """Remove a metric (tests that plant one use it)."""
    METRICS.unregister(name)
    _ORDER.pop(name, None)


def all_metrics() -> list[Metric]:
    """Every registered metric, built-ins in declaration order, then the rest by name."""
    names = METRICS.names()
    return [METRICS.get(n) for n in sorted(names, key=lambda n: (_ORDER.get(n, len(_ORDER)), n))]


def metric(name: str) -> Metric:
    """The metric `name`; an unknown name raises a KeyError naming the known metrics."""
    return METRICS.get(name)


def metrics_of(kind: str) -> list[Metric]:
    """The metrics records of `kind` may carry, in declaration order: the kind's own (its class's
    `metrics`, registered here on first use) and those registered for it from outside (`kinds`).
    [] for a kind that is not installed here (its records still keep every value they carry)."""
    if kind not in _SCOPES:
        cls = installed_kind(kind)
        if cls is None:
            return [m for m in all_metrics() if kind in m.kinds]
        _SCOPES[kind] = tuple(register_metric(m) for m in getattr(cls, "metrics", ()))
    own = list(_SCOPES[kind])
    names = {m.name for m in own}
    return own + [m for m in all_metrics() if kind in m.kinds and m.name not in names]


_SCOPES: dict[str, tuple[Metric, ...]] = {}  # kind -> its declared metrics, once loaded


def installed_metrics() -> list[Metric]:
    """The metrics of every installed kind (outside kinds included: their classes are loaded),
    then any other registered metric; a kind that cannot be loaded here adds nothing."""
    found: dict[str, Metric] = {}
    for kind in sorted(KINDS.names(), key=lambda k: (k != "kernel", k)):  # the default kind first
        found.update((m.name, m) for m in metrics_of(kind))
    found.update((m.name, m) for m in all_metrics() if m.name not in found)
    return list(found.values())


def gated_metrics(kind: str | None = None) -> list[Metric]:
    """Metrics `compare` judges, in declaration order: those of `kind`, or of every installed kind."""
    pool = metrics_of(kind) if kind is not None else installed_metrics()
    return [m for m in pool if m.gate is not None]


def derive(row: Mapping[str, Any], kind: str | None = None) -> dict[str, Any]:
    """Values of the derived metrics of `kind` (default: the row's `kind`, else every loaded
    metric) computable from `row` (a flat record); None when not."""
    kind = kind if kind is not None else row.get("kind")
    out: dict[str, Any] = {}
    for m in metrics_of(str(kind)) if kind else all_metrics():
        if m.compute is not None:
            try:
                out[m.name] = finite(m.compute(row))
            except (TypeError, ValueError, ZeroDivisionError, KeyError):
                out[m.name] = None
    return out


def rate(amount_key: str, per: float) -> Callable[[Mapping[str, Any]], float | None]:
    """compute for `amount / median time / per` (e.g. FLOPs -> TFLOP/s with per = 1e12)."""

    def compute(row: Mapping[str, Any]) -> float | None:
        amount, t = finite(row.get(amount_key)), finite(row.get("time_ms_median"))
        return amount / (t * 1e-3) / per if amount is not None and t else None

    return compute
