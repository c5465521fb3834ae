"""docs/variants.md's "Adding a variant" example is a working variant: built, registered, contract-checked.

The two code blocks starting `# my_linear/naive.py` and `# my_linear/variant.py` are written into
a package in tmp_path, registered by name as the README says, and every conformance check that
applies to a non-causal variant runs on it (harness/plugins/conformance.py, as
tests/test_contract.py runs them on the built-ins); a causal case is refused with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.plugins import conformance as cf
from harness.plugins.contract import AttentionVariant
from harness.plugins.variants import VARIANTS

README = Path(__file__).resolve().parents[1] / "docs" / "variants.md"
NAME, FILES = "my_linear", ("naive.py", "variant.py")
BLOCK = re.compile(r"```python\n# (my_linear/\w+\.py)\n(.*?)```", re.DOTALL)


def readme_files() -> dict[str, str]:
    """{"my_linear/naive.py": source, ...} from the README's code blocks."""
    return {path: body for path, body in BLOCK.findall(README.read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type[AttentionVariant]]:
    files = readme_files()
    assert sorted(files) == [f"{NAME}/{f}" for f in FILES], sorted(files)
    root = tmp_path_factory.mktemp("site")
    (root / NAME).mkdir()
    (root / NAME / "__init__.py").write_text("")
    for path, body in files.items():
        (root / path).write_text(body)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        VARIANTS.register(NAME, f"{NAME}.variant:MyLinearAttention")
        try:
            yield VARIANTS.get(NAME)
        finally:
            VARIANTS.unregister(NAME)


def test_example_description_and_cost_model(example: type[AttentionVariant]) -> None:
    cf.check_description(example, NAME)
    cf.check_cost_model(example, "torch", causal=False)


@pytest.mark.parametrize("n,d", [(63, 32), (63, 128), (1000, 48)])
def test_example_matches_its_reference(example: type[AttentionVariant], n: int, d: int) -> None:
    cf.check_matches_reference(example, "torch", cf.problem(n, d))


def test_example_numerics_and_isolation(example: type[AttentionVariant]) -> None:
    cf.check_low_precision(example, "torch", "bf16", causal=False)
    cf.check_batch_independence(example, "torch", causal=False)
    cf.check_deterministic_construction(example, "torch", seed=0)
    cf.check_masking(example, "torch", causal=False)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_example_flop_model(example: type[AttentionVariant], mode: str) -> None:
    cf.check_flop_model(example, "torch", 333, 64, causal=False, mode=mode)


def test_example_refuses_causal_with_a_reason(example: type[AttentionVariant]) -> None:
    cf.check_readable_refusal(example, "torch", cf.problem(63, 32, causal=True))
    with pytest.raises(cf.NotApplicable, match=NAME):
        cf.check_causality(example, "torch")
