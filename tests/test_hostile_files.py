"""Issue 12: hostile file systems and honest exits. Run directories stay under runs/, planted
symlinks are never written through, every file-system failure is one line and exit 2, a full disk
or a file-size limit loses nothing that `--resume` cannot finish, a corrupt record line is
skipped with its line number, and `run`, `compare` and `list` exit as documented."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.config.scenario import load_scenario
from harness.execute.runner import default_out_dir
from harness.plugins.contract import AttentionVariant, Capabilities
from harness.plugins.variants import VARIANTS
from harness.results.record_lines import read_records

SCENARIO = """name: hostile
device: cpu
problem: {batch: 1, heads: 1, head_dim: 8, seq_len: [16, 32, 64]}
variants: [{name: softmax}, {name: linear}]
accuracy: {rows: 8}
measure: {warmup_ms: 0, min_samples: 2, max_samples: 3, rep_ms: 0, memory: false}
"""
RUN = ["--executor", "inline", "--quiet", "--no-plots"]


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("name", ["../../../x", "/etc/passwd", "a/b\\c", "..", "x" * 300, "ok-name_1.2"])
def test_default_run_dir_is_one_safe_folder_under_runs(name: str, scenario: Path) -> None:
    s = load_scenario(str(scenario))
    out = default_out_dir(type(s)(**{**s.__dict__, "name": name}))
    assert out.parent == Path("runs") and len(out.name) < 120
    assert ".." not in out.parts and "/" not in out.name and not out.name.startswith(".")


def test_unusable_out_is_one_line_exit_2(scenario: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("")
    assert main([str(scenario), "--out", str(tmp_path / "afile" / "run"), *RUN]) == 2
    assert "afile/run: Not a directory" in _one_line_error(capsys)
    assert main([str(scenario), "--out", str(tmp_path / ("x" * 300)), *RUN]) == 2
    assert "File name too long" in _one_line_error(capsys)


def test_planted_symlinks_are_replaced_or_refused_never_followed(
    scenario: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    victim, target = tmp_path / "victim.txt", tmp_path / "created-through-a-link.jsonl"
    victim.write_text("precious\n")
    (out / "report.md").symlink_to(victim)
    (out / "records.main.jsonl").symlink_to(target)  # dangling: an append would create it
    assert main([str(scenario), "--out", str(out), *RUN]) == 2
    assert "records.main.jsonl: is a symbolic link" in _one_line_error(capsys)
    assert not target.exists()
    (out / "records.main.jsonl").unlink()
    assert main([str(scenario), "--out", str(out), *RUN, "--resume"]) == 0
    assert victim.read_text() == "precious\n"
    assert not (out / "report.md").is_symlink() and "hostile" in (out / "report.md").read_text()


def test_a_file_size_limit_is_exit_2_and_resume_loses_nothing(scenario: Path, tmp_path: Path, capsys) -> None:
    """RLIMIT_FSIZE stands in for a full disk (no mount needed): the third record does not fit."""
    out = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.getsignal(signal.SIGXFSZ)
    resource.setrlimit(resource.RLIMIT_FSIZE, (7000, hard))
    try:
        code = main([str(scenario), "--out", str(out), *RUN])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert code == 2
    line = _one_line_error(capsys)
    assert str(out) in line and "File too large" in line and "--resume" in line
    assert not (out / "records.parquet").exists()  # never a torn or empty parquet
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind
    kept = len(read_records(out / "records.jsonl"))
    assert 0 < kept < 6
    assert main([str(scenario), "--out", str(out), *RUN, "--resume"]) == 0
    rows = read_records(out / "records.jsonl")
    assert len(rows) == 6 and len({r["case_id"] for r in rows}) == 6
    assert all(r["status"] == "ok" for r in rows)
    assert (out / "records.parquet").stat().st_size > 0


def test_a_corrupt_record_line_is_skipped_by_its_number_and_resume_reruns_it(
    scenario: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), *RUN]) == 0
    capsys.readouterr()
    for name in ("records.jsonl", "records.main.jsonl"):  # the merged file and the worker's own
        lines = (out / name).read_text().splitlines(keepends=True)
        lines[2] = lines[2][:40] + "\x00garbage" + lines[2][40:]
        (out / name).write_text("".join(lines))
    assert main(["report", str(out), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "records.jsonl: line 3: corrupt record skipped" in err and "Traceback" not in err
    assert len(read_records(out / "records.jsonl")) == 5
    assert main([str(scenario), "--out", str(out), *RUN, "--resume"]) == 0
    assert len(read_records(out / "records.jsonl")) == 6


class Broken(AttentionVariant):
    """Always raises: a run of only this variant has every case `error`."""

    name = "always_broken"
    impls = ("torch",)
    capabilities = Capabilities(exact=True)

    def forward(self, q, k, v, causal):
        raise ValueError("this variant always fails")


@pytest.fixture
def broken():
    VARIANTS.register("always_broken", Broken)
    yield
    VARIANTS.unregister("always_broken")


def test_errors_exit_3_and_raise_reraises_the_first(broken, tmp_path: Path, capsys) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(SCENARIO.replace("[{name: softmax}, {name: linear}]", "[{name: always_broken}]"))
    assert main([str(path), "--out", str(tmp_path / "run"), *RUN]) == 3
    assert "3 case(s) ended error or crashed" in capsys.readouterr().err
    rec = read_records(tmp_path / "run" / "records.jsonl")[0]
    assert 'raise ValueError("this variant always fails")' in rec["error_trace"]
    with pytest.raises(ValueError, match="always fails"):
        main([str(path), "--out", str(tmp_path / "raised"), "--quiet", "--no-plots", "--raise"])
    good = tmp_path / "good.yaml"  # oom, skipped and leak are results: only error/crashed exit 3
    good.write_text(SCENARIO)
    assert main([str(good), "--out", str(tmp_path / "good"), *RUN]) == 0


def _fake_run(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True)
    base = {"schema_version": 3, "variant": "softmax", "label": "softmax", "seq_len": 16, "dtype": "fp32"}
    lines = [json.dumps({**base, "causal": False, "mode": "fwd", **row}) for row in rows]
    (path / "records.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_compare_exits_2_when_nothing_is_compared(tmp_path: Path, capsys) -> None:
    a = _fake_run(tmp_path / "a", [{"case_id": "c1", "status": "ok", "rel_err": 1e-6}])
    b = _fake_run(tmp_path / "b", [{"case_id": "c2", "status": "ok", "rel_err": 1e-6}])
    assert main(["compare", str(a), str(b)]) == 2
    assert capsys.readouterr().out.startswith("**NOTHING COMPARED**: no case in common")
    c = _fake_run(tmp_path / "c", [{"case_id": "c1", "status": "error"}])
    d = _fake_run(tmp_path / "d", [{"case_id": "c1", "status": "error"}])
    assert main(["compare", str(c), str(d)]) == 2
    assert "none of the 1 cases in common is ok in both runs" in capsys.readouterr().out
    assert main(["compare", str(a), str(c)]) == 1  # ok -> error is a regression, not "nothing"
    capsys.readouterr()
    e = _fake_run(tmp_path / "e", [{"case_id": "c1", "status": "ok", "rel_err": "tiny"}])
    assert main(["compare", str(a), str(e)]) == 2
    assert "field rel_err: expected null or a number" in _one_line_error(capsys)


def test_a_broken_entry_point_is_listed_as_broken(capsys) -> None:
    VARIANTS.register("zz_broken_plugin", "no_such_module_for_attnbench:Variant")
    try:
        assert main(["list", "variants"]) == 0
    finally:
        VARIANTS.unregister("zz_broken_plugin")
    out = capsys.readouterr().out
    assert "zz_broken_plugin: BROKEN, cannot be used:" in out and "No module named" in out
    assert "softmax (v" in out


def test_a_closed_stdout_ends_quietly(monkeypatch, capsys) -> None:
    """`list | head -1` once head has exited: every write to stdout fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        assert main(["list"]) == 0
        monkeypatch.undo()
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_exit_2_and_resume_loses_nothing(scenario: Path, tmp_path: Path, capsys) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "run"
        assert main([str(scenario), "--out", str(out), *RUN]) == 2
        assert "No space left on device" in _one_line_error(capsys)
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        assert main([str(scenario), "--out", str(out), *RUN, "--resume"]) == 0
        assert len(read_records(out / "records.jsonl")) == 6
    finally:
        subprocess.run(["umount", str(disk)])


def test_the_output_device_is_checked() -> None:
    from harness.measure.output_contract import output_problems

    q = torch.zeros(1, 1, 4, 8)
    assert output_problems(q, (1, 1, 4, 8), torch.float32, torch.device("cpu")) == ""
