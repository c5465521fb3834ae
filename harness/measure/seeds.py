"""Seeds of a case whose variant draws its parameters at random: which seeds run, what each seed
changes, and the mean and spread over seeds that the record carries in place of one draw.

A variant draws at random when `cls.draws_at_random(params)` (Performer's features, Taylor's
projection, a learnable map's initialisation and fit). The scenario's `seeds:` (default `[0]`)
lists the draws; seed s changes three things, and seed 0 changes none of them (a one-seed run is
the run the harness made before seeds existed):

    params.seed      -> params.seed + s          (a variant with a `seed` param)
    torch's generator seed before __init__ -> base + GENERATOR_STRIDE * s
    fit.seed         -> fit.seed + s             (calibration batches, sampling inside the fit)

A variant that does not draw at random runs once, whatever `seeds:` says (`n_seeds` = 1,
`info.seeds` = "not drawn at random: one run"). No torch import here: the metric declarations are
read without loading the kinds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from harness.plugins.metrics import Metric

GENERATOR_STRIDE = 1000  # seed s builds after torch.manual_seed(base + 1000 s): apart from layer offsets
NOT_RANDOM = "not drawn at random: one run"

N_SEEDS = Metric("n_seeds", "1", None, "draws the random metrics average over (the scenario's `seeds:` "
                 "for a variant whose parameters are drawn at random, else 1)", "accuracy",
                 measured_by="seeds", title="seeds", digits=4, table=False)  # fmt: skip


def seed_metrics(names: Sequence[str], group: str) -> tuple[Metric, ...]:
    """For each metric in `names` (recorded as the mean over seeds): `<name>_sd`, the sample standard
    deviation over the seeds (2 or more), and `<name>_seeds`, the value at each seed in order."""
    out: list[Metric] = []
    for name in names:
        out += [
            Metric(f"{name}_sd", "1", None, f"standard deviation of {name} over the seeds (n - 1; "
                   "only with 2 or more seeds)", group, measured_by="seeds", title=f"{name} sd",
                   table=False),
            Metric(f"{name}_seeds", "1", None, f"{name} at each seed, in the order of `info.seeds`",
                   group, measured_by="seeds", title=f"{name} per seed", table=False),
        ]  # fmt: skip
    return tuple(out)


def seeds_for(cls: Any, params: Any, seeds: Sequence[int]) -> tuple[int, ...]:
    """The seeds a case of `cls` with `params` runs: all of `seeds` when it draws at random, else
    the first only."""
    seeds = tuple(seeds) or (0,)
    return seeds if cls.draws_at_random(params) else seeds[:1]


def seeded_params(params: Any, seed: int) -> Any:
    """`params` (a frozen dataclass) with its `seed` field moved by `seed`; unchanged without one."""
    if seed and any(f.name == "seed" for f in dataclasses.fields(params)):
        return dataclasses.replace(params, seed=params.seed + seed)
    return params


def generator_seed(base: int, seed: int) -> int:
    """torch's generator seed before building the variant for `seed` (base: the case's own)."""
    return base + GENERATOR_STRIDE * seed


def seeded_fit(fit: Any, seed: int) -> Any:
    """The fit spec (FitSpec) for `seed`: its own seed moved by `seed`; None stays None."""
    return fit if fit is None or not seed else dataclasses.replace(fit, seed=fit.seed + seed)


def spread(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1) of `values`; None under 2 values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))


def summarize(
    per_seed: Sequence[dict[str, Any]], seeded: Sequence[str], averaged: Sequence[str] = ()
) -> dict[str, Any]:
    """Metrics over seeds from one metrics dict per seed (the first seed first).

    Each name in `seeded` measured at every seed: its mean, `<name>_sd` (2+ seeds) and
    `<name>_seeds`; each name in `averaged`: its mean only; any other metric: the first seed's value
    (what is measured once, like time). A name missing at some seed is left out of the mean (a
    metric measured at only some seeds would mix draws) and keeps the first seed's value."""
    out = dict(per_seed[0])
    for name in (*seeded, *averaged):
        values = [m.get(name) for m in per_seed]
        if any(not isinstance(x, int | float) or isinstance(x, bool) for x in values):
            continue
        out[name] = sum(values) / len(values)
        if name in seeded and len(values) > 1:
            out[f"{name}_sd"] = spread(values)
            out[f"{name}_seeds"] = list(values)
    out[N_SEEDS.name] = len(per_seed)
    return out


def seeds_info(cls: Any, params: Any, seeds: Sequence[int]) -> list[int] | str:
    """`info.seeds`: the seeds that ran, or why only one did."""
    return list(seeds_for(cls, params, seeds)) if cls.draws_at_random(params) else NOT_RANDOM


def with_spread(text: str, row: Any, name: str, fmt: Callable[[Any], str], count: bool = False) -> str:
    """A report cell: `text` (the formatted mean of `name` in `row`, a record's row) followed by
    `± <sd>` when the row carries the spread over seeds (`, n seeds` too with `count`)."""
    sd = getattr(row, f"{name}_sd", None)
    if not isinstance(sd, int | float) or isinstance(sd, bool) or not math.isfinite(sd):
        return text
    n = getattr(row, N_SEEDS.name, None)
    tail = f" ({int(n)} seeds)" if count and isinstance(n, int | float) and math.isfinite(n) else ""
    return f"{text} ± {fmt(sd)}{tail}"
