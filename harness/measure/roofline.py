"""The device's attainable rates, measured once per run: copy bandwidth and matmul rate per dtype.

A case's floor is the time it could not beat on this device even with a perfect kernel:

    floor_ms = max(bytes_moved / copy_bandwidth, flops / matmul_rate[dtype]) * 1e3

from the variant's own cost model (`flops`, `bytes_moved`). `time_over_floor` = measured
median / floor says how far an implementation is from its roofline (1.0 = at the floor).
Both rates are measured with the harness's own timer (same warm-up, L2 flush and median):
    copy:   `dst.copy_(src)` of COPY_BYTES (CUDA) or COPY_BYTES_CPU; bytes = 2 x size (read+write)
    matmul: an (n x n) @ (n x n) product in the dtype, 2 n^3 FLOPs, n = MATMUL_N (CUDA) or
            MATMUL_N_CPU; this is the rate of a large dense GEMM, an upper bound for attention.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from harness.measure.specs import MeasureSpec
from harness.measure.timing import time_step
from harness.plugins.contract import DTYPES

COPY_BYTES = 1 << 30  # 1 GiB on CUDA: far beyond any L2
COPY_BYTES_CPU = 1 << 28  # 256 MiB on CPU: beyond the last-level cache
MATMUL_N = 8192
MATMUL_N_CPU = 1024
ROOFLINE_SPEC = MeasureSpec(warmup_ms=50.0, min_samples=10, max_samples=100, rep_ms=300.0, flush_l2=True)


@dataclass(frozen=True)
class Roofline:
    """Measured rates of one device: GB/s of a device-memory copy, TFLOP/s of a GEMM per dtype."""

    device: str
    copy_gbps: float
    matmul_tflops: dict[str, float]

    def floor_ms(self, flops: float | None, bytes_moved: float | None, dtype: str) -> float | None:
        """max(bytes / bandwidth, flops / rate) in ms; None when neither cost is known."""
        terms = []
        if bytes_moved:
            terms.append(bytes_moved / (self.copy_gbps * 1e9))
        if flops and dtype in self.matmul_tflops:
            terms.append(flops / (self.matmul_tflops[dtype] * 1e12))
        return max(terms) * 1e3 if terms else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Roofline:
        return cls(str(data["device"]), float(data["copy_gbps"]), dict(data["matmul_tflops"]))


def measure_copy_gbps(device: str) -> float:
    """Bandwidth of `dst.copy_(src)` on `device` in GB/s (read + write bytes per second)."""
    size = COPY_BYTES if torch.device(device).type == "cuda" else COPY_BYTES_CPU
    src = torch.empty(size // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    stats = time_step(lambda: dst.copy_(src), ROOFLINE_SPEC, device)
    return 2 * size / (stats.median_ms * 1e-3) / 1e9


def measure_matmul_tflops(device: str, dtype: str) -> float:
    """Rate of a square GEMM in `dtype` on `device`, TFLOP/s."""
    n = MATMUL_N if torch.device(device).type == "cuda" else MATMUL_N_CPU
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device).to(DTYPES[dtype])
    b = torch.randn(n, n, generator=gen, device=device).to(DTYPES[dtype])
    out = torch.empty(n, n, dtype=DTYPES[dtype], device=device)
    stats = time_step(lambda: torch.mm(a, b, out=out), ROOFLINE_SPEC, device)
    return 2 * n**3 / (stats.median_ms * 1e-3) / 1e12


def measure_roofline(device: str, dtypes: list[str]) -> Roofline:
    """Copy bandwidth and the GEMM rate of each dtype in `dtypes`, on `device`."""
    rates = {dtype: measure_matmul_tflops(device, dtype) for dtype in sorted(set(dtypes))}
    return Roofline(device=device, copy_gbps=measure_copy_gbps(device), matmul_tflops=rates)
