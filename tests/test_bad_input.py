"""Issue 12: every malformed scenario is exit 2 within 2 s, in at most 4 lines, without a
traceback: alias bombs, deep nesting, huge sweeps, huge ints, FIFOs and devices, label-only
duplicates, a float written the way YAML reads as text."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import harness.cli.inspect  # noqa: F401  imported up front: the timings below are the loader's own
import harness.config.sweep  # noqa: F401
import harness.execute.runner  # noqa: F401
import harness.regress.ab  # noqa: F401  (main() imports it for its bad-input exceptions)
from harness.cli import main
from harness.config.scenario import ScenarioError, load_scenario
from harness.common.checks import float_hint

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = "problem: {batch: 1, heads: 1, head_dim: 8, seq_len: 16}\n"


def _alias_bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BAD = {
    "alias_bomb": (_alias_bomb(), "more than 20000 values (aliases counted in full)"),
    "deep": ("name: x\nproblem: " + "[" * 500 + "]" * 500 + "\n", "nested more than"),
    "params_1e9": (
        "name: x\n" + PROBLEM + "variants:\n  - name: performer\n    params:\n"
        f"      features: {list(range(1, 1001))}\n      seed: {list(range(1000))}\n"
        "      eps: [0.001, 0.002]\n",
        "2000000 cases",
    ),
    "cases_1e6": (
        f"name: x\nproblem: {{batch: {list(range(1, 1001))}, heads: {list(range(1, 1001))}, head_dim: 8, "
        "seq_len: 16}\nvariants: [{name: softmax}]\n",
        "1000000 cases",
    ),
    "seq_len_100k": (  # was 69 s of a quadratic duplicate check
        f"name: x\nproblem: {{batch: 1, heads: 1, head_dim: 8, seq_len: {list(range(1, 100_001))}}}\n"
        "variants: [{name: softmax}]\n",
        "more than 20000 values (aliases",
    ),
    "seq_len_15k": (  # under the value budget: the duplicate check is linear, the count refuses it
        f"name: x\nproblem: {{batch: 1, heads: 1, head_dim: 8, seq_len: {list(range(1, 15_001))}}}\n"
        "variants: [{name: softmax}]\n",
        "15000 cases",
    ),
    "huge_int": (
        "name: x\nproblem: {batch: 1, heads: 1, head_dim: 8, seq_len: 123456789012345678901234567890}\n"
        "variants: [{name: softmax}]\n",
        "problem.seq_len: expected a positive int <= 2147483647",
    ),
    "label_only_duplicate": (
        "name: x\n" + PROBLEM + "variants: [{name: softmax}, {name: softmax, label: again}]\n",
        "variants[0] (softmax) and variants[1] (again) give the same case",
    ),
    "float_as_text": (
        "name: x\n" + PROBLEM + "variants: [{name: softmax}]\nmeasure: {warmup_ms: 1.0e6}\n",
        "write 1000000.0",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_scenario_is_one_fast_line_exit_2(name: str, tmp_path: Path, capsys) -> None:
    text, expected = BAD[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    code = main(["validate", str(path)])
    elapsed = time.perf_counter() - t0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert 1 <= len(lines) <= 4 and "Traceback" not in captured.err
    assert expected in lines[0] and str(path) in lines[0]
    assert elapsed < 2.0, f"{name}: {elapsed:.2f} s"


def test_only_regular_files_are_read(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # nobody writes it: a plain open() would block forever
    for path, expected in (
        (fifo, "a FIFO"),
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path, "a directory"),
    ):
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0]
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "#" * (2 << 20) + "\n")
    with pytest.raises(ScenarioError, match="larger than 1024 KiB"):
        load_scenario(str(big))


def test_max_cases_is_a_cli_option(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\nproblem: {batch: 1, heads: 1, head_dim: 8, seq_len: [8, 16, 32]}\n"
        "variants: [{name: softmax}]\ndevice: cpu\n"
    )
    assert main(["validate", str(path), "--max-cases", "2"]) == 2
    assert "3 cases" in capsys.readouterr().err
    assert main(["validate", str(path), "--max-cases", "3"]) == 0


def test_anchors_within_the_budget_still_work(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\ndevice: cpu\nproblem: &p {batch: 1, heads: 1, head_dim: 8, seq_len: 16}\n"
        "variants: [{name: softmax}]\ndescription: ok\n"
    )
    assert load_scenario(str(path)).problem.seq_len == (16,)


@pytest.mark.parametrize("text", ["1e-2", "1.0e6", "1E-20", "2.5e10"])
def test_float_hint_suggests_a_form_yaml_reads_as_a_number(text: str) -> None:
    hint = float_hint(text)
    suggested = hint.rsplit("write ", 1)[1]
    assert suggested != text and isinstance(yaml.safe_load(suggested), float)
    assert float(suggested) == float(text)


def test_a_broken_scenario_gives_no_traceback_from_the_shell(tmp_path: Path) -> None:
    """The real entry point: exit 2, one line on stderr (timing is checked in process above: the
    interpreter's own start-up with torch is not the loader's)."""
    path = tmp_path / "deep.yaml"
    path.write_text(BAD["deep"][0])
    res = subprocess.run(
        [sys.executable, "run_bench.py", "validate", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
