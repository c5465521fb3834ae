"""Shared test setup: markers `slow`, `gpu` and `quality` (declared in pyproject.toml).

`gpu` tests are skipped, with the reason, where CUDA is not available, so `pytest -m gpu` on a CPU
machine reports what it would have run instead of failing.
"""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_cuda)
