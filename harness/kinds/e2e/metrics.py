"""Metrics of the `e2e` kind (harness/kinds/e2e/): the end-to-end fidelity of a pretrained encoder
after its attention is swapped, the uniform floor, and the per-layer fits."""

from __future__ import annotations

from harness.kinds.kernel.metrics import FIT_STEPS
from harness.measure.seeds import N_SEEDS, seed_metrics
from harness.plugins.metrics import Gate, Metric

# Over the scenario's `seeds:` (a variant with random parameters): the mean, with `<name>_sd` and
# `<name>_seeds`; AVERAGED: the mean only (harness/measure/seeds.py).
SEEDED = ("e2e_cos_mean", "e2e_cos_p5", "e2e_spearman", "e2e_max_abs_diff", "e2e_fit_loss")
AVERAGED = ("e2e_fit_s", "e2e_s")

E2E: tuple[Metric, ...] = (
    FIT_STEPS,
    Metric("e2e_cos_mean", "1", "higher", "mean cosine of the swapped model's sentence embeddings to the "
           "original's (mean pooling, normalized) on the evaluation texts", "accuracy", measured_by="e2e",
           title="embedding cosine", decimals=4, table=False, gate=Gate(abs=0.01)),
    Metric("e2e_cos_p5", "1", "higher", "5th percentile of that cosine over the evaluation texts",
           "accuracy", measured_by="e2e", title="cosine p5", decimals=4, table=False),
    Metric("e2e_spearman", "1", "higher", "Spearman correlation of the pairwise cosine similarities of the "
           "evaluation texts with the original model's", "accuracy", measured_by="e2e", title="Spearman",
           decimals=4, table=False),
    Metric("e2e_max_abs_diff", "1", "lower", "largest absolute difference of a normalized embedding "
           "coordinate to the original model's", "accuracy", measured_by="e2e", title="max |Δ embedding|",
           table=False),
    Metric("e2e_floor_cos_mean", "1", None, "e2e_cos_mean of uniform attention (every layer swapped for the "
           "mean of the real values): the floor", "accuracy", measured_by="e2e", title="uniform floor cosine",
           decimals=4, table=False),
    Metric("e2e_floor_spearman", "1", None, "e2e_spearman of uniform attention (the floor)", "accuracy",
           measured_by="e2e", title="uniform floor Spearman", decimals=4, table=False),
    Metric("e2e_fit_s", "s", None, "seconds spent fitting the per-layer variants (learnable ones)", "fit",
           measured_by="e2e", title="fit time, all layers", table=False),
    Metric("e2e_fit_loss", "1", "lower", "mean over layers of the final distillation loss", "fit",
           measured_by="e2e", title="fit loss, mean over layers", table=False),
    Metric("e2e_s", "s", None, "seconds of the swapped model's forward over the evaluation texts (untimed "
           "harness measure: wall clock, one pass; the mean over a random variant's seeds)", "time",
           measured_by="e2e", title="swapped forward", table=False),
    N_SEEDS,
    *seed_metrics(SEEDED, "accuracy"),
)  # fmt: skip
