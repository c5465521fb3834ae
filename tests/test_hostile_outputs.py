"""Issue 24: files are written only where the user asked, and hand-edited or hostile run files
give one line or a named warning, never a traceback.

- `export --out`, and every file a run directory gets (report.md, records.parquet, ...), refuse
  a device, FIFO, socket or folder (exit 2, one line) and never rename a temporary file over one;
  a symlink is refused unless it resolves to a regular file the user can write.
- a full disk or a file-size limit is reported when it happens.
- `report` and `export` skip a record line with a missing field, a wrong type, a non-mapping
  params/info or an unknown status, with a warning naming the file, the line and the field;
  `--resume` reruns the case of such a line, and of a start marker without a case id.
- `--workers` is bounded by the machine before any process starts; every `UserError` is exit 2.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.common.errors import UserError
from harness.common.files import UnsafePathError, atomic_path, ensure_dir, writable_target
from harness.execute.executors import ExecutorError, ExecutorOptions, max_workers
from harness.results import record_lines
from harness.results.record_lines import read_records
from tests.test_compare import make_records, write_run

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = """name: hostile-out
device: cpu
problem: {batch: 1, heads: 1, head_dim: 8, seq_len: [16, 32]}
variants: [{name: softmax}, {name: linear}]
accuracy: {rows: 8}
measure: {warmup_ms: 0, min_samples: 2, max_samples: 3, rep_ms: 0, memory: false}
"""
RUN = ["--executor", "inline", "--quiet", "--no-plots"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory of 6 synthetic ok records (no benchmark is run)."""
    return write_run(tmp_path / "run", make_records())


def _specials(tmp_path: Path) -> dict[str, Path]:
    """Paths that are not regular files: a FIFO, a socket, a folder, a copy of /dev/full (root
    only: mknod), a symlink to the FIFO and a dangling symlink."""
    made = {"fifo": tmp_path / "fifo", "socket": tmp_path / "sock", "folder": tmp_path / "folder"}
    os.mkfifo(made["fifo"])
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(made["socket"]))
    server.close()
    made["folder"].mkdir()
    try:
        os.mknod(tmp_path / "full", stat.S_IFCHR | 0o666, os.makedev(1, 7))  # = /dev/full
        made["full device"] = tmp_path / "full"
    except PermissionError:
        pass  # not root: the FIFO and the socket stand for it
    (tmp_path / "to-fifo").symlink_to(made["fifo"])
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    made |= {"link to a fifo": tmp_path / "to-fifo", "dangling link": tmp_path / "dangling"}
    return made


@pytest.mark.parametrize("fmt", ["csv", "parquet", "pytest-benchmark"])
def test_export_refuses_anything_but_a_regular_file(fmt: str, run_dir: Path, tmp_path: Path, capsys) -> None:
    """Today's main renamed its temporary file over each of these (a device became a text file)."""
    for what, path in _specials(tmp_path).items():
        mode = os.lstat(path).st_mode
        assert main(["export", str(run_dir), "--format", fmt, "--out", str(path)]) == 2, what
        line = _one_line(capsys)
        assert str(path) in line and "refusing" in line, line
        assert os.lstat(path).st_mode == mode, f"{what} was replaced"
        assert not list(path.parent.glob(f".{path.name}.*.tmp"))


def test_dev_full_itself_is_refused_before_anything_is_written() -> None:
    """Checked without writing: a regression here must not replace the machine's /dev/full."""
    with pytest.raises(UnsafePathError, match="/dev/full: is a character device"):
        writable_target(Path("/dev/full"), follow=True)


def test_export_writes_through_a_link_to_a_regular_file(run_dir: Path, tmp_path: Path, capsys) -> None:
    target, link = tmp_path / "latest-target.csv", tmp_path / "latest.csv"
    target.write_text("old\n")
    link.symlink_to(target)
    assert main(["export", str(run_dir), "--format", "csv", "--out", str(link)]) == 0
    assert link.is_symlink() and target.read_text().startswith("case_id,")
    plain = tmp_path / "plain.csv"
    assert main(["export", str(run_dir), "--format", "csv", "--out", str(plain)]) == 0
    assert plain.read_text() == target.read_text()


def test_export_reports_a_file_size_limit_when_it_happens(run_dir: Path, tmp_path: Path, capsys) -> None:
    """RLIMIT_FSIZE makes the write fail with EFBIG, as a full disk fails with ENOSPC."""
    out = tmp_path / "out.json"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.getsignal(signal.SIGXFSZ)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, hard))
    try:
        code = main(["export", str(run_dir), "--format", "pytest-benchmark", "--out", str(out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert code == 2 and "File too large" in _one_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".out.json.*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_export_reports_a_full_disk_when_it_happens(run_dir: Path, tmp_path: Path, capsys) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no privilege for mount in this container)")
    try:
        with pytest.raises(OSError), open(disk / "filler", "wb") as fh:  # fill the disk up
            fh.write(b"x" * (1 << 20))
        out = disk / "out.csv"
        assert main(["export", str(run_dir), "--format", "csv", "--out", str(out)]) == 2
        assert "No space left on device" in _one_line(capsys)
        assert not out.exists()
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.timeout(60)  # today's main waits forever on a FIFO nobody writes
@pytest.mark.parametrize("name", ["report.md", "records.parquet", "records.jsonl", "env.json", "plots"])
def test_report_refuses_a_run_file_that_is_not_regular(name: str, run_dir: Path, capsys) -> None:
    path = run_dir / name
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    assert main(["report", str(run_dir)]) == 2
    line = _one_line(capsys)
    assert f"{path}: is a FIFO" in line
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


def test_a_temporary_file_is_never_renamed_over_what_appeared_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    with pytest.raises(UnsafePathError, match="is a FIFO"), atomic_path(path) as tmp:
        tmp.write_text("x")
        os.mkfifo(path)  # planted while the file was being written
    assert stat.S_ISFIFO(os.lstat(path).st_mode) and not list(tmp_path.glob(".report.md.*"))
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(UnsafePathError, match="not a folder"):
        ensure_dir(file)


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_run_out_that_is_not_a_folder_is_one_line(kind: str, tmp_path: Path, capsys) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    out.write_text("keep\n") if kind == "file" else os.mkfifo(out)
    assert main([str(scenario), "--out", str(out), *RUN]) == 2
    assert "not a run directory; choose a folder" in _one_line(capsys)
    assert kind == "fifo" or out.read_text() == "keep\n"


EDITS = {
    "no case_id": (lambda r: r.pop("case_id"), "field case_id: missing"),
    "no label": (lambda r: r.pop("label"), "field label: missing"),
    "no seq_len": (lambda r: r.pop("seq_len"), "field seq_len: missing"),
    "seq_len text": (lambda r: r.update(seq_len="long"), "field seq_len: expected an int, found 'long'"),
    "params list": (lambda r: r.update(params=[1, 2]), "field params: expected a mapping"),
    "info text": (lambda r: r.update(info="x"), "field info: expected a mapping"),
    "status": (lambda r: r.update(status="weird"), "field status: expected one of ok,"),
    "time text": (
        lambda r: r.update(time_ms_median="fast"),
        "field time_ms_median: expected null or a number",
    ),
    "samples text": (lambda r: r.update(time_ms_samples="abc"), "field time_ms_samples: expected null, a"),
    "rel_err list": (lambda r: r.update(rel_err=[1]), "field rel_err: expected null or a number"),
    "causal text": (lambda r: r.update(causal="yes"), "field causal: expected true/false"),
    "case_id int": (lambda r: r.update(case_id=7), "field case_id: expected non-empty text, found 7"),
    "reason int": (lambda r: r.update(reason=5), "field reason: expected text"),
}


def _edit_line(path: Path, number: int, change) -> None:
    lines = path.read_text().splitlines()
    row = json.loads(lines[number - 1])
    change(row)
    lines[number - 1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", list(EDITS))
def test_report_and_export_skip_a_hand_edited_record_naming_it(
    name: str, run_dir: Path, tmp_path: Path, capsys
) -> None:
    change, expected = EDITS[name]
    _edit_line(run_dir / "records.jsonl", 3, change)
    out = tmp_path / "out.parquet"
    assert main(["export", str(run_dir), "--format", "parquet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{run_dir / 'records.jsonl'}: line 3: malformed record skipped ({expected}" in err, err
    import pandas as pd

    assert len(pd.read_parquet(out)) == 5
    assert main(["report", str(run_dir), "--no-plots"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert "**Cases:** 5" in (run_dir / "report.md").read_text()


def test_hostile_record_files_give_warnings_not_tracebacks(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    path = run_dir / "records.jsonl"
    good = path.read_bytes()
    path.write_bytes(bytes(range(256)) * 40 + b"\n" + good)  # binary junk: one warning per line, capped
    assert len(read_records(path)) == 6
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == record_lines.MAX_WARNINGS + 1 and "not listed one by one" in warnings[-1]
    deep = run_dir / "records.deep.jsonl"  # nesting deeper than the JSON parser's recursion
    deep.write_bytes(b"[" * 100_000 + b"\n" + good)
    assert len(read_records(deep)) == 6 and "line 1: corrupt record skipped" in capsys.readouterr().err
    limit = 2 * max(map(len, good.splitlines()))  # an overlong line is read past, never held
    monkeypatch.setattr(record_lines, "MAX_LINE", limit)
    long = run_dir / "records.long.jsonl"
    long.write_bytes(b"x" * (3 * limit) + b"\n" + good)
    assert len(read_records(long)) == 6 and "line 1: longer than" in capsys.readouterr().err
    deep.unlink()
    long.unlink()
    (run_dir / "records.main.jsonl").write_bytes(b"")
    path.write_bytes(b"")
    assert main(["report", str(run_dir)]) == 2
    assert "no complete record" in _one_line(capsys)
    path.unlink()
    path.mkdir()
    assert main(["export", str(run_dir), "--format", "csv", "--out", str(tmp_path / "x.csv")]) == 2
    assert "records.jsonl: is a directory" in _one_line(capsys)


def test_resume_reruns_a_record_and_a_start_marker_without_case_id(tmp_path: Path, capsys) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), *RUN]) == 0
    for name in ("records.jsonl", "records.main.jsonl"):  # the merged file and the worker's own
        _edit_line(out / name, 2, lambda r: r.pop("case_id"))
    with open(out / "started.main.jsonl", "a") as fh:  # a marker of a case that never finished
        fh.write(json.dumps({"worker": "main", "pid": 1, "at": "x", "supervised": False}) + "\n")
    lost = json.loads((out / "started.main.jsonl").read_text().splitlines()[1])["case_id"]
    capsys.readouterr()
    assert main([str(scenario), "--out", str(out), *RUN, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "records.main.jsonl: line 2: malformed record skipped (field case_id: missing)" in err
    assert "started.main.jsonl: line 5: malformed record skipped (field case_id: missing)" in err
    rows = read_records(out / "records.jsonl")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)  # rerun, not blamed as crashed
    assert lost in {r["case_id"] for r in rows}


def test_workers_are_bounded_by_the_machine(monkeypatch) -> None:
    most, why = max_workers()
    assert 1 <= most <= 4 * (os.cpu_count() or 1) and "cores" in why and "MiB per worker" in why
    ExecutorOptions(workers=most).check()
    with pytest.raises(ExecutorError, match=rf"--workers {most + 1}: expected 1 to {most} on this machine"):
        ExecutorOptions(workers=most + 1).check()
    ExecutorOptions(workers=most + 1).check(runs_here=False)  # slurm: jobs run on the cluster's nodes
    with pytest.raises(ExecutorError, match="--gpus 0,0: a GPU id is listed twice"):
        ExecutorOptions(gpus=["0", "0"]).check()


def test_a_missing_scenario_with_many_workers_starts_nothing(tmp_path: Path) -> None:
    """The real entry point: one line, exit 2, and no interpreter started (the import of warm.py
    registers no exit hook, and no worker log is created)."""
    res = subprocess.run(
        [sys.executable, "run_bench.py", str(tmp_path / "missing.yaml"), "--workers", "16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "missing.yaml" in res.stderr and not list(tmp_path.glob("attnbench-worker-*"))


def test_every_user_error_is_one_line_exit_2(monkeypatch, capsys) -> None:
    import harness.cli.inspect as inspect

    class Planted(UserError):
        pass

    def fail(argv: list[str]) -> int:
        raise Planted("a.yaml: planted\nsecond line")

    monkeypatch.setattr(inspect, "list_plugins", fail)
    assert main(["list"]) == 2
    assert _one_line(capsys) == "error: a.yaml: planted second line"


@pytest.mark.timeout(60)  # today's main waits forever on a FIFO run.json
@pytest.mark.parametrize("name", ["run.json", "records.main.jsonl", "started.main.jsonl"])
def test_resume_refuses_a_run_file_that_is_not_regular(name: str, tmp_path: Path, capsys) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), *RUN]) == 0
    capsys.readouterr()
    (out / name).unlink()
    os.mkfifo(out / name)
    assert main([str(scenario), "--out", str(out), *RUN, "--resume"]) == 2
    assert f"{out / name}: is a FIFO" in _one_line(capsys)
