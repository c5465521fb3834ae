"""Seeds of a variant with random parameters (harness/measure/seeds.py): the scenario key, the kernel
and e2e kinds' mean and spread over seeds, and the reports' `mean ± sd`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.config.scenario import ScenarioError, load_scenario, scenario_from_dict, scenario_to_dict
from harness.config.sweep import expand
from harness.execute.context import CaseContext
from harness.execute.lifecycle import run_case
from harness.execute.progress import QuietReporter
from harness.execute.runner import run_scenario
from harness.kinds.kernel.kind import KernelKind
from harness.measure import seeds
from harness.plugins.metrics import metric
from harness.plugins.variants import VARIANTS
from harness.results.records import to_dataframe

TINY = {"batch": 1, "heads": 2, "head_dim": 8, "seq_len": 32}
MEASURE = {"warmup_ms": 0, "min_samples": 1, "max_samples": 1, "rep_ms": 0, "memory": False}
LUNA = {"name": "luna", "params": {"m": 2, "L": 2, "hidden": 4}, "fit": {"steps": 1, "batches": 1, "rows": 8}}
PERFORMER = {"name": "performer", "params": {"features": 8}}


def _scenario(tmp_path: Path, name: str, **extra: Any) -> Path:
    raw = {"name": name, "device": "cpu", "problem": TINY, "inputs": {"dist": "gaussian"},
           "accuracy": {"rows": 8}, "measure": MEASURE, **extra}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(tmp_path: Path, name: str, **extra: Any) -> dict[str, dict[str, Any]]:
    """Run a tiny kernel scenario's cases in this process (the case lifecycle, no run directory):
    {label: flat record}."""
    sc = load_scenario(str(_scenario(tmp_path, name, **extra)))
    ctx = CaseContext(sc, "run", "sha", "s.yaml", "cpu")
    rows = [run_case(KernelKind(), case, ctx, {}).flat() for case in expand(sc, "cpu")]
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    return {r["label"]: r for r in rows}


# ----- the scenario key ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seeds_raw", "expected"),
    [(-1, "int >= 0"), ([0, 0], "duplicate value"), ("a", "int"), ([], "non-empty list"),
     (list(range(101)), "at most 100")],
)  # fmt: skip
def test_bad_seeds_are_one_line_errors(tmp_path: Path, seeds_raw: Any, expected: str) -> None:
    path = _scenario(tmp_path, "bad", seeds=seeds_raw, variants=[{"name": "softmax"}])
    with pytest.raises(ScenarioError) as info:
        load_scenario(str(path))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: seeds") and expected in msg, msg


def test_a_kind_without_seeds_refuses_the_key(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "m", "kind": "mqar", "seeds": [0, 1], "device": "cpu",
                                    "problem": TINY, "variants": [{"name": "softmax"}]}))  # fmt: skip
    with pytest.raises(ScenarioError, match=r"seeds: kind 'mqar' does not take `seeds:`"):
        load_scenario(str(path))


def test_seeds_round_trip_and_default_keeps_the_dict(tmp_path: Path) -> None:
    sc = load_scenario(str(_scenario(tmp_path, "rt", seeds=[3, 1], variants=[{"name": "softmax"}])))
    assert sc.seeds == (3, 1) and scenario_from_dict(scenario_to_dict(sc), sc.path) == sc
    plain = load_scenario(str(_scenario(tmp_path, "plain", variants=[{"name": "softmax"}])))
    assert plain.seeds == (0,) and "seeds" not in scenario_to_dict(plain)  # old hashes unchanged


# ----- which variants draw at random, what a seed changes -----------------------------------
def test_random_variants_and_seeded_params() -> None:
    performer, taylor, softmax, luna = (VARIANTS.get(n) for n in ("performer", "taylor", "softmax", "luna"))
    assert performer.draws_at_random(performer.make_params({}))
    assert luna.draws_at_random(luna.make_params({}))  # learnable: initialisation and fit
    assert not softmax.draws_at_random(softmax.make_params({}))
    assert not taylor.draws_at_random(taylor.make_params({})) and taylor.draws_at_random(
        taylor.make_params({"proj_dim": 4})
    )
    assert seeds.seeds_for(softmax, softmax.make_params({}), (0, 1, 2)) == (0,)
    p = performer.make_params({"seed": 5})
    assert seeds.seeded_params(p, 2).seed == 7 and seeds.seeded_params(p, 0) is p


def test_summarize_mean_sd_and_per_seed() -> None:
    per_seed = [{"rel_err": 1.0, "fit_s": 2.0, "time": 9.0}, {"rel_err": 3.0, "fit_s": 4.0, "time": 1.0}]
    out = seeds.summarize(per_seed, ("rel_err",), ("fit_s",))
    assert out["rel_err"] == 2.0 and out["rel_err_seeds"] == [1.0, 3.0]
    assert out["rel_err_sd"] == pytest.approx(math.sqrt(2.0))
    assert out["fit_s"] == 3.0 and "fit_s_sd" not in out and out["time"] == 9.0  # time: the first seed's
    assert out["n_seeds"] == 2 and "rel_err_sd" not in seeds.summarize(per_seed[:1], ("rel_err",))


# ----- the kernel kind -----------------------------------------------------------------------
def test_kernel_mean_over_seeds_equals_single_seed_runs(tmp_path: Path) -> None:
    many = _run(tmp_path, "many", seeds=[0, 1, 2], variants=[{"name": "softmax"}, PERFORMER])
    singles = [_run(tmp_path, f"one{s}", seeds=[s], variants=[PERFORMER])["performer"] for s in (0, 1, 2)]
    _check_mean(many["performer"], singles)
    soft = many["softmax"]
    assert soft["n_seeds"] == 1 and soft["info"]["seeds"] == seeds.NOT_RANDOM and "rel_err_sd" not in soft
    # a one-seed scenario records what it always did: no seed fields on a deterministic variant
    assert "n_seeds" not in _run(tmp_path, "plain", variants=[{"name": "softmax"}])["softmax"]
    # Performer's seed s is its `seed` param moved by s: seeds [1] == params seed 1
    moved = _run(tmp_path, "param", variants=[{"name": "performer", "params": {"features": 8, "seed": 1}}])
    assert moved["performer"]["rel_err"] == pytest.approx(singles[1]["rel_err"], rel=1e-6)
    report = "\n".join(KernelKind().report_section(to_dataframe(list(many.values())), None, {}))
    spread = f"± {metric('rel_err').format(many['performer']['rel_err_sd'])}"
    assert any(line.startswith("| performer") and spread in line for line in report.splitlines()), report
    assert not any(line.startswith("| softmax") and "±" in line for line in report.splitlines()), report


@pytest.mark.slow
def test_kernel_learnable_seeds_vary_init_and_fit(tmp_path: Path) -> None:
    many = _run(tmp_path, "many", seeds=[0, 1, 2], variants=[LUNA])["luna"]
    singles = [_run(tmp_path, f"one{s}", seeds=[s], variants=[LUNA])["luna"] for s in (0, 1, 2)]
    _check_mean(many, singles)
    assert many["unfitted_rel_err_sd"] > 0 and len(many["fit_loss_seeds"]) == 3


def _check_mean(rec: dict[str, Any], singles: list[dict[str, Any]]) -> None:
    """`rec` (seeds 0, 1, 2) holds the mean and spread of the single-seed records `singles`."""
    per_seed = [one["rel_err"] for one in singles]
    assert rec["n_seeds"] == 3 and rec["info"]["seeds"] == [0, 1, 2]
    assert rec["rel_err_seeds"] == pytest.approx(per_seed, rel=1e-6)
    assert rec["rel_err"] == pytest.approx(sum(per_seed) / 3, rel=1e-6)
    assert rec["rel_err_sd"] > 0 and len(set(per_seed)) == 3  # three different draws
    assert rec["time_ms_median"] is not None and "time_ms_median_sd" not in rec  # timed once


# ----- the e2e kind (a tiny randomly initialised BERT; needs the quality extra) --------------
@pytest.mark.quality
@pytest.mark.slow
def test_e2e_mean_and_spread_over_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_quality_capture import WORDS, _tiny_model_folder

    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path / "cache"))
    folder = _tiny_model_folder(tmp_path)
    (tmp_path / "texts.txt").write_text(
        "# tiny\n" + "\n\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(8))
    )
    inputs = {
        "dist": "captured",
        "model": str(folder),
        "texts": str(tmp_path / "texts.txt"),
        "max_length": 16,
    }

    def run(name: str, seed_list: list[int]) -> dict[str, dict[str, Any]]:
        variants = [{"name": "softmax"}, {"name": "performer", "params": {"features": 4}}]
        problem = {"batch": 4, "heads": 4, "head_dim": 8, "seq_len": 16}
        raw = {"name": name, "kind": "e2e", "device": "cpu", "inputs": inputs, "seeds": seed_list,
               "problem": problem, "variants": variants}  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        run_scenario(load_scenario(str(path)), tmp_path / name, "cpu", reporter=QuietReporter(), plots=False,
                     executor="inline")  # fmt: skip
        lines = (tmp_path / name / "records.jsonl").read_text().splitlines()
        return {r["variant"]: r for r in map(json.loads, lines)}

    many = run("many", [0, 1])
    singles = [run(f"one{s}", [s]) for s in (0, 1)]
    perf = many["performer"]
    per_seed = [one["performer"]["e2e_cos_mean"] for one in singles]
    assert (
        perf["status"] == "ok"
        and perf["n_seeds"] == 2
        and perf["e2e_cos_mean_seeds"] == pytest.approx(per_seed)
    )
    assert perf["e2e_cos_mean"] == pytest.approx(sum(per_seed) / 2) and perf["e2e_cos_mean_sd"] > 0
    assert many["softmax"]["n_seeds"] == 1 and "e2e_cos_mean_sd" not in many["softmax"]
    report = (tmp_path / "many" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| performer"))
    assert "| 2 |" in row and "±" in row, row
