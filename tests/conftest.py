"""Shared test setup: markers `slow`, `gpu`, `quality` and `sampled` (declared in pyproject.toml).

`gpu` tests are skipped, with the reason, where CUDA is not available, so `pytest -m gpu` on a CPU
machine reports what it would have run instead of failing.

`@pytest.mark.sampled(N)` on a parametrized test keeps N of its cases in the default run (every
value of every axis at least once: tests/shapes.py `sample`) and marks the others `slow`, so
`pytest -m slow` runs the rest of the product. `sampled(N, per=("name", "impl"))` keeps N cases for
each value of those arguments (each impl of the contract tests keeps its own sample).

Torch runs with one intra-op thread in the test process (and, through OMP_NUM_THREADS, in the
processes tests start): the tensors here are small, and on a 2-core machine a second spinning
thread per op costs CPU time without saving wall time. Tests that check thread handling set the
count themselves.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, here and in children

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.shapes import sample  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one intra-op thread and leaves it so: variant tests run token loops and
    small blocks, thousands of tiny ops that a second spinning thread slows down 10-30x on a loaded
    machine; a test (or an in-process run) that changes the count cannot leak it to the next."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the `slow` marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[tuple[str, str], list[pytest.Item]] = {}
    for item in items:
        marker = item.get_closest_marker("sampled")
        if marker is not None and hasattr(item, "callspec"):
            per = repr([item.callspec.params[name] for name in marker.kwargs.get("per", ())])
            groups.setdefault((item.nodeid.split("[")[0], per), []).append(item)
    for group in groups.values():
        marker = group[0].get_closest_marker("sampled")
        max_cases = marker.args[0] if marker.args else marker.kwargs["max_cases"]
        per = marker.kwargs.get("per", ())
        cases = [
            (item.nodeid, {k: v for k, v in item.callspec.params.items() if k not in per}) for item in group
        ]
        kept = sample(cases, max_cases)
        for item in group:
            if item.nodeid not in kept:
                item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_cuda)
