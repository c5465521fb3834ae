"""The `e2e` kind: end-to-end fidelity of a pretrained encoder after a post-hoc attention swap.

One case = one variant configuration swapped into every attention layer of the model named by the
scenario's `inputs: {dist: captured, model, texts, max_length}` (the `captured` source; its
`layer` knob does not apply: every layer is swapped). No fine-tuning:

    1. the original model's sentence embeddings of the `batch` evaluation texts (memoized per process)
    2. uniform attention in every layer: the floor (`e2e_floor_*` on every record, memoized)
    3. per layer l: the variant built after `torch.manual_seed(inputs.seed + l)`; a learnable one is
       fitted (its own `fit`, softmax teacher) on layer l's captured calibration q, k, v (the
       captured source's calib split: calibration texts, never the evaluation texts)
    4. the swapped model's embeddings -> cosine to the original (mean, p5), Spearman of the
       pairwise similarity matrix, max |Δ| (harness/kinds/e2e/swap.py)

A variant whose parameters are drawn at random (Performer's features, a learnable map's
initialisation and fit) runs steps 3-4 once per seed of the scenario's `seeds:`; the record holds
the mean over seeds with `<name>_sd` and `<name>_seeds` (harness/measure/seeds.py).

Variants with key-padding-mask support run the texts batched and padded, with the mask; variants
without it (nystrom, triton impls) run each text alone at its own length, with no padding and no
mask (`info.e2e_per_text`). Needs the `quality` extra (else `skipped` with the install command).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness import inputs
from harness.common.checks import Invalid, positive_int
from harness.config.sweep import Case
from harness.inputs.capture import capture, model, texts
from harness.inputs.captured import CapturedSource, select_texts
from harness.kinds.e2e import swap as e2e_swap
from harness.kinds.e2e.metrics import AVERAGED, E2E, SEEDED
from harness.measure import seeds
from harness.plugins.contract import Teacher
from harness.plugins.kinds import BenchmarkKind
from harness.plugins.metrics import Metric
from harness.plugins.variants import VARIANTS
from harness.results.records import Record

_REFS: dict[tuple, tuple[Tensor, dict[str, float | None]]] = {}  # original embeddings and the floor


def _skip_reasons(case: Case) -> list[str]:
    """Why `case` cannot run: the source, the quality extra, the variant on an unmasked problem
    (variants without mask support run text by text, unpadded)."""
    if case.inputs.dist != CapturedSource.name:
        return [f"kind e2e needs inputs from the captured source (dist: captured), got {case.inputs.dist!r}"]
    if case.problem.mode != "fwd" or case.problem.causal:
        return ["kind e2e runs the encoder forward only: mode fwd, non-causal"]
    reason = model.missing_reason()
    if reason:
        return [reason]
    cls = VARIANTS.get(case.variant)
    unmasked = dataclasses.replace(case.problem, masked=False)
    return cls.not_supported_reasons(unmasked, cls.make_params(case.params), case.impl)


def _eval_tokens(case: Case, source: CapturedSource, options: dict[str, Any]) -> tuple[Any, Tensor, Tensor]:
    """(model, input_ids, attention_mask) of the case's evaluation texts: ids and mask (T, N)."""
    _, text_list, ref = source.load(options)
    tokenizer, net = model.load(ref, case.problem.device)
    idx = select_texts(len(text_list), "eval", case.problem.batch, case.inputs.seed)
    ids, am = capture.tokenize(tokenizer, [text_list[i] for i in idx], int(options["max_length"]))
    return net, ids, am


def _reference(case: Case, net: Any, ids: Tensor, am: Tensor) -> tuple[Tensor, dict[str, float | None]]:
    """The original embeddings (T, D) and the uniform floor's fidelity, memoized per process."""
    key = (id(net), case.problem.device, ids.numpy().tobytes(), am.numpy().tobytes())
    if key not in _REFS:
        original = e2e_swap.embed(net, ids, am)
        layers = dict.fromkeys(range(net.config.num_hidden_layers), e2e_swap.uniform_fn)
        floor = e2e_swap.fidelity(e2e_swap.embed(net, ids, am, layers), original)
        _REFS.clear()
        _REFS[key] = (original, floor)
    return _REFS[key]


def _layer_variants(
    rec: Record, case: Case, n_layers: int, calib_texts: int, seed: int = 0
) -> dict[int, e2e_swap.LayerFn]:
    """One variant per layer, fitted on that layer's captured calibration data when learnable
    (batches of `calib_texts` calibration texts, each drawn with its own seed); `seed`: the draw of a
    variant with random parameters (its params, generator and fit seed: harness/measure/seeds.py)."""
    cls = VARIANTS.get(case.variant)
    p = case.problem
    calib_problem = dataclasses.replace(p, batch=calib_texts, dtype="fp32")
    layout = cls.layout_for(case.impl)
    params = seeds.seeded_params(cls.make_params(case.params), seed)
    fit = seeds.seeded_fit(case.fit, seed)
    layers, fit_s, losses = {}, 0.0, []
    for layer in range(n_layers):
        torch.manual_seed(seeds.generator_seed(case.inputs.seed + layer, seed))
        variant = cls(params, case.impl, p.heads, p.head_dim, p.device, p.dtype)
        variant = variant.to(p.device)
        if fit is not None and fit.steps > 0:
            spec = dataclasses.replace(case.inputs, options=(*case.inputs.options, ("layer", layer)))
            calib = [b.qkv for b in inputs.calibration_batches(calib_problem, spec, fit)]
            result = variant.fit(calib, Teacher(causal=False), fit)
            fit_s += result.seconds
            losses.append(result.final_loss)
        variant.eval()
        layers[layer] = e2e_swap.variant_fn(variant, layout, p.torch_dtype)
    if case.fit is not None:
        rec.set("fit_steps", case.fit.steps)
        rec.set("e2e_fit_s", fit_s)
        rec.set("e2e_fit_loss", sum(losses) / len(losses) if losses else None)
    return layers


def _execute(rec: Record, case: Case, task: dict[str, Any], seed_list: tuple[int, ...] = (0,)) -> None:
    """Measure `case` into `rec`: a variant with random parameters once per seed of `seed_list` (the
    fidelity metrics: the mean, with `<name>_sd` and `<name>_seeds`), any other once."""
    if dict(case.inputs.options).get("layer") is not None:
        raise ValueError("kind e2e swaps every layer: remove `layer` from the scenario's inputs")
    source = CapturedSource()
    options = source.options(case.inputs.options)
    tensors, text_list, ref = source.load(options)
    net, ids, am = _eval_tokens(case, source, options)
    original, floor = _reference(case, net, ids, am)
    rec.set("e2e_floor_cos_mean", floor["cos_mean"])
    rec.set("e2e_floor_spearman", floor["spearman"])
    n_layers = sum(1 for name in tensors if name.startswith("q."))
    calib_texts = min(task["calib_texts"], len(text_list) // 2)
    cls = VARIANTS.get(case.variant)
    params = cls.make_params(case.params)
    per_text = not cls.capabilities_for(case.impl).masking
    run_seeds = seeds.seeds_for(cls, params, seed_list)
    drawn = []
    for seed in run_seeds:
        scratch = rec.replace()
        layers = _layer_variants(scratch, case, n_layers, calib_texts, seed)
        start = time.perf_counter()
        emb = e2e_swap.embed(net, ids, am, layers, per_text=per_text)
        scratch.set("e2e_s", time.perf_counter() - start)
        for name, value in e2e_swap.fidelity(emb, original).items():
            scratch.set(f"e2e_{name}", value)
        drawn.append(scratch)
        if not math.isfinite(float(emb.sum())):
            rec.status = "nan"
            rec.reason = "the swapped model's embeddings are not finite" + (
                f" (seed {seed})" if len(run_seeds) > 1 else ""
            )
            break
    rec.metrics.update(seeds.summarize([d.metrics for d in drawn], SEEDED, AVERAGED))
    if cls.draws_at_random(params) or len(seed_list) > 1:
        rec.info["seeds"] = seeds.seeds_info(cls, params, seed_list)
    else:
        rec.metrics.pop(seeds.N_SEEDS.name)  # a one-seed scenario and a deterministic variant: no news
    note = capture.CACHE_NOTES.get(capture.capture_key(ref, text_list, int(options["max_length"])))
    if note:
        rec.info["capture_cache"] = note
    if rec.status == "nan":
        for name in ("cos_mean", "cos_p5", "spearman", "max_abs_diff"):
            for key in (f"e2e_{name}", f"e2e_{name}_sd", f"e2e_{name}_seeds"):
                rec.metrics.pop(key, None)  # a cosine of NaN embeddings is no measurement
    rec.info.update(
        model=ref.name,
        weights_sha256=ref.weights_hash[:16],
        texts=options["texts"] or "short",
        texts_hash=texts.texts_hash(text_list),
        layers=n_layers,
        e2e_per_text=per_text,
        real_tokens=[int(am.sum(1).min()), round(float(am.sum(1).float().mean()), 1), int(am.sum(1).max())],
    )


class E2EKind(BenchmarkKind):
    """`kind: e2e`: swap every attention layer of a pretrained encoder, measure its sentence embeddings."""

    name: ClassVar[str] = "e2e"
    description: ClassVar[str] = (
        "post-hoc swap of every attention layer of a pretrained encoder: sentence-embedding fidelity"
    )
    metrics: ClassVar[tuple[Metric, ...]] = E2E
    headline: ClassVar[tuple[str, ...]] = ("e2e_cos_mean", "e2e_spearman", "e2e_floor_cos_mean")
    takes_seeds: ClassVar[bool] = True

    @classmethod
    def check_inputs(cls, inputs: tuple[Any, ...]) -> None:
        """`layer` in a regime is an error: e2e swaps every layer."""
        for i, spec in enumerate(inputs):
            if "layer" in dict(spec.options):
                where = "inputs" if len(inputs) == 1 else f"inputs[{i}]"
                raise Invalid(f"{where}.layer", "kind e2e swaps every attention layer: remove `layer`")

    @classmethod
    def skip_reasons(cls, case: Case) -> list[str]:
        return _skip_reasons(case)

    @classmethod
    def task_options(cls, raw: dict[str, Any], where: str) -> dict[str, Any]:
        """`calib_texts` (int >= 1, default 8): calibration texts per fit batch (capped at the split)."""
        unknown = sorted(set(raw) - {"calib_texts"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} for kind e2e; expected calib_texts")
        try:
            return {"calib_texts": positive_int(raw.get("calib_texts", 8), "calib_texts")}
        except Invalid as err:
            raise ValueError(f"{where}: {err.where}: {err.message}") from None

    @classmethod
    def claims_legacy(cls, row: dict[str, Any]) -> bool:
        return row.get("e2e_floor_cos_mean") is not None or row.get("e2e_cos_mean") is not None

    def measure(self, case: Case, record: Record, ctx: Any) -> None:
        _execute(record, case, self.task_options(dict(ctx.scenario.task), "task"), ctx.scenario.seeds)

    def progress(self, record: Record) -> str:
        cos, floor = record.get("e2e_cos_mean"), record.get("e2e_floor_cos_mean")
        if cos is None:
            return ""
        return f"cosine={cos:.4f}" + (f" (floor {floor:.4f})" if floor is not None else "")

    def report_section(self, df: Any, scenario: dict | None, plot_files: dict[str, str]) -> list[str]:
        from harness.kinds.e2e.report import e2e_section

        return e2e_section(df)
