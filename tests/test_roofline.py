"""Roofline floors: the arithmetic, and that the measured rates are positive and plausible."""

from __future__ import annotations

import math

import pytest

from harness.measure.roofline import Roofline, measure_copy_gbps, measure_matmul_tflops


def test_floor_is_the_larger_of_the_two_bounds() -> None:
    roof = Roofline(device="cpu", copy_gbps=100.0, matmul_tflops={"bf16": 2.0})
    # 1e9 bytes at 100 GB/s = 10 ms; 1e12 FLOPs at 2 TFLOP/s = 500 ms
    assert roof.floor_ms(1e12, 1e9, "bf16") == pytest.approx(500.0)
    assert roof.floor_ms(1e9, 1e9, "bf16") == pytest.approx(10.0)
    assert roof.floor_ms(1e12, 1e9, "fp32") == pytest.approx(10.0)  # no GEMM rate for fp32: bytes only
    assert roof.floor_ms(None, None, "bf16") is None
    assert Roofline.from_dict(roof.to_dict()) == roof


def test_measured_rates_are_positive_and_plausible() -> None:
    gbps = measure_copy_gbps("cpu")
    tflops = measure_matmul_tflops("cpu", "fp32")
    assert math.isfinite(gbps) and 0.1 < gbps < 10_000
    assert math.isfinite(tflops) and 1e-4 < tflops < 1_000
