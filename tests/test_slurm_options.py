"""The `slurm` executor's logic, in process and without a cluster: groups packed into jobs,
sbatch options checked against the scheduler's syntax, the controller preflight (a fake `sinfo`
on PATH), job states read from `squeue`; and the run directory's writer lock (flock, pid and
process start time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.config.scenario import ScenarioError, load_scenario, scenario_from_dict, scenario_to_dict
from harness.execute import slurm
from harness.execute.cluster import SlurmExecutor
from harness.execute.executors import ExecutorError, ExecutorOptions
from harness.execute.rundir import RunDirError, process_start_time, writer_lock
from harness.execute.slurm import SlurmSyntaxError, check_param, pack_groups, parse_cli_params

ROOT = Path(__file__).resolve().parents[1]


# ----- packing -----------------------------------------------------------------------------------
def groups_of(sizes: list[int]) -> list[list[str]]:
    return [[f"g{i}c{j}" for j in range(n)] for i, n in enumerate(sizes)]


def test_a_thousand_case_sweep_becomes_tens_of_jobs_and_no_group_is_split() -> None:
    groups = groups_of([8] * 125)  # e.g. 125 configurations x 8 lengths
    jobs = pack_groups(groups, slurm.DEFAULT_CASES_PER_JOB)
    assert 10 <= len(jobs) <= 99
    assert [g for job in jobs for g in job] == groups  # every group once, whole, in plan order
    assert all(sum(map(len, job)) <= slurm.DEFAULT_CASES_PER_JOB for job in jobs)


@pytest.mark.parametrize(
    "sizes,per_job,expected",
    [
        ([3, 3, 3, 3], 6, [[3, 3], [3, 3]]),
        ([3, 3, 3, 3], 7, [[3, 3], [3, 3]]),  # a group never straddles two jobs
        ([10, 1, 1], 4, [[10], [1, 1]]),  # a group larger than the target is a job of its own
        ([1, 1, 1], 1, [[1], [1], [1]]),
        ([5], 100, [[5]]),
        ([], 5, []),
    ],
)
def test_groups_are_packed_up_to_the_target_in_order(
    sizes: list[int], per_job: int, expected: list[list[int]]
) -> None:
    jobs = pack_groups(groups_of(sizes), per_job)
    assert [[len(g) for g in job] for job in jobs] == expected


# ----- sbatch options ----------------------------------------------------------------------------
def test_sbatch_options_pass_with_slurm_syntax_and_normalized_names() -> None:
    params = parse_cli_params(
        ["account=proj-42", "qos=high", "constraint=a100&ib", "mem=64G", "cpus-per-task=8", "exclusive",
         "gres=gpu:a100:2", "nodelist=node[01-04]", "mail_user=me@lab.org"]
    )  # fmt: skip
    assert params == {
        "account": "proj-42",
        "qos": "high",
        "constraint": "a100&ib",
        "mem": "64G",
        "cpus_per_task": "8",
        "exclusive": True,
        "gres": "gpu:a100:2",
        "nodelist": "node[01-04]",
        "mail_user": "me@lab.org",
    }


@pytest.mark.parametrize(
    "item,needle",
    [
        ("account=a\n#SBATCH --wrap=rm", "cannot go into a Slurm batch script"),
        ("account=$(id)", "cannot go into a Slurm batch script"),
        ("account=a b", "cannot go into a Slurm batch script"),
        ("account='a'", "cannot go into a Slurm batch script"),
        ("account=a;b", "cannot go into a Slurm batch script"),
        ("qos=a&b", "cannot go into a Slurm batch script"),  # & only in constraint expressions
        ("account=", "cannot go into a Slurm batch script"),
        ("Account X=1", "is not an sbatch option name"),
        ("=1", "is not an sbatch option name"),
        ("array=0-9", "array cannot be set here: the harness makes the job array"),
        ("time=10", "time cannot be set here: use --time-min"),
        ("signal=USR1@10", "signal cannot be set here"),
        ("output=/tmp/x", "output cannot be set here"),
    ],
)
def test_sbatch_options_outside_the_syntax_are_one_line_errors(item: str, needle: str) -> None:
    with pytest.raises(SlurmSyntaxError) as err:
        parse_cli_params([item])
    assert (
        needle in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("--slurm-param")
    )


def write_scenario(tmp_path: Path, execute: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\ndevice: cpu\nproblem: {batch: 1, heads: 1, head_dim: 8, seq_len: [16], mode: fwd}\n"
        f"variants: [{{name: softmax}}]\nexecute:\n{execute}"
    )
    return path


def test_the_execute_block_takes_cases_per_job_and_checked_slurm_params(tmp_path: Path) -> None:
    path = write_scenario(
        tmp_path,
        "  executor: slurm\n  partition: gpu\n  cases_per_job: 40\n"
        "  slurm_params: {account: proj, cpus_per_task: 8, exclusive: true}\n",
    )
    sc = load_scenario(str(path))
    assert sc.execute.cases_per_job == 40 and sc.execute.partition == "gpu"
    assert dict(sc.execute.slurm_params) == {"account": "proj", "cpus_per_task": "8", "exclusive": True}
    again = scenario_from_dict(json.loads(json.dumps(scenario_to_dict(sc))), str(path))  # scenario.json
    assert again.execute == sc.execute


@pytest.mark.parametrize(
    "execute,needle",
    [
        ('  partition: "gpu\\n#SBATCH --wrap=x"\n', "execute.partition: 'gpu\\n#SBATCH --wrap=x' cannot go"),
        ("  slurm_params: {account: 'a;b'}\n", "execute.slurm_params.account: 'a;b' cannot go"),
        ("  slurm_params: {array: 0-3}\n", "execute.slurm_params.array: array cannot be set here"),
        ("  slurm_params: [account]\n", "execute.slurm_params: expected a mapping of sbatch options"),
        ("  cases_per_job: 0\n", "execute.cases_per_job: expected a positive int, found 0"),
    ],
)
def test_a_bad_execute_block_names_the_file_and_key(tmp_path: Path, execute: str, needle: str) -> None:
    path = write_scenario(tmp_path, execute)
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(path))
    assert str(err.value).startswith(str(path)) and needle in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_a_constraint_expression_may_use_slurm_operators() -> None:
    assert check_param("x", "constraint", "[rack1|rack2]&gpu*2") == ("constraint", "[rack1|rack2]&gpu*2")


# ----- asking the scheduler ----------------------------------------------------------------------
def fake_tools(folder: Path, **scripts: str) -> None:
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        tool = folder / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)


def test_preflight_refuses_in_one_line_when_no_controller_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    fake_tools(
        tmp_path / "bin",
        sbatch="exit 0",
        squeue="exit 0",
        sinfo="echo 'sinfo: error: resolve_ctls_from_dns_srv: res_nsearch error' >&2\n"
        "echo 'sinfo: fatal: Could not establish a configuration source' >&2; exit 1",
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ExecutorError) as err:
        SlurmExecutor.preflight(ExecutorOptions())
    assert str(err.value) == (
        "--executor slurm: no Slurm controller answers here (`sinfo` failed: sinfo: fatal: Could not "
        "establish a configuration source); run on a cluster login node, start a local one "
        "(bench/slurm_local.sh start), or use submitit-local"
    )


def test_a_controller_that_hangs_is_no_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tools(tmp_path / "bin", sinfo="sleep 30")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    start = time.monotonic()
    assert slurm.controller_problem(timeout=0.5) == "no Slurm controller answered `sinfo` within 0.5 s"
    assert time.monotonic() - start < 10


def test_job_states_come_from_squeue_and_a_purged_job_reads_as_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tools(
        tmp_path / "bin",
        squeue='case "$*" in *" 7"*) printf "7_0|RUNNING\\n7_1|CANCELLED\\n";; '
        '*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;; esac',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert slurm.queued(["7_0", "7_1"]) == {"7_0": "RUNNING", "7_1": "CANCELLED"}
    assert slurm.queued(["8_0"]) == {}  # purged: ended
    fake_tools(tmp_path / "bin", squeue="exit 1")
    assert slurm.queued(["7_0"]) is None  # no answer: ask again later, never "ended"


def test_slurm_provenance_is_read_from_the_job_environment() -> None:
    env = {
        "SLURM_JOB_ID": "105",
        "SLURM_ARRAY_JOB_ID": "100",
        "SLURM_ARRAY_TASK_ID": "5",
        "SLURMD_NODENAME": "n3",
    }
    assert slurm.slurm_provenance(env) == {
        "slurm_job_id": "100",
        "slurm_array_task_id": "5",
        "slurm_node": "n3",
    }
    assert slurm.slurm_provenance({"SLURM_JOB_ID": "9"})["slurm_job_id"] == "9"
    assert set(slurm.slurm_provenance({}).values()) == {""}


# ----- the writer lock ---------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_a_writer_lock_whose_pid_is_not_an_int_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "writer.lock").write_text(json.dumps({"pid": "12ab", "host": os.uname().nodename}))
    with pytest.raises(RunDirError) as err, writer_lock(tmp_path, resume=True):
        pass
    assert "pid '12ab' is not a process id" in str(err.value) and "\n" not in str(err.value)


def test_a_lock_of_a_reused_pid_is_stale(tmp_path: Path) -> None:
    """The pid lives, but it is another process (its start time differs): the lock is stale."""
    me = os.getpid()
    lock = {"pid": me, "started": (process_start_time(me) or 0) + 1, "host": os.uname().nodename}
    (tmp_path / "writer.lock").write_text(json.dumps(lock))
    with writer_lock(tmp_path, resume=True):
        assert json.loads((tmp_path / "writer.lock").read_text())["started"] == process_start_time(me)
    assert not (tmp_path / "writer.lock").exists()


def test_a_dead_runs_lock_is_not_taken_over_while_a_process_of_it_lives(tmp_path: Path) -> None:
    """A job or worker of the dead run holds locks/run.flock: --resume waits for it."""
    lock = {"pid": dead_pid(), "host": os.uname().nodename, "since": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "writer.lock").write_text(json.dumps(lock))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from harness.execute.rundir import hold_run; "
         f"hold_run({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError) as err, writer_lock(tmp_path, resume=True):
            pass
        assert "processes of it (jobs or workers) still write here" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with writer_lock(tmp_path, resume=True):  # the holder is gone: taken over
        pass
