"""The generic plugin registry: lazy entries, did-you-mean, kind checks, entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.plugins.registry import PluginLoadError, Registry, UnknownPluginError, load_target


class Base:
    """A plugin kind for these tests."""


class Good(Base):
    pass


class NotAPlugin:
    pass


def make() -> Registry[type[Base]]:
    return Registry("widget", group="attnbench.test-widgets", base=Base)


def test_lazy_entry_is_imported_on_first_get_and_checked() -> None:
    reg = make()
    reg.register("good", "tests.test_registry:Good")
    assert reg.names() == ["good"] and "good" in reg
    assert reg.get("good") is Good
    reg.register("good", "tests.test_registry:Good")  # the same entry again is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("good", "tests.test_registry:NotAPlugin")


def test_unknown_name_suggests_and_lists_known() -> None:
    reg = make()
    reg.register("gaussian", Good)
    with pytest.raises(UnknownPluginError) as err:
        reg.get("gausian")
    assert str(err.value) == "unknown widget 'gausian' (did you mean 'gaussian'?); known: gaussian"


@pytest.mark.parametrize(
    "target,needle",
    [
        ("tests.test_registry:NotAPlugin", "is not a valid widget: expected a tests.test_registry.Base"),
        ("tests.no_such_module:Good", "cannot be imported"),
        ("tests.test_registry:Missing", "cannot be imported"),
        ("no-colon", "cannot be imported"),
    ],
)
def test_bad_entries_fail_readably(target: str, needle: str) -> None:
    reg = make()
    reg.register("bad", target)
    with pytest.raises(PluginLoadError, match=needle):
        reg.get("bad")


def test_load_target_needs_module_and_attribute() -> None:
    assert load_target("tests.test_registry:Good") is Good
    with pytest.raises(PluginLoadError, match="module:attr"):
        load_target("tests.test_registry")


def test_entry_points_of_installed_packages_are_found(tmp_path: Path) -> None:
    """A package on sys.path with an entry point in the group registers without editing the harness."""
    (tmp_path / "widget_pkg.py").write_text(
        "from tests.test_registry import Base\n\nclass Fancy(Base):\n    pass\n"
    )
    dist = tmp_path / "widget_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: widget-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[attnbench.test-widgets]\nfancy = widget_pkg:Fancy\n")
    code = textwrap.dedent(
        """
        from tests.test_registry import make
        reg = make()
        print(reg.names(), reg.get("fancy").__name__)
        """
    )
    env_path = f"{tmp_path}{':' + sys.path[0] if sys.path[0] else ''}"
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['fancy'] Fancy"
