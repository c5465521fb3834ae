"""The `mqar` kind's plumbing: the MQAR generator, the tiny model with every causal variant, the
`task:` block and its sweep axis, and a few training steps through the harness end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.config.scenario import ScenarioError, load_scenario
from harness.config.sweep import expand
from harness.execute.lifecycle import run_case
from harness.execute.progress import QuietReporter
from harness.execute.runner import run_scenario
from harness.kinds.mqar.data import IGNORE, MQARSpec, generator, mqar_batch
from harness.kinds.mqar.kind import MQARKind
from harness.kinds.mqar.model import build_model
from harness.kinds.mqar.train import TrainSpec, masked_loss, train_one
from harness.plugins.contract import Problem
from harness.plugins.kinds import KINDS
from harness.plugins.variants import VARIANTS
from harness.results.export import export_run

SPEC = MQARSpec(vocab=64, seq_len=48, pairs=6)


def test_generator_layout() -> None:
    tokens, targets = mqar_batch(SPEC, 64, generator(0))
    assert tokens.shape == targets.shape == (64, 48) and tokens.dtype == targets.dtype == torch.long
    half, ctx = SPEC.vocab // 2, 2 * SPEC.pairs
    keys, values = tokens[:, 0:ctx:2], tokens[:, 1:ctx:2]
    assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < SPEC.vocab)).all()
    for row in range(64):
        assert len(set(keys[row].tolist())) == SPEC.pairs  # distinct keys: each query has one answer
        bound = dict(zip(keys[row].tolist(), values[row].tolist(), strict=True))
        query = (targets[row] != IGNORE).nonzero().flatten()
        assert len(query) == SPEC.pairs  # every key queried once, targets only there
        assert ((query >= ctx) & ((query - ctx) % 2 == 0)).all()  # after the pairs, at even offsets
        queried = tokens[row, query].tolist()
        assert sorted(queried) == sorted(bound)
        assert targets[row, query].tolist() == [bound[k] for k in queried]
    assert (targets[:, :ctx] == IGNORE).all()


def test_zero_fillers_leave_only_pairs_and_queries() -> None:
    """random_non_queries: false (Zoology's published configs): every position that is not a key, a
    value or a query holds token 0; the pairs, queries and targets are the random-filler draw's."""
    spec = dataclasses.replace(SPEC, random_non_queries=False)
    (tokens, targets), (rand_tokens, rand_targets) = (mqar_batch(s, 64, generator(0)) for s in (spec, SPEC))
    ctx = 2 * SPEC.pairs
    query = targets != IGNORE
    filler = ~query
    filler[:, :ctx] = False
    assert (tokens[filler] == 0).all() and (tokens[:, :ctx] > 0).all() and (tokens[query] > 0).all()
    assert torch.equal(targets, rand_targets) and torch.equal(tokens[:, :ctx], rand_tokens[:, :ctx])
    assert (rand_tokens[filler] != 0).float().mean() > 0.9  # the default: random fillers
    assert (rand_tokens[filler] < SPEC.vocab // 2).any()  # ... which repeat keys


def test_generator_is_deterministic_by_seed() -> None:
    a, b, c = (mqar_batch(SPEC, 8, generator(s)) for s in (3, 3, 4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_queries_follow_a_power_law() -> None:
    """Small power_a puts most queries right after the pairs; power_a = 1 spreads them evenly."""
    spec = MQARSpec(vocab=512, seq_len=256, pairs=4, power_a=0.01)
    _, near = mqar_batch(spec, 256, generator(0))
    _, flat = mqar_batch(dataclasses.replace(spec, power_a=1.0), 256, generator(0))

    def mean_slot(targets: torch.Tensor) -> float:
        return float(((targets != IGNORE).nonzero()[:, 1] - 2 * spec.pairs).float().mean() / 2)

    slots = (spec.seq_len - 2 * spec.pairs) // 2
    assert mean_slot(near) < 0.35 * slots and abs(mean_slot(flat) - (slots - 1) / 2) < 0.1 * slots


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (MQARSpec(64, 30, 8), "seq_len >= 4 * pairs"),
        (MQARSpec(64, 31, 2), "must be even"),
        (MQARSpec(8, 64, 4), "key tokens"),
    ],
)
def test_impossible_tasks_are_refused(spec: MQARSpec, needle: str) -> None:
    assert any(needle in p for p in spec.problems())
    with pytest.raises(ValueError, match="pairs|even|key tokens"):
        mqar_batch(spec, 2, generator(0))


def _cpu_impl(cls) -> str:
    """The first impl that runs causally with a backward pass on CPU here, or ''."""
    problem = Problem(2, 2, 16, 8, causal=True, mode="fwd_bwd")
    for impl in cls.impls:
        if not cls.not_supported_reasons(problem, cls.make_params({}), impl):
            return impl
    return ""


@pytest.mark.parametrize("name", VARIANTS.names())
def test_model_shapes_and_gradients_with_every_causal_variant(name: str) -> None:
    cls = VARIANTS.get(name)
    impl = _cpu_impl(cls)
    if not impl:
        problem = Problem(2, 2, 16, 8, causal=True, mode="fwd_bwd")
        reasons = cls.not_supported_reasons(problem, cls.make_params({}), cls.impls[0])
        pytest.skip(f"{name} cannot train causally on CPU: {'; '.join(reasons)}")
    torch.manual_seed(0)
    small = {"luna": {"m": 2, "L": 4, "hidden": 8}, "performer": {"features": 8}, "nystrom": {"landmarks": 4}}
    model = build_model(cls, cls.make_params(small.get(name, {})), impl, layers=2, vocab=32,
                        max_len=16, heads=2, head_dim=8, shift=True)  # fmt: skip
    tokens, targets = mqar_batch(MQARSpec(32, 16, 2), 3, generator(0))
    logits = model(tokens)
    assert logits.shape == (3, 16, 32) and torch.isfinite(logits).all()
    masked_loss(logits, targets).backward()
    own = [p for block in model.blocks for p in block.attn.variant.parameters() if p.requires_grad]
    if cls.capabilities.learnable:  # trained end to end: the variant's parameters get gradients
        assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    assert model.tok.weight.grad is not None and model.prev.weight.grad is not None


def test_model_is_causal() -> None:
    """Changing later tokens leaves earlier logits alone (the variant runs with causal=True)."""
    cls = VARIANTS.get("luna")
    torch.manual_seed(0)
    model = build_model(cls, cls.make_params({"m": 2, "L": 4, "hidden": 8}), "chunked", layers=2, vocab=32,
                        max_len=16, heads=2, head_dim=8, shift=True)  # fmt: skip
    tokens, _ = mqar_batch(MQARSpec(32, 16, 2), 2, generator(0))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 32
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6) and not torch.allclose(a[:, 10:], b[:, 10:])


def test_task_options_defaults_and_errors() -> None:
    kind = KINDS.get("mqar")
    options = kind.task_options({"pairs": [4, 8], "lrs": 0.01}, "task")
    assert options["pairs"] == (4, 8) and options["lrs"] == (0.01,) and options["vocab"] == 128
    assert kind.task_axes(options) == ("pairs",)
    with pytest.raises(ValueError, match=r"task: pairs\[1\]: expected a positive int"):
        kind.task_options({"pairs": [4, 0]}, "task")
    with pytest.raises(ValueError, match="unknown key 'pair'"):
        kind.task_options({"pair": 4}, "task")


TINY = """
name: mqar-tiny
kind: mqar
task: {{vocab: 32, pairs: [2, 4], layers: 1, train_steps: 3, lrs: [1.0e-3, 1.0e-2], seeds: [0, 1],
        eval_examples: 16}}
problem: {{batch: 4, heads: 2, head_dim: 8, seq_len: 16, causal: {causal}, mode: fwd_bwd}}
measure: {{roofline: false, memory: false}}
variants:
  - {{name: softmax}}
  - {{name: nystrom}}
  - {{name: luna, impl: chunked, params: {{m: 2, L: 4, hidden: 8}}}}
"""


def test_bad_task_block_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.format(causal="true").replace("vocab: 32", "vocab: big"))
    with pytest.raises(ScenarioError, match=r"bad.yaml: task: vocab: expected an int") as err:
        load_scenario(str(path))
    assert "\n" not in str(err.value)


def test_pairs_is_a_sweep_axis(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(causal="true"))
    cases = expand(load_scenario(str(path)), "cpu")
    assert [(c.variant, c.task["pairs"]) for c in cases] == [
        (v, p) for v in ("softmax", "nystrom", "luna") for p in (2, 4)
    ]
    assert len({c.case_id for c in cases}) == len({c.config_key for c in cases}) == 6


def test_mqar_run_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(causal="true"))
    run_scenario(load_scenario(str(path)), tmp_path / "run", "cpu", reporter=QuietReporter(),
                 executor="inline", plots=True)  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    by = {(r["variant"], r["task"]["pairs"]): r for r in rows}
    assert len(rows) == 6
    for variant in ("softmax", "luna"):
        for pairs in (2, 4):
            r = by[(variant, pairs)]
            assert r["status"] == "ok", r["reason"]
            assert 0.0 <= r["mqar_accuracy"] <= 1.0 and r["mqar_best_lr"] in (1e-3, 1e-2)
            assert len(r["mqar_lr_accuracy"]) == 2 and len(r["mqar_seed_accuracy"]) == 2
            assert r["task"]["train_steps"] == 3 and r["mqar_runs"] == 4 and r["mqar_chance"] == 1 / 16
            assert r["mqar_copy_baseline"] == 1 / pairs and "pcopy" not in r
            assert r["kind"] == "mqar" and r["mode"] == "fwd_bwd" and r["mqar_train_s"] > 0
            assert not any(k.startswith(("time_", "rel_err", "e2e_")) for k in r)  # only its own metrics
    assert by[("luna", 2)]["feature_dim"] == 8 and by[("softmax", 2)]["exact"]
    assert by[("nystrom", 2)]["status"] == "skipped" and "no causal form" in by[("nystrom", 2)]["reason"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## MQAR" in report and "plots/mqar_accuracy_vs_d.png" in report and "skipped[^m1]" in report
    assert (tmp_path / "run" / "plots" / "mqar_accuracy_vs_d.png").exists()
    export_run(tmp_path / "run", "csv", tmp_path / "mqar.csv")
    table = pd.read_csv(tmp_path / "mqar.csv")
    assert all(table[c].notna().any() for c in table.columns) and "task.pairs" in table  # no empty column
    assert not any(c.startswith(("time_", "rel_err", "e2e_")) for c in table.columns)


def _first_case(tmp_path: Path, causal: str):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(causal=causal))
    scenario = load_scenario(str(path))

    class Ctx:
        host, worker, env_id, run_id, git_sha, scenario_arg = "h", "main", "", "r", "", "tiny.yaml"
        device_name = device_uuid = visible_devices = ""
        raise_errors = False

    Ctx.scenario = scenario
    return expand(scenario, "cpu")[0], Ctx()


def test_non_causal_problem_is_skipped(tmp_path: Path) -> None:
    case, ctx = _first_case(tmp_path, "false")
    rec = run_case(MQARKind(), case, ctx, {})
    assert rec.status == "skipped" and "problem.causal: true" in rec.reason


@pytest.mark.parametrize(("message", "status"), [("boom", "error"), ("CUDA out of memory", "oom")])
def test_training_failure_is_a_status(tmp_path: Path, monkeypatch, message: str, status: str) -> None:
    case, ctx = _first_case(tmp_path, "true")

    def fail(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr("harness.kinds.mqar.kind.train_one", fail)
    rec = run_case(MQARKind(), case, ctx, {})
    assert rec.status == status and message in rec.reason
    assert ("train_one" in rec.error_trace) == (status == "error")


@pytest.mark.slow
def test_softmax_learns_mqar() -> None:
    """The task is learnable: exact attention reaches >= 0.95 on a small MQAR in 300 steps."""
    cls = VARIANTS.get("softmax")
    spec = MQARSpec(64, 32, 4)

    def make():
        return build_model(cls, cls.make_params({}), "torch", layers=1, vocab=64, max_len=32,
                           heads=2, head_dim=16, shift=True)  # fmt: skip

    result = train_one(make, spec, TrainSpec(steps=300, batch=32, lr=1e-2, seed=0))
    assert result.accuracy >= 0.95, result


def _row(label: str, variant: str, d: float | None, n: int, pairs: int, seeds: list[float], **extra) -> dict:
    """One MQAR record as the report's DataFrame holds it (best lr of a one-rate grid)."""
    mean = sum(seeds) / len(seeds)
    return {"label": label, "variant": variant, "feature_dim": d, "exact": d is None, "seq_len": n,
            "task.pairs": pairs, "status": "ok", "reason": None, "mqar_accuracy": mean,
            "mqar_chance": 1 / 32, "mqar_seed_accuracy": seeds, "mqar_best_lr": 3e-3,
            "mqar_lr_accuracy": [mean], **extra}  # fmt: skip


def test_results_carry_mean_and_spread_over_seeds(tmp_path: Path) -> None:
    from harness.kinds.mqar.kind import _set_results, seed_spread
    from harness.kinds.mqar.train import RunResult
    from harness.results.case_record import new_record

    case, ctx = _first_case(tmp_path, "true")
    runs = [RunResult(lr, s, acc, 0.5, 1.0) for lr, s, acc in
            [(1e-3, 0, 0.2), (1e-3, 1, 0.3), (3e-3, 0, 0.5), (3e-3, 1, 0.7)]]  # fmt: skip
    rec = new_record(case, ctx, "mqar")
    _set_results(rec, runs, (1e-3, 3e-3), (0, 1))
    assert rec.get("mqar_best_lr") == 3e-3 and rec.get("mqar_accuracy") == pytest.approx(0.6)
    assert rec.get("mqar_accuracy_sd") == pytest.approx(0.2 / 2**0.5)  # sample sd (n - 1) of 0.5, 0.7
    assert rec.get("mqar_seed_accuracy") == [0.5, 0.7] and rec.get("mqar_accuracy_min") == 0.5
    one = new_record(case, ctx, "mqar")
    _set_results(one, runs[2:3], (3e-3,), (0,))
    assert one.get("mqar_accuracy_sd") is None and seed_spread([0.4]) is None  # no spread from one seed


def test_report_shows_both_baselines_spread_and_recall() -> None:
    from harness.kinds.mqar.report import mqar_section

    df = pd.DataFrame([
        _row("softmax", "softmax", None, 32, 8, [1.0, 1.0], mqar_accuracy_sd=0.0),
        _row("softmax", "softmax", None, 64, 8, [0.98, 1.0], mqar_accuracy_sd=0.0141),
        _row("linear", "linear", 16, 32, 8, [0.40, 0.60], mqar_accuracy_sd=0.1414),
        _row("linear", "linear", 16, 64, 8, [0.10, 0.12], mqar_accuracy_sd=0.0141),
        _row("window(window=4)", "window", 4, 32, 8, [0.11, 0.13]),  # no sd metric: from the seeds
        _row("window(window=4)", "window", 4, 64, 8, [0.12, 0.12]),
        _row("performer(features=8)", "performer", 8, 32, 8, [0.05, 0.35]),
    ])  # fmt: skip
    text = "\n".join(mqar_section(df, {"task": {"seeds": [0, 1]}}, {}))
    assert "| _chance (uniform value)_ " in text and "| _copy from context (1 / pairs)_ " in text
    assert text.count("0.125") >= 2 and text.count("0.031") >= 2  # each baseline under each point
    assert "**0.500** ± 0.141" in text and "**0.120** ± 0.014 (no recall learned)" in text
    assert "**0.990** ± 0.014" in text and "(lr" not in text  # a one-rate grid names no lr
    assert "**0.200** ± 0.212 (a seed at copy)" in text  # mean above 0.125, seed 0.05 below
    assert "at every point: `softmax`, `performer(features=8)`." in text
    assert "at some points only (N/pairs): `linear` (N=32/8)." in text
    assert "No recall learned at any point: `window(window=4)`." in text
    by_d = text.split("### Accuracy against D")[1]
    assert by_d.index("| 32, 8 ") < by_d.index("| 64, 8 ")  # grouped by point, not interleaved
