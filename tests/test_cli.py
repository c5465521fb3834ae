"""The command line explains itself: `--help` and `help` list every subcommand."""

from __future__ import annotations

import pytest

from harness.cli import COMMANDS, main


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["help"]])
def test_help_lists_every_subcommand(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert f"  {name}" in out and command.summary in out


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "help"])
def test_help_of_each_command_prints_its_options(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse ends `--help` with SystemExit(0)
        main(["help", name])
    assert exit_info.value.code == 0
    assert "usage: run-bench" in capsys.readouterr().out


def test_help_of_an_unknown_command_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "compair"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compare" in err[0]


def test_a_mistyped_command_gets_a_did_you_mean_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compair", "a", "b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: unknown command 'compair' (did you mean 'compare'?); `run-bench --help` lists the "
        "commands, and a scenario is a YAML file or a shipped scenario's name"
    ]


def test_a_scenario_close_to_a_command_name_is_still_a_scenario(tmp_path, monkeypatch) -> None:
    from harness.cli import mistyped_command

    assert mistyped_command("histroy") is not None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "histroy").write_text("name: histroy\n")  # a real scenario file by that name
    assert mistyped_command("histroy") is None
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "reprot.yaml").write_text("name: reprot\n")
    assert mistyped_command("reprot") is not None
    monkeypatch.setattr("harness.config.shipped.shipped_dir", lambda: shipped)
    assert mistyped_command("reprot") is None  # a shipped scenario's name, from any directory
    assert mistyped_command("compare.yaml") is None  # a missing file: run says "file not found"
    assert mistyped_command("--comapre") is None  # an option: argparse's own error
