"""An outside plugin passes the same contract tests as the built-in variants, and a broken one fails them.

Each test writes a tiny installed-looking package into tmp_path: the package (its own variant class,
exact attention written independently of attentions/, with its own fp32 reference and key-padding
mask) and a `*.dist-info` directory whose `entry_points.txt` declares it in the group
`attnbench.variants`. `importlib.metadata` finds dist-info directories on sys.path, so a subprocess
run with PYTHONPATH=tmp_path sees the plugin exactly as if it were pip-installed, and
`pytest tests/test_contract.py -k NAME` runs every contract check on it. That end-to-end run is
one subprocess; that a broken plugin fails is checked in-process through the same conformance
function the contract test calls (and end to end under `pytest -m slow`).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.plugins import conformance as cf
from tests.test_contract import LONG_N, SHAPES

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 280  # under pytest-timeout's 300 s

VARIANT = '''
"""{name}: exact softmax attention written with einsum and an explicit normalization."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from harness.measure.costs import by_mode, io_bytes_for_mode
from harness.plugins.contract import AttentionVariant, Capabilities, NoParams, Problem, Tolerance

FACTOR = {factor}  # 1.0; the broken plugin scales its output


class PluginSoftmax(AttentionVariant):
    """q, k, v: (B, H, N, d) -> (B, H, N, d); key_padding_mask (B, N) bool, True = real."""

    name = "{name}"
    version = 1
    paper = "Vaswani et al. 2017, Attention Is All You Need, arXiv:1706.03762"
    reference_impl = "{name}/naive.py"
    reference = "{name}.naive:reference"
    tolerances: ClassVar[dict[str, Tolerance]] = {{
        "fp32": Tolerance(output=1e-5, grad=1e-4),
        "bf16": Tolerance(output=2e-2, grad=6e-2),
    }}
    Params = NoParams
    impls = ("einsum",)
    capabilities = Capabilities(exact=True, masking=True)

    @classmethod
    def flop_terms(cls, problem: Problem, params: NoParams, impl: str) -> dict[str, float]:
        """q k^T and P v, 2 N^2 d each per (batch, head), computed in full; backward 2x."""
        n, d = problem.seq_len, problem.head_dim
        fwd = problem.batch * problem.heads * 4.0 * n * n * d
        return {{"attention_matmul": by_mode(problem, fwd, 2 * fwd)}}

    @classmethod
    def bytes_moved(cls, problem: Problem, params: NoParams, impl: str) -> float:
        n = problem.seq_len
        return io_bytes_for_mode(problem) + 4.0 * problem.batch * problem.heads * n * n * 4

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        n = q.shape[-2]
        scores = torch.einsum("bhid,bhjd->bhij", q.float(), k.float()) * q.shape[-1] ** -0.5
        keep = torch.ones(n, n, dtype=torch.bool, device=q.device)
        if causal:
            keep = keep.tril()
        keep = keep[None, None]
        if key_padding_mask is not None:
            keep = keep & key_padding_mask[:, None, None, :]
        scores = torch.where(keep, scores, torch.full_like(scores, -1e30))
        weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return (FACTOR * torch.einsum("bhij,bhjd->bhid", weights, v.float())).to(q.dtype)
'''

NAIVE = '''
"""The fp32 reference of {name}: softmax(q k^T / sqrt(d)) v, one (batch, head) at a time."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def reference(variant, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None):
    out = torch.zeros(q.shape, dtype=torch.float32)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            s = q[b, h].float() @ k[b, h].float().T / math.sqrt(q.shape[-1])
            hidden = torch.zeros_like(s, dtype=torch.bool)
            if causal:
                hidden = hidden | torch.ones_like(hidden).triu(1)
            if key_padding_mask is not None:
                hidden = hidden | ~key_padding_mask[b][None, :]
            out[b, h] = torch.softmax(s.masked_fill(hidden, -1e30), dim=-1) @ v[b, h].float()
    return out
'''


def write_plugin(root: Path, name: str, factor: float = 1.0) -> Path:
    """The package `name` and its dist-info (entry point in attnbench.variants) under root."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "variant.py").write_text(textwrap.dedent(VARIANT.format(name=name, factor=factor)))
    (package / "naive.py").write_text(textwrap.dedent(NAIVE.format(name=name)))
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[attnbench.variants]\n{name} = {name}.variant:PluginSoftmax\n")
    return root


def run_contract(plugins: Path, select: str, report: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """pytest tests/test_contract.py -k select with the plugin on the path; (process, {test id: outcome})."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-m", "pytest", "tests/test_contract.py", "-q", "-p", "no:cacheprovider"]
    cmd += ["-k", select, f"--junitxml={report}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        bad = [el.tag for el in case if el.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = bad[0] if bad else "passed"
    return proc, outcomes


def test_outside_plugin_passes_the_contract_tests(tmp_path: Path) -> None:
    name = "tmp_softmax_plugin"
    plugins = write_plugin(tmp_path / "site", name)
    # the plugin's checks, and the registry-wide ones that see every variant (the built-ins included)
    select = f"{name} or test_variant_imports or test_description or every_variant or documented"
    proc, outcomes = run_contract(plugins, select, tmp_path / "report.xml")
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    ran = {test: outcome for test, outcome in outcomes.items() if name in test}
    passed = [test for test, outcome in ran.items() if outcome == "passed"]
    checks = {test.split("[")[0] for test in passed}
    assert len(passed) >= 20 and not [t for t, o in ran.items() if o != "passed"], ran
    assert {
        "test_matches_reference",
        "test_low_precision_close_to_fp32",
        "test_key_padding_mask",
        "test_flop_model_matches_flop_counter",
        "test_causality",
    } <= checks, checks
    built_in = {test: outcome for test, outcome in outcomes.items() if name not in test}
    assert built_in and all(outcome in ("passed", "skipped") for outcome in built_in.values()), built_in


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_broken_plugin_fails_the_reference_check(tmp_path: Path, monkeypatch, causal: bool) -> None:
    """Off by 1% in its output: `check_matches_reference` (what test_matches_reference runs) fails
    at every contract shape, naming the output error (the tests can fail)."""
    name = f"tmp_broken_plugin_inproc_{int(causal)}"
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path / "site", name, factor=1.01)))
    cls = importlib.import_module(f"{name}.variant").PluginSoftmax
    for n, d in SHAPES:
        prob = cf.problem(n, d, causal) if n < LONG_N else cf.problem(n, d, causal, batch=1, heads=1)
        with pytest.raises(AssertionError, match="output rel_err"):
            cf.check_matches_reference(cls, "einsum", prob)


@pytest.mark.slow  # a pytest subprocess: the in-process check above is the default one
def test_broken_plugin_fails_the_contract_tests(tmp_path: Path) -> None:
    """Off by 1% in its output: the comparison with its own reference must fail (the tests can fail)."""
    name = "tmp_broken_plugin"
    plugins = write_plugin(tmp_path / "site", name, factor=1.01)
    proc, outcomes = run_contract(plugins, f"{name} and test_matches_reference", tmp_path / "report.xml")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert outcomes and all(outcome == "failure" for outcome in outcomes.values()), outcomes
    assert "output rel_err" in proc.stdout
