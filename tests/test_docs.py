"""The README and docs/ stay true: every relative link resolves (files and Markdown anchors), the
scenario reference names every key the loader accepts and every shipped scenario, the README stays
short and never points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.config import blocks, regimes, scenario
from harness.inputs import SOURCES
from harness.plugins.kinds import KINDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
README_MAX_LINES = 200


def _links(page: Path) -> list[str]:
    """Relative link targets of a Markdown page, code blocks excluded."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
        elif ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_is_short_and_self_contained() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "../shared" not in text
    for page in PAGES:
        assert "../shared" not in page.read_text(encoding="utf-8"), page.name


def _scenario_keys() -> set[str]:
    keys = set(scenario.TOP_KEYS) | set(scenario.PROBLEM_AXES) | set(scenario.VARIANT_KEYS)
    keys |= set(scenario.FIT_CHECKS) | set(scenario.ACCURACY_CHECKS) | set(scenario.MEASURE_CHECKS)
    keys |= set(scenario.CHECKS_CHECKS) | set(blocks.EXECUTE_CHECKS) | set(blocks.REPORT_CHECKS)
    keys |= set(regimes.BASE_KEYS)
    for name in SOURCES.names():
        keys |= set(SOURCES.get(name).knobs)
    for name in KINDS.names():
        keys |= set(KINDS.get(name).task_options({}, "task"))
    return keys


def test_scenario_reference_names_every_key() -> None:
    text = (ROOT / "docs" / "scenarios.md").read_text(encoding="utf-8")
    missing = sorted(k for k in _scenario_keys() if f"`{k}`" not in text)
    assert not missing, f"docs/scenarios.md does not document {missing}"


def test_scenario_reference_lists_every_shipped_scenario() -> None:
    text = (ROOT / "docs" / "scenarios.md").read_text(encoding="utf-8")
    missing = sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml") if f"`{p.name}`" not in text)
    assert not missing, f"docs/scenarios.md does not list {missing}"


def test_link_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("see [x](missing.md) and [y](#nowhere), not `a[b](c)`\n\n# Here\n", encoding="utf-8")
    assert _links(page) == ["missing.md", "#nowhere"]
    assert "here" in _anchors(page) and "nowhere" not in _anchors(page)
