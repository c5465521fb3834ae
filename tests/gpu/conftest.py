"""tests/gpu: every test here is marked `gpu` (skipped with the reason without CUDA, tests/conftest.py)
and runs with torch.empty* NaN-filled for calls from `attentions.` modules (nanfill.py), and with
the LUNA kernels' autotuning off (their first candidate: one compile per kernel and key instead of
one per candidate; test_gpu_luna_triton.py::test_autotune_picked_a_candidate turns it on)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gpu.nanfill import nan_filled_empty


@pytest.fixture(autouse=True)
def first_candidate_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNBENCH_LUNA_AUTOTUNE", "0")


@pytest.fixture(autouse=True)
def nan_filled_allocations() -> Iterator[list[str]]:
    """Uninitialised memory read by attentions code shows up as NaN (the list: filled allocations)."""
    with nan_filled_empty() as log:
        yield log
