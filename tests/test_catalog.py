"""`run_bench.py list`: every registry, one section each; a closed pipe is not an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.execute.catalog import SECTIONS, describe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "what,needle",
    [
        ("variants", "luna_nested (v1)"),
        ("inputs", "peaked: "),
        ("metrics", "rel_err [1] (accuracy; lower is better; gated)"),
        ("executors", "inline: "),
        ("kinds", "kernel: "),
    ],
)
def test_each_registry_is_listed(what: str, needle: str) -> None:
    assert any(line.startswith(needle) for line in describe(what))
    assert f"# {what}" in describe("all")


def test_all_sections_in_order() -> None:
    headings = [line[2:] for line in describe("all") if line.startswith("# ")]
    assert headings == list(SECTIONS)


def test_list_into_a_closed_pipe_exits_quietly() -> None:
    res = subprocess.run(
        f"{sys.executable} run_bench.py list | head -1", shell=True, cwd=ROOT, capture_output=True, text=True
    )
    assert res.stdout == "# variants\n" and "Traceback" not in res.stderr and res.stderr == ""
