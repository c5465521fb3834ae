"""The metrics of the `kernel` kind, in the order records, tables and docs list them.

`measured_by` names the step that fills a measured metric (harness/kinds/kernel/steps.py); a
metric with `compute` is derived from the others whenever a record is written or a DataFrame is
built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.common.numbers import finite
from harness.measure.seeds import N_SEEDS, seed_metrics
from harness.plugins.metrics import MIB, Gate, Metric, rate


def _ratio(num: str, den: str):
    """compute for row[num] / row[den] (None unless both are positive numbers)."""

    def compute(row: Mapping[str, Any]) -> float | None:
        a, b = finite(row.get(num)), finite(row.get(den))
        return a / b if a is not None and b else None

    return compute


# Over the scenario's `seeds:` (a variant with random parameters): the mean, with `<name>_sd` and
# `<name>_seeds`; AVERAGED: the mean only. Everything else is measured once (harness/measure/seeds.py).
SEEDED = ("rel_err", "cos_sim", "skill", "unfitted_rel_err", "weights_kl", "fit_loss")
AVERAGED = ("max_abs_err", "fit_s")

TIME_GATE = Gate(kind="samples", samples="time_ms_samples", rounds="time_ms_rounds")

FIT_STEPS = Metric("fit_steps", "1", None, "optimizer steps of the fit", "fit", measured_by="fit",
                   title="fit steps", table=False)  # fmt: skip

KERNEL: tuple[Metric, ...] = (
    # ----- time (timing step: harness.measure.timing) -----
    Metric("time_ms_median", "ms", "lower", "median time per call over the samples", "time",
           gate=TIME_GATE, measured_by="timing", title="median time per call"),
    Metric("time_ms_p20", "ms", "lower", "20th percentile of the time samples", "time",
           measured_by="timing", title="time p20", table=False),
    Metric("time_ms_p80", "ms", "lower", "80th percentile of the time samples", "time",
           measured_by="timing", title="time p80", table=False),
    Metric("time_ms_samples", "ms", None, "every raw time sample, in order (compare judges time on these)",
           "time", measured_by="timing", title="time samples", table=False),
    Metric("n_samples", "1", None, "number of time samples", "time", measured_by="timing",
           title="samples", digits=4, table=False),
    Metric("noise", "1", "lower", "IQR / median of the time samples (above 0.25 a time is marked noisy)",
           "time", measured_by="timing", title="noise (IQR/median)", digits=2, table=False),
    # ----- environment (harness.measure.hygiene; descriptive, never gated) -----
    Metric("load_before", "1", None, "1-minute load average of the host just before the timed pass "
           "(above the record's `cores`: the time is marked as measured under load)", "environment",
           measured_by="load average", title="load average before", digits=3, table=False),
    Metric("load_after", "1", None, "1-minute load average of the host just after the memory pass "
           "(the timed pass when memory is off)", "environment", measured_by="load average",
           title="load average after", digits=3, table=False),
    # ----- memory (memory step: harness.measure.memory) -----
    Metric("peak_mem_bytes", "bytes", "lower", "peak memory during one call, inputs included", "memory",
           gate=Gate(factor=1.01, abs=MIB, devices=("cuda",)), measured_by="memory",
           title="peak memory", display_unit="MiB", scale=1 / MIB),
    Metric("extra_mem_bytes", "bytes", "lower", "peak memory above what was allocated before the call "
           "(the inputs)", "memory", measured_by="memory", title="memory above inputs",
           display_unit="MiB", scale=1 / MIB),
    Metric("input_bytes", "bytes", None, "bytes of q, k and v", "input", measured_by="inputs",
           title="input size", display_unit="MiB", scale=1 / MIB, table=False),
    # ----- accuracy (accuracy step: harness.measure.accuracy) -----
    Metric("rel_err", "1", "lower", "relative Frobenius error of the output against exact softmax "
           "attention on sampled query rows", "accuracy", gate=Gate(factor=1.1, abs=1e-6),
           measured_by="accuracy", title="relative error", digits=2),
    Metric("max_abs_err", "1", "lower", "largest absolute error of an output element on the sampled rows",
           "accuracy", measured_by="accuracy", title="max abs error", digits=2, table=False),
    Metric("cos_sim", "1", "higher", "mean cosine similarity of output rows and exact rows", "accuracy",
           measured_by="accuracy", title="cosine similarity", digits=4, table=False),
    Metric("uniform_rel_err", "1", None, "the same error of uniform attention: the floor any useful "
           "approximation must beat", "accuracy", measured_by="accuracy", title="uniform-attention error"),
    Metric("skill", "1", "higher", "1 - rel_err / uniform_rel_err: 1 = exact, 0 = no better than uniform",
           "accuracy", measured_by="accuracy", title="skill", decimals=2),
    # ----- fit (learnable variants: harness.plugins.contract.AttentionVariant.fit) -----
    Metric("unfitted_rel_err", "1", "lower", "rel_err before fitting", "fit", measured_by="fit",
           title="error before fitting", digits=2, table=False),
    FIT_STEPS,
    Metric("fit_s", "s", None, "wall time of the fit (untimed by the benchmark)", "fit", measured_by="fit",
           title="fit time", table=False),
    Metric("fit_loss", "1", "lower", "final distillation loss (row-wise KL to softmax)", "fit",
           measured_by="fit", title="fit loss", table=False),
    # ----- inputs and checks -----
    Metric("softmax_entropy", "nats", None, "mean softmax row entropy of the inputs (the input regime)",
           "input", measured_by="accuracy", title="input entropy"),
    Metric("weights_kl", "nats", "lower", "mean row KL(softmax weights || the variant's weights) on real "
           "query rows; only where the variant's weights are a distribution (harness/measure/weights_kl.py)",
           "accuracy", measured_by="accuracy", title="weights KL", table=False),
    Metric("causality_change", "1", "lower", "relative change of past outputs when future keys/values "
           "change (causal cases; above the tolerance: status leak)", "check", measured_by="checks",
           title="causality change", digits=2, table=False),
    Metric("batch_change", "1", "lower", "relative change of sample 0's output when the other samples "
           "change (batch > 1; above the tolerance: status leak)", "check", measured_by="checks",
           title="batch change", digits=2, table=False),
    # ----- cost model (the variant's flops / bytes_moved) and roofline -----
    Metric("flops", "FLOP", "lower", "FLOPs of the case from the variant's analytic cost model", "cost",
           gate=Gate(factor=1.01, reason="the analytic cost model changed", column="changed"),
           measured_by="cost model", title="FLOPs", table=False),
    Metric("bytes_moved", "bytes", "lower", "memory traffic of the case from the variant's cost model",
           "cost", measured_by="cost model", title="bytes moved", table=False),
    Metric("exact_flops", "FLOP", None, "FLOPs of exact softmax attention for the same problem "
           "(harness.measure.costs.exact_attention_flops)", "cost", measured_by="cost model",
           title="exact-attention FLOPs", table=False),
    Metric("tflops", "TFLOP/s", "higher", "flops / median time: throughput of the variant's own work",
           "cost", compute=rate("flops", 1e12), title="own-work throughput"),
    Metric("tflops_exact", "TFLOP/s", "higher", "exact_flops / median time: throughput against exact "
           "attention's FLOPs, comparable across variants", "cost", compute=rate("exact_flops", 1e12),
           title="exact-equivalent throughput"),
    Metric("gbps", "GB/s", "higher", "bytes_moved / median time", "cost", compute=rate("bytes_moved", 1e9),
           title="bandwidth"),
    Metric("floor_ms", "ms", None, "roofline floor: max(bytes_moved / copy bandwidth, flops / GEMM rate) "
           "on the measured device", "cost", measured_by="roofline", title="roofline floor", table=False),
    Metric("time_over_floor", "1", "lower", "time_ms_median / floor_ms (1 = at the roofline)", "cost",
           compute=_ratio("time_ms_median", "floor_ms"), title="time over floor"),
    # ----- seeds (a variant with random parameters: harness/measure/seeds.py) -----
    N_SEEDS,
    *seed_metrics(SEEDED, "accuracy"),
)  # fmt: skip
