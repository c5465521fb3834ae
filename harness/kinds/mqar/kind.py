"""`kind: mqar`: train a tiny causal model with the variant in its attention slot on multi-query
associative recall, and record its accuracy on held-out sequences.

A case is one variant configuration (its params set the feature dimension D) at one sequence
length (`problem.seq_len`) and one number of key-value pairs (`task.pairs`, a task axis). The
case trains one model per (learning rate, seed) of the `task:` block, all for `train_steps`
steps, and reports the best rate's accuracy: its mean over seeds and their spread (sample
standard deviation). The problem gives the shapes: `batch` is the training batch, `heads` x
`head_dim` the model width; MQAR trains causally with a backward pass in fp32, so cases with
`causal: false`, a mode other than `fwd_bwd` or another dtype are skipped with the reason, as
are variants that cannot run causally or have no backward. Learnable variants (LUNA, Luna
nested) train end to end with the model: their feature maps are model parameters, and no
distillation fit runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, ClassVar

from harness.common import checks as c
from harness.config.sweep import Case
from harness.kinds.mqar.data import MQARSpec
from harness.kinds.mqar.metrics import MQAR
from harness.kinds.mqar.model import build_model
from harness.kinds.mqar.train import RunResult, TrainSpec, train_one
from harness.plugins.kinds import BenchmarkKind
from harness.plugins.metrics import Metric
from harness.plugins.variants import VARIANTS
from harness.results.records import Record


def _int_list(raw: Any, where: str, minimum: int) -> tuple[int, ...]:
    return _list(raw, where, lambda x, w: c.as_int(x, w, minimum=minimum))


def _float_list(raw: Any, where: str) -> tuple[float, ...]:
    return _list(raw, where, lambda x, w: c.as_float(x, w, minimum=0.0, strict=True))


def _list(raw: Any, where: str, check: c.Check) -> tuple[Any, ...]:
    """A scalar or a non-empty list of distinct values, each `check`ed."""
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise c.Invalid(where, "expected a value or a non-empty list of them, found an empty list")
    values = tuple(check(x, f"{where}[{i}]" if isinstance(raw, list) else where) for i, x in enumerate(items))
    if len(set(values)) != len(values):
        raise c.Invalid(where, f"expected distinct values, found {c.show(raw)}")
    return values


# key -> (default, check); a list value is checked item by item
OPTIONS: dict[str, tuple[Any, Any]] = {
    "vocab": (128, lambda x, w: c.as_int(x, w, minimum=4)),
    "pairs": ((4,), lambda x, w: _int_list(x, w, 1)),  # a task axis: one case per value
    "layers": (2, lambda x, w: c.as_int(x, w, minimum=1)),
    "train_steps": (1000, lambda x, w: c.as_int(x, w, minimum=1)),
    "lrs": ((1e-3, 3e-3), _float_list),
    "seeds": ((0,), lambda x, w: _int_list(x, w, 0)),
    "eval_examples": (512, lambda x, w: c.as_int(x, w, minimum=1)),
    "power_a": (0.01, lambda x, w: c.as_float(x, w, minimum=0.0, strict=True)),
    "warmup": (0.1, lambda x, w: c.as_float(x, w, minimum=0.0)),
    "weight_decay": (0.1, lambda x, w: c.as_float(x, w, minimum=0.0)),
    "shift": (True, c.as_bool),
    "random_non_queries": (True, c.as_bool),  # fillers random (Zoology's default) or token 0 (its configs)
}


def skip_reasons(case: Case, spec: MQARSpec) -> list[str]:
    """Why this case cannot train (empty: it can): the problem, the variant, the task point."""
    p = case.problem
    reasons = []
    if not p.causal:
        reasons.append("mqar trains a causal language model: set problem.causal: true")
    if p.mode != "fwd_bwd":
        reasons.append(f"mqar trains (forward and backward): set problem.mode: fwd_bwd, not {p.mode}")
    if p.dtype != "fp32":
        reasons.append(f"mqar trains in fp32: set problem.dtype: fp32, not {p.dtype}")
    cls = VARIANTS.get(case.variant)
    train = dataclasses.replace(p, causal=True, mode="fwd_bwd", dtype="fp32", masked=False)
    reasons += cls.not_supported_reasons(train, cls.make_params(case.params), case.impl)
    return reasons + spec.problems()


def seed_spread(values: list[float]) -> float | None:
    """Sample standard deviation (n - 1) of the seeds' accuracies; None under 2 seeds."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))


def _set_results(rec: Record, runs: list[RunResult], lrs: tuple[float, ...], seeds: tuple[int, ...]) -> None:
    """The best learning rate (mean accuracy over seeds) and its figures; every run in info."""
    mean = {lr: sum(r.accuracy for r in runs if r.lr == lr) / len(seeds) for lr in lrs}
    best = max(lrs, key=lambda lr: mean[lr])  # the first of equals: lrs order
    at_best = [r for r in runs if r.lr == best]
    rec.set("mqar_accuracy", mean[best])
    rec.set("mqar_accuracy_min", min(r.accuracy for r in at_best))
    rec.set("mqar_seed_accuracy", [r.accuracy for r in at_best])
    if (sd := seed_spread([r.accuracy for r in at_best])) is not None:
        rec.set("mqar_accuracy_sd", sd)
    rec.set("mqar_best_lr", best)
    rec.set("mqar_lr_accuracy", [mean[lr] for lr in lrs])
    losses = [r.final_loss for r in at_best]
    rec.set("mqar_final_loss", sum(losses) / len(losses))
    rec.info["mqar_runs"] = [dataclasses.asdict(r) for r in runs]
    if not all(math.isfinite(x) for x in losses):
        rec.status, rec.reason = "nan", f"training loss became non-finite at the best lr {best:g}"


def _train(rec: Record, case: Case, spec: MQARSpec) -> None:
    """Every (lr, seed) run of the case; fills the MQAR metrics of `rec`."""
    cls = VARIANTS.get(case.variant)
    params, p, task = cls.make_params(case.params), case.problem, case.task

    def make_model():
        return build_model(
            cls, params, case.impl, layers=task["layers"], vocab=spec.vocab, max_len=spec.seq_len,
            heads=p.heads, head_dim=p.head_dim, device=p.device, shift=task["shift"],
        )  # fmt: skip

    rec.set("mqar_model_params", sum(x.numel() for x in make_model().parameters() if x.requires_grad))
    one = dataclasses.replace(p, batch=1, causal=True, mode="fwd", dtype="fp32", masked=False)
    state = cls.state_bytes(one, params, case.impl)  # per layer, one sequence of seq_len tokens
    rec.set("mqar_state_bytes", None if state is None else float(state) * task["layers"])
    runs = []
    for lr in task["lrs"]:
        for seed in task["seeds"]:
            train = TrainSpec(
                steps=task["train_steps"], batch=p.batch, lr=lr, seed=seed, warmup=task["warmup"],
                weight_decay=task["weight_decay"], eval_examples=task["eval_examples"], device=p.device,
            )  # fmt: skip
            runs.append(train_one(make_model, spec, train))
    rec.set("mqar_runs", len(runs))
    _set_results(rec, runs, task["lrs"], task["seeds"])


class MQARKind(BenchmarkKind):
    """`kind: mqar`: accuracy of a tiny model trained on multi-query associative recall."""

    name: ClassVar[str] = "mqar"
    description: ClassVar[str] = (
        "train a tiny causal model with the variant on MQAR; accuracy on held-out sequences"
    )
    metrics: ClassVar[tuple[Metric, ...]] = MQAR
    headline: ClassVar[tuple[str, ...]] = ("mqar_accuracy", "mqar_copy_baseline")

    @classmethod
    def task_options(cls, raw: dict[str, Any], where: str) -> dict[str, Any]:
        """Validate `task:` (keys of OPTIONS) and fill the defaults; lists come back as tuples."""
        out = {}
        for name in raw:
            if name not in OPTIONS:
                raise ValueError(f"{where}: unknown key {name!r}; expected one of {', '.join(OPTIONS)}")
        for name, (default, check) in OPTIONS.items():
            try:
                out[name] = check(raw[name], name) if name in raw else default
            except c.Invalid as err:
                raise ValueError(f"{where}: {err.where}: {err.message}") from None
        return out

    @classmethod
    def task_axes(cls, options: dict[str, Any]) -> tuple[str, ...]:
        return ("pairs",)

    @classmethod
    def skip_reasons(cls, case: Case) -> list[str]:
        return skip_reasons(case, _spec(case))

    @classmethod
    def claims_legacy(cls, row: dict[str, Any]) -> bool:
        return row.get("input_dist") == "mqar"  # before schema 4 the kind wrote this as its inputs

    def measure(self, case: Case, record: Record, ctx: Any) -> None:
        """Train every (lr, seed) run and fill the MQAR metrics; the baselines first."""
        t0 = time.perf_counter()
        spec = _spec(case)
        record.set("mqar_chance", spec.chance)
        record.set("mqar_copy_baseline", 1.0 / spec.pairs)
        _train(record, case, spec)
        record.set("mqar_train_s", time.perf_counter() - t0)

    def progress(self, record: Record) -> str:
        acc, copy = record.get("mqar_accuracy"), record.get("mqar_copy_baseline")
        if acc is None:
            return ""
        verdict = " (no recall learned)" if copy is not None and acc <= copy else ""
        return f"accuracy={acc:.3f}{verdict}"

    def report_section(self, df: Any, scenario: dict | None, plot_files: dict[str, str]) -> list[str]:
        from harness.kinds.mqar.report import mqar_section

        return mqar_section(df, scenario, plot_files)

    def plots(self, df: Any, out_dir: Path) -> dict[str, Path]:
        from harness.kinds.mqar.report import mqar_plot

        return mqar_plot(df, out_dir)


def _spec(case: Case) -> MQARSpec:
    """The MQAR task point of `case`."""
    task = case.task
    return MQARSpec(
        task["vocab"], case.problem.seq_len, task["pairs"], task["power_a"], task["random_non_queries"]
    )
