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
