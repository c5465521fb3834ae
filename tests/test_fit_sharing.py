"""A fit is shared by every case whose calibration batches are the same: across modes and across
N >= 1024 (calibration length min(N, 1024)), never across calibration lengths or input regimes."""

from __future__ import annotations

from harness.config.scenario import scenario_from_dict
from harness.config.sweep import expand
from harness.kinds.kernel.fitting import fit_cache_key


def _cases(fit: dict, inputs: object = None) -> dict[tuple[int, str, str], object]:
    raw = {
        "name": "fitshare",
        "device": "cpu",
        "problem": {
            "batch": 1,
            "heads": 1,
            "head_dim": 8,
            "seq_len": [512, 1024, 4096],
            "mode": ["fwd", "fwd_bwd"],
        },
        "inputs": inputs or [{"dist": "gaussian"}, {"dist": "clustered"}],
        "variants": [{"name": "luna_nested", "params": {"pack_len": 4}, "fit": fit}],
    }
    cases = expand(scenario_from_dict(raw, "fitshare.yaml"), "cpu")
    return {(c.problem.seq_len, c.problem.mode, c.inputs.dist): c for c in cases}


def test_one_fit_for_every_length_at_or_above_the_calibration_length() -> None:
    cases = _cases({"steps": 3})
    key = {k: fit_cache_key(c) for k, c in cases.items()}
    assert key[(1024, "fwd", "gaussian")] == key[(4096, "fwd", "gaussian")]
    assert key[(1024, "fwd", "gaussian")] == key[(4096, "fwd_bwd", "gaussian")]
    assert key[(512, "fwd", "gaussian")] != key[(1024, "fwd", "gaussian")]  # calibrated at 512
    assert key[(4096, "fwd", "gaussian")] != key[(4096, "fwd", "clustered")]


def test_an_explicit_calibration_length_is_shared_by_every_length() -> None:
    cases = _cases({"steps": 3, "seq_len": 256})
    assert len({fit_cache_key(c) for (_, _, dist), c in cases.items() if dist == "gaussian"}) == 1
