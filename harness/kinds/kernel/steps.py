"""The kernel kind's steps for one case:

    inputs -> fit -> accuracy (output contract, exact reference) -> checks -> time -> memory,
    then (whatever the outcome) the cost model and the roofline floor

Everything here fills a `Record` (the kernel metrics, harness/kinds/kernel/metrics.py). Failures
raise; the harness's case lifecycle (harness/execute/lifecycle.py) turns them into statuses. The
steps set `nan` (non-finite output) and `leak` (causality, batch independence) themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from harness import inputs
from harness.config.scenario import Scenario
from harness.config.sweep import Case
from harness.kinds.kernel.fitting import fit_variant
from harness.kinds.kernel.metrics import AVERAGED, SEEDED
from harness.measure import accuracy, hygiene, memory, output_contract, seeds, timing
from harness.measure.costs import exact_attention_flops
from harness.measure.roofline import Roofline
from harness.measure.weights_kl import weights_kl
from harness.plugins.contract import AttentionVariant
from harness.plugins.variants import VARIANTS
from harness.results.records import Record


def cost_model(rec: Record, case: Case) -> None:
    """FLOPs and bytes from the variant's analytic model for its impl, and exact attention's FLOPs
    for the same problem (rates against both are derived metrics: tflops, tflops_exact, gbps)."""
    cls = VARIANTS.get(case.variant)
    params = cls.make_params(case.params)
    rec.set("exact_flops", float(exact_attention_flops(case.problem)))
    try:
        rec.set("flops", float(cls.flops(case.problem, params, case.impl)))
    except NotImplementedError:
        pass
    try:
        rec.set("bytes_moved", float(cls.bytes_moved(case.problem, params, case.impl)))
    except NotImplementedError:
        pass


def roofline_floor(rec: Record, roofline: Roofline | None) -> None:
    """floor_ms from the run's measured device rates (when measured); time_over_floor is derived."""
    if roofline is not None:
        rec.set("floor_ms", roofline.floor_ms(rec.get("flops"), rec.get("bytes_moved"), rec.dtype))


def _canonical_forward(
    variant: AttentionVariant, layout: str, causal: bool, mask: Tensor | None = None, checked: bool = False
) -> Callable[..., Tensor]:
    """forward on canonical (B, H, N, d) tensors, whatever the variant's layout (mask: (B, N) bool);
    `checked`: each call is held to the output contract (measure/output_contract.py)."""
    kw = {} if mask is None else {"key_padding_mask": mask}

    def call(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return variant(q, k, v, causal, **kw)

    def fwd(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if layout == "bnhd":
            q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        out = output_contract.checked_call(call, (q, k, v)) if checked else call(q, k, v)
        return inputs.to_canonical(out, layout)

    return fwd


def _measure_accuracy(
    rec: Record,
    fwd: Callable[..., Tensor],
    qkv: tuple[Tensor, Tensor, Tensor],
    pristine: list[output_contract.Fingerprint],
    mask: Tensor | None,
    ctx: Any,
) -> bool:
    """Fill the accuracy metrics; returns False (status nan) when the output is not finite. `fwd`
    is contract-checked (a wrong output or modified inputs raise ContractError: status error)."""
    spec = ctx.scenario.accuracy
    q, k, v = qkv
    with torch.no_grad():
        out = fwd(q, k, v)
    changed = output_contract.modified(pristine, qkv, "qkv")  # since the inputs were made (fit too)
    if changed:
        raise output_contract.ContractError(
            f"the variant modified its inputs in place ({', '.join(changed)})"
        )
    real = out if mask is None else out.transpose(1, 2)[mask.to(out.device)]  # padded rows: unspecified
    if not accuracy.is_finite(real):
        bad = int((~torch.isfinite(real)).sum())
        rec.status, rec.reason = "nan", f"output has {bad} non-finite values of {real.numel()}"
        return False
    approximates = VARIANTS.get(rec.variant).capabilities_for(rec.impl).approximates_softmax
    if spec.enabled and not approximates:
        rec.info["accuracy"] = (
            f"not applicable: {rec.variant} is not an approximation of softmax attention, so its error "
            "against softmax measures nothing (time and memory are measured)"
        )
    elif spec.enabled:
        acc = accuracy.accuracy_metrics(q, k, v, out, rec.causal, spec.rows, spec.seed, key_padding_mask=mask)
        for name in ("rel_err", "max_abs_err", "cos_sim", "uniform_rel_err", "skill"):
            rec.set(name, getattr(acc, name))
        entropy = inputs.softmax_row_entropy(q, k, rec.causal, spec.rows, spec.seed, key_padding_mask=mask)
        rec.set("softmax_entropy", entropy)
    return True


def _run_checks(rec: Record, fwd: Callable[..., Tensor], qkv: tuple[Tensor, Tensor, Tensor], ctx) -> None:
    """Causality (causal cases) and batch independence (batch > 1): a change above tolerance is a leak."""
    checks = ctx.scenario.checks
    with torch.no_grad():
        if rec.causal and checks.causality:
            change = accuracy.causality_change(fwd, *qkv)
            rec.set("causality_change", change)
            if change > checks.tolerance:
                rec.status = "leak"
                rec.reason = (
                    f"causality leak: changing future keys/values moved past outputs by "
                    f"{change:.3g} (relative; tolerance {checks.tolerance:g})"
                )
        if checks.batch_independence and rec.batch > 1:
            change = accuracy.batch_change(fwd, *qkv)
            rec.set("batch_change", change)
            if change is not None and change > checks.tolerance and rec.status == "ok":
                rec.status = "leak"
                rec.reason = (
                    f"batch leak: sample 0's output moved by {change:.3g} when the other samples "
                    f"changed (relative; tolerance {checks.tolerance:g})"
                )


def measure_case(rec: Record, case: Case, ctx: Any) -> None:
    """Fill `rec` with everything measured for `case` (see the module docstring).

    A variant that draws its parameters at random is built (and fitted) once per seed of the
    scenario's `seeds:` (harness/measure/seeds.py): the accuracy and fit metrics are the mean over
    seeds with their spread (`<name>_sd`, `<name>_seeds`); checks, time and memory are measured
    once, on the first seed's instance."""
    sc = ctx.scenario
    cls = VARIANTS.get(case.variant)
    layout = cls.layout_for(case.impl)
    problem = case.problem
    params = cls.make_params(case.params)
    run_seeds = seeds.seeds_for(cls, params, sc.seeds)
    shape = (problem.heads, problem.head_dim, problem.device, problem.dtype)  # never the Problem itself

    def build(seed: int) -> AttentionVariant:
        torch.manual_seed(seeds.generator_seed(case.inputs.seed, seed))
        return cls(seeds.seeded_params(params, seed), case.impl, *shape).to(problem.device)

    variant = build(run_seeds[0])
    batch = inputs.make_inputs(problem, case.inputs, layout=layout, requires_grad=problem.needs_backward)
    (q, k, v), mask = batch.qkv, batch.key_padding_mask  # mask: (B, N) bool, True = real token, or None
    if mask is not None and not problem.masked:
        raise ValueError(
            f"input source {case.inputs.dist!r} returned a key padding mask but declares pads=False"
        )
    kw = {} if mask is None else {"key_padding_mask": mask}
    qkv = tuple(inputs.to_canonical(x.detach(), layout) for x in (q, k, v))
    rec.set("input_bytes", sum(x.numel() * x.element_size() for x in (q, k, v)))
    rec.info.update(batch.info)  # what the source says about its data (captured: model, texts hash)
    pristine = [output_contract.fingerprint(x) for x in qkv]  # the reference needs them unmodified

    drawn = []  # one scratch record per seed: its fit and accuracy metrics
    for i, seed in enumerate(run_seeds):
        scratch = rec.replace(info=dict(rec.info))
        instance = variant if i == 0 else build(seed)
        seeded = dataclasses.replace(case, fit=seeds.seeded_fit(case.fit, seed))
        finite = _seed_steps(scratch, instance, seeded, layout, (qkv, pristine, mask), ctx, seed)
        drawn.append(scratch)
        if not finite:
            rec.status = scratch.status
            rec.reason = scratch.reason if len(run_seeds) == 1 else f"seed {seed}: {scratch.reason}"
            return
    rec.info.update(drawn[0].info)
    rec.metrics.update(seeds.summarize([d.metrics for d in drawn], SEEDED, AVERAGED))
    if cls.draws_at_random(params) or len(sc.seeds) > 1:
        rec.info["seeds"] = seeds.seeds_info(cls, params, sc.seeds)
    else:
        rec.metrics.pop(seeds.N_SEEDS.name)  # a one-seed scenario and a deterministic variant: no news
    fwd = _canonical_forward(variant, layout, problem.causal, mask)
    _run_checks(rec, fwd, qkv, ctx)
    rec.info.update(variant.info())

    params_ = [p for p in variant.parameters() if p.requires_grad]

    def make_step() -> Callable[[], None]:
        return timing.make_step(
            problem.mode, lambda: variant(q, k, v, problem.causal, **kw), [q, k, v], params=params_
        )

    with ctx.measure_lock():  # one timed measurement per device at a time, across workers
        _time_and_memory(rec, make_step, problem.device, sc)


def _seed_steps(
    rec: Record,
    variant: AttentionVariant,
    case: Case,
    layout: str,
    data: tuple[tuple[Tensor, Tensor, Tensor], list[output_contract.Fingerprint], Tensor | None],
    ctx: Any,
    seed: int,
) -> bool:
    """One seed's fit, accuracy and weights KL into `rec` (`case.fit` already seeded); False when the
    output is not finite (`rec.status` nan). data: canonical qkv (B, H, N, d), their fingerprints,
    the (B, N) mask or None."""
    qkv, pristine, mask = data
    sc, problem = ctx.scenario, case.problem
    fwd = _canonical_forward(variant, layout, problem.causal, mask)
    if case.fit is not None:
        fits = ctx.kind_cache.setdefault("fits", {})
        fit_variant(rec, variant, case, fwd, qkv, mask, sc.accuracy, fits, seed)
    checked = _canonical_forward(variant, layout, problem.causal, mask, checked=True)
    if not _measure_accuracy(rec, checked, qkv, pristine, mask, ctx):
        return False
    approximates = VARIANTS.get(case.variant).capabilities_for(case.impl).approximates_softmax
    probe = inputs.get_source(case.inputs.dist).probe_weights  # small, real inputs
    if sc.accuracy.enabled and approximates and probe:
        found = weights_kl(fwd, *qkv, problem.causal, mask)  # KL(softmax || the variant's weights)
        rec.set("weights_kl", found.kl)
        rec.info.update({"weights_kl": found.reason} if found.reason else {})
    return True


def _time_and_memory(
    rec: Record, make_step: Callable[[], Callable[[], None]], device: str, sc: Scenario
) -> None:
    """The timed pass, then the memory pass (each on a fresh step), with the load around both."""
    rec.set("load_before", hygiene.load_average())
    stats = timing.time_step(make_step(), sc.measure, device)
    for name, value in (
        ("time_ms_median", stats.median_ms),
        ("time_ms_p20", stats.p20_ms),
        ("time_ms_p80", stats.p80_ms),
        ("time_ms_samples", stats.samples_ms),
        ("n_samples", stats.n),
        ("noise", stats.noise),
    ):
        rec.set(name, value)
    if sc.measure.memory:
        try:
            mem = memory.measure_memory(make_step(), device)
            rec.set("peak_mem_bytes", mem.peak_bytes)
            rec.set("extra_mem_bytes", mem.extra_bytes)
            rec.mem_method = mem.method
        except memory.MemoryMeasureError as exc:
            rec.mem_method = f"unavailable: {exc}"
    rec.set("load_after", hygiene.load_average())
