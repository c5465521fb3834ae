"""The fit step of a kernel case: distil a learnable variant to exact softmax, once per configuration.

A fit depends on the sequence length only through the calibration length (`fit.seq_len`, else
min(N, 1024)), so the cases of one configuration share one fit across modes and across every
N >= 1024: the first case fits and caches the parameters; the others load them
(`info.fit_reused = true`) after measuring their own unfitted error on their own inputs.
Calibration batches come from the input source's calibration split, never the evaluation inputs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from harness import inputs
from harness.config.sweep import Case
from harness.measure import accuracy
from harness.measure.specs import AccuracySpec
from harness.plugins.contract import AttentionVariant, FitResult, Teacher
from harness.results.records import Record


@dataclass
class FittedState:
    """A finished fit: the parameters it produced and what it recorded."""

    state: dict[str, Tensor]
    result: FitResult
    unfitted_rel_err: float | None
    seq_len: int  # the N whose evaluation inputs gave unfitted_rel_err


def fit_cache_key(case: Case) -> str:
    """Everything a fit depends on: the case without its mode, its N replaced by the calibration
    length (inputs and fit spec are run-level)."""
    nc = inputs.calibration_length(case.problem, case.inputs, case.fit)
    problem = dataclasses.replace(case.problem, mode="-", seq_len=nc)
    return json.dumps(
        [case.variant, case.impl, case.params, dataclasses.asdict(problem), str(case.fit), str(case.inputs)]
    )


def fit_variant(
    rec: Record,
    variant: AttentionVariant,
    case: Case,
    fwd: Callable[[Tensor, Tensor, Tensor], Tensor],
    qkv: tuple[Tensor, Tensor, Tensor],
    mask: Tensor | None,
    spec: AccuracySpec,
    cache: dict[str, FittedState],
) -> None:
    """Record the unfitted error, then fit `variant` (untimed), or load the cached fit.

    fwd: canonical-layout forward, q, k, v (B, H, N, d) -> (B, H, N, d); qkv: the evaluation
    inputs (canonical, detached); mask: (B, N) bool key padding mask or None.
    """
    key = fit_cache_key(case)
    cached = cache.get(key)
    if cached is not None and cached.seq_len == case.problem.seq_len:
        rec.set("unfitted_rel_err", cached.unfitted_rel_err)  # the same inputs: the same value
    elif spec.enabled:  # before any fitted state is loaded: the variant as constructed
        with torch.no_grad():
            out = fwd(*qkv)
        unfit = accuracy.accuracy_metrics(*qkv, out, rec.causal, spec.rows, spec.seed, key_padding_mask=mask)
        rec.set("unfitted_rel_err", unfit.rel_err)
    if cached is not None:
        variant.load_state_dict(cached.state)
        result = cached.result
        rec.info["fit_reused"] = True
    else:
        if case.fit.steps == 0:
            rec.set("fit_steps", 0)
            rec.set("fit_s", 0.0)
            return
        calib = [b.qkv for b in inputs.calibration_batches(case.problem, case.inputs, case.fit)]
        result = variant.fit(calib, Teacher(rec.causal), case.fit)
        state = {name: t.detach().clone() for name, t in variant.state_dict().items()}
        cache[key] = FittedState(state, result, rec.get("unfitted_rel_err"), case.problem.seq_len)
    rec.set("fit_steps", result.steps)
    rec.set("fit_s", result.seconds)
    rec.set("fit_loss", result.final_loss)
