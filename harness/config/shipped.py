"""The scenarios shipped with attnbench, found by name from any directory (`run-bench quick`).

A scenario argument that names an existing file is that file. Otherwise a bare name (`quick`,
`quick.yaml`) or a path into the shipped folder as the README writes it (`scenarios/quick.yaml`)
is looked up in the shipped scenarios folder:
    - a checkout or an editable install: `scenarios/` next to the `harness` package;
    - an installed wheel: `<sys.prefix>/share/attnbench/scenarios`, where pyproject.toml's
      `[tool.setuptools.data-files]` puts `scenarios/*.yaml`.
Anything else is a one-line error listing the shipped names.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.common.names import suggest
from harness.config.validate import Invalid

SUFFIX = ".yaml"


def shipped_dirs() -> list[Path]:
    """The folders that may hold the shipped scenarios, the checkout's first."""
    return [
        Path(__file__).resolve().parents[2] / "scenarios",
        Path(sys.prefix) / "share" / "attnbench" / "scenarios",
    ]


def shipped_dir() -> Path | None:
    """The first existing folder of `shipped_dirs()`, or None (a broken install)."""
    return next((d for d in shipped_dirs() if d.is_dir()), None)


def shipped_names() -> list[str]:
    """Names of the shipped scenarios (file names without .yaml), sorted."""
    folder = shipped_dir()
    return sorted(p.stem for p in folder.glob(f"*{SUFFIX}")) if folder else []


def resolve_scenario(arg: str) -> str:
    """The path to read for the scenario argument `arg` (see the module docstring).

    Raises `Invalid("(file)", ...)` when `arg` is neither a file nor a shipped scenario."""
    given = Path(arg)
    if given.exists():
        return arg
    folder = shipped_dir()
    if folder is not None and given.parent in (Path("."), Path("scenarios")):
        name = given.name if given.suffix else given.name + SUFFIX
        if (folder / name).is_file():
            return str(folder / name)
    names = shipped_names()
    stem = given.stem if given.suffix == SUFFIX else given.name
    hint = suggest(stem, names) if names else ""
    shipped = f"shipped scenarios: {', '.join(names)}" if names else "no shipped scenarios found"
    raise Invalid("(file)", f"file not found, and not a shipped scenario{hint}; {shipped}")
