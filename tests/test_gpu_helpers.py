"""The CPU side of the GPU checks (docs/gpu.md): the NaN-filled allocations of tests/gpu, the timer
comparison, the low-precision reference check, the LUNA autotune table and its pruning, the summary
of bench/gpu_check.sh and the script's dry run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from attentions.linear.variant import LinearAttention
from attentions.luna import triton_configs as tc
from tests.gpu.checks import check_reference_at_dtype, timer_disagreement
from tests.gpu.nanfill import nan_filled_empty

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_summary  # noqa: E402  (bench/ is not a package)

BUGGY_SOURCE = '''
import torch

def forgets_last(n):
    """Writes all but the last element of what it returns: an uninitialised read downstream."""
    out = torch.empty(n)
    out[: n - 1] = 1.0
    return out.sum()

def forgets_last_like(x):
    out = torch.empty_like(x)
    out[..., :-1] = x[..., :-1]
    return out.sum()

def forgets_row(x):
    out = x.new_empty(x.shape)
    out[1:] = x[1:]
    return out.sum()

def writes_all(x):
    out = torch.empty_like(x)
    out.copy_(x)
    return out.sum(), torch.empty(3, dtype=torch.int64)
'''


def module_named(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(BUGGY_SOURCE, f"<{name}>", "exec"), module.__dict__)  # f_globals["__name__"] == name
    return module


# ----- NaN-filled torch.empty* -------------------------------------------------------------------
def test_nan_fill_exposes_uninitialised_reads_in_attentions_code() -> None:
    bug = module_named("attentions._nanfill_probe")
    x = torch.ones(4, 5)
    with nan_filled_empty() as log:
        assert torch.isnan(bug.forgets_last(8))
        assert torch.isnan(bug.forgets_last_like(x))
        assert torch.isnan(bug.forgets_row(x))
        total, ints = bug.writes_all(x)
        assert total == 20.0 and ints.dtype == torch.int64  # a full write is unaffected; ints not filled
    assert log == ["attentions._nanfill_probe"] * 4


def test_nan_fill_leaves_other_callers_and_restores() -> None:
    other = module_named("harness._nanfill_probe")
    originals = (torch.empty, torch.empty_like, torch.Tensor.new_empty)
    with nan_filled_empty() as log:
        other.forgets_last(8)
        torch.empty(3)  # this test module's own call
        assert torch.empty is not originals[0]
    assert log == []
    assert (torch.empty, torch.empty_like, torch.Tensor.new_empty) == originals


# ----- the timer comparison and the low-precision reference check -------------------------------
def test_timer_disagreement() -> None:
    assert timer_disagreement(1.0, 1.04) is None and timer_disagreement(0.96, 1.0) is None
    why = timer_disagreement(1.0, 1.1)
    assert why is not None and "ratio 0.909" in why
    assert timer_disagreement(1.06, 1.0) is not None
    with pytest.raises(ValueError, match="> 0"):
        timer_disagreement(0.0, 1.0)


class _OffByTwoPercent(LinearAttention):
    name = "linear"

    def forward(self, q, k, v, causal, key_padding_mask=None):
        return super().forward(q, k, v, causal, key_padding_mask) * 1.02


def test_reference_at_dtype_passes_and_catches_an_error() -> None:
    from harness.plugins import conformance as cf

    prob = dataclasses.replace(cf.problem(63, 32, causal=True), dtype="bf16")
    check_reference_at_dtype(LinearAttention, "torch", prob)
    with pytest.raises(AssertionError, match="output rel_err"):
        check_reference_at_dtype(_OffByTwoPercent, "torch", prob)


# ----- the LUNA autotune table -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("head_dim,D", [(64, 64), (32, 16), (128, 128)])
def test_candidates_are_launchable(head_dim: int, D: int, dtype: str) -> None:
    for kernel in tc.KERNELS:
        cands = tc.candidates(kernel, head_dim, D, dtype)
        assert cands and len(set(cands)) == len(cands)
        for bn, warps, stages in cands:
            assert bn in tc.BLOCKS and warps in tc.WARPS and stages in tc.STAGES
            assert tc.SPLIT_TOKENS % bn == 0  # non-causal programs cover whole tiles
        if kernel.startswith("_causal"):
            kind = "bwd" if "bwd" in kernel else "fwd"
            assert {c[0] for c in cands} == {tc.causal_block_n(kind, head_dim, D, dtype)}  # the cost model's
    with pytest.raises(ValueError, match="unknown LUNA kernel"):
        tc.candidates("_nope", 64, 64, "bf16")


def test_prune_picks_the_keys_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    from attentions.luna import triton_launch as tk

    tuned = tk.TUNED["_bwd_query_kernel"]
    prune = tuned.early_config_prune
    named = {"q_ptr": torch.empty(1, dtype=torch.bfloat16)}
    monkeypatch.setattr(tk, "is_interpreted", lambda: False)
    monkeypatch.delenv(tk.AUTOTUNE_ENV, raising=False)
    picked = [
        (c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in prune(tuned.configs, named, d=64, D=64)
    ]
    assert picked == tc.candidates("_bwd_query_kernel", 64, 64, "bf16")
    named = {"q_ptr": torch.empty(1, dtype=torch.float32)}
    picked = [
        (c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in prune(tuned.configs, named, d=64, D=64)
    ]
    assert picked == tc.candidates("_bwd_query_kernel", 64, 64, "fp32")
    monkeypatch.setenv(tk.AUTOTUNE_ENV, "0")  # tests/gpu: the first candidate only
    assert len(prune(tuned.configs, named, d=64, D=64)) == 1
    monkeypatch.delenv(tk.AUTOTUNE_ENV)
    monkeypatch.setattr(tk, "is_interpreted", lambda: True)  # nothing to time: the first candidate only
    assert len(prune(tuned.configs, named, d=64, D=64)) == 1
    assert tuned.reset_to_zero == ["part_ptr"] and tk.TUNED["_state_kernel"].reset_to_zero == []


# ----- bench/gpu_summary.py and bench/gpu_check.sh ----------------------------------------------
def _rec(impl: str, n: int, ms: float, **extra: object) -> dict:
    variant, _, impl_name = impl.partition("/")
    case = f"{impl}-{n}-{extra.get('causal', False)}"
    return dict(case_id=case, variant=variant, impl=impl_name, seq_len=n, causal=False, mode="fwd",
                status="ok", time_ms_median=ms, **extra)  # fmt: skip


def test_summary_tables_and_targets(tmp_path: Path) -> None:
    flash = {1024: 0.1, 2048: 0.3, 8192: 4.0, 131072: 900.0}
    luna = {1024: 0.2, 2048: 0.25, 8192: 0.5, 131072: 8.0}
    assert gpu_summary.efficiency_length(luna, flash) == 2048
    assert gpu_summary.efficiency_length({1024: 0.05, 2048: 0.5, 8192: 1.0}, flash) == 8192
    run = tmp_path / "luna_long"
    run.mkdir()
    recs = [_rec("flash/sdpa", n, t) for n, t in flash.items()]
    recs += [
        _rec("luna/triton", n, t, time_over_floor=2.5, extra_mem_bytes=1e6, input_bytes=2e7)
        for n, t in luna.items()
    ]
    recs.append({**_rec("luna/triton", 1024, 9.9), "status": "crashed"})  # the ok record of that case wins
    lines = [json.dumps(r) for r in recs] + ['{"case_id": "cut']  # a line a killed worker left
    (run / "records.w0.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (run / "records.w1.jsonl").write_text("\n".join(lines[3:]) + "\n")
    assert len(gpu_summary.load_records(run)) == len(flash) + len(luna)
    text = "\n".join(gpu_summary.targets_section(gpu_summary.load_records(run)))
    assert "speedup_vs_flash: 112 (>= 100): PASS" in text
    assert "time_over_floor: 2.5 (<= 3): PASS" in text
    assert "extra_mem_over_inputs: 0.05 (<= 0.1): PASS" in text
    assert "efficiency_length: 2048 (<= 2048): PASS" in text
    slow = [{**r, "time_ms_median": r["time_ms_median"] * 2} if r["variant"] == "luna" else r for r in recs]
    text = "\n".join(gpu_summary.targets_section(slow))
    assert (
        "speedup_vs_flash: 56.2 (>= 100): FAIL" in text and "efficiency_length: 8192 (<= 2048): FAIL" in text
    )


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    """Tools and modules checked, both scenarios valid for --device cuda, the plan printed; nothing run."""
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "scenarios/flash_sanity.yaml: valid" in proc.stdout
        and "scenarios/luna_long.yaml: valid" in proc.stdout
    )
    assert f"run_bench.py scenarios/luna_long.yaml --out {out}/luna_long" in proc.stdout
    # the quality steps at 512 tokens: validated (an invalid one exits 2), off unless given a limit
    assert "quality_minilm_gpu.yaml" in proc.stdout and "(off: set GPU_CHECK_CAPTURED_S" in proc.stdout
    assert "quality_minilm_e2e_gpu.yaml" in proc.stdout and "(off: set GPU_CHECK_E2E_S" in proc.stdout
    assert not out.exists()
    on = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)], capture_output=True, text=True,
        timeout=240, env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_E2E_S": "200"},
    )  # fmt: skip
    assert on.returncode == 0 and "quality_minilm_e2e   (limit 200 s)" in on.stdout, on.stdout + on.stderr
    for limit in ("abc", "-5"):
        env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_CAPTURED_S": limit}
        bad_limit = subprocess.run(
            ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)], capture_output=True,
            text=True, timeout=60, env=env,
        )  # fmt: skip
        assert bad_limit.returncode == 2 and f"got '{limit}'" in bad_limit.stderr, bad_limit.stderr
    bad = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHON": "/nonexistent/python"},
    )  # fmt: skip
    assert bad.returncode == 2 and "missing tool: /nonexistent/python" in bad.stderr
