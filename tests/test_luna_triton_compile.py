"""The LUNA Triton kernels compile for a real NVIDIA GPU (sm_90), ahead of time, on a machine without one.

The interpreter tests (test_luna_triton.py) cannot see errors that only show up in Triton's GPU
pipeline (tl.dot layouts and dtypes, constexpr misuse, shared-memory use, ptxas). Here each kernel
is compiled down to PTX and, with the ptxas that ships in Triton's CUDA backend, to a cubin.

Arguments are the real ones: `luna_forward` / `luna_backward` run on "meta" tensors (no memory,
no device) with the kernels swapped for recorders, so every launch is captured with its exact
arguments and num_warps. Triton's own JIT binder then specializes them as a launch would (integer
1 becomes a constexpr, multiples of 16 get divisibility hints, pointers are assumed 16-aligned),
and `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` runs the whole pipeline.

Kernels must be JIT functions for that, so if this session imported them under TRITON_INTERPRET=1
the tests report the outcome of this file run once in a subprocess without it.
Run `python tests/test_luna_triton_compile.py` for a table of registers, spills and shared memory
for every configuration on sm_90 and sm_80.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

triton = pytest.importorskip("triton")
from attentions.luna import triton_launch as tk  # noqa: E402  (after the importorskip)

KERNELS = (
    "_state_kernel",
    "_query_kernel",
    "_causal_kernel",
    "_bwd_query_kernel",
    "_bwd_key_kernel",
    "_causal_bwd_query_kernel",
    "_causal_bwd_key_kernel",
)
# Realistic sizes: m=8, L=8 (D=64), hidden=64, head_dim=64, block_n=64; N=4096 and 16 programs per
# head in the non-causal passes (blocks_per_split=4, as the wrappers pick on a 132-SM H100 at B*H=32).
SIZES = dict(B=4, H=8, N=4096, d=64, m=8, L=8, hidden=64)
BLOCK_N, SPLITS = 64, 16
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Largest dynamic shared memory per block (the driver's opt-in limit that Triton checks at load time).
MAX_SHARED = {90: 232448, 80: 166912}
# Compiled in the test (cold, 2 CPU cores: ~10 s bf16, ~25 s fp32, whose ieee dots take the slow FMA
# path); G=1 and sm_80 are covered by the script mode only.
TEST_CONFIGS = {"bf16-G=L": ("bf16", SIZES["L"]), "fp32-G=L": ("fp32", SIZES["L"])}
TEST_ARCH = 90
SUBPROCESS_TIMEOUT_S = 280  # under pytest-timeout's 300 s for the test that starts it

INTERPRETED = type(tk._state_kernel).__name__ == "InterpretedFunction"


@dataclass
class Launch:
    """One recorded kernel launch: the JIT function, its grid and its arguments."""

    fn: Any
    grid: tuple
    args: tuple
    kwargs: dict


class _Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` appends a Launch instead of running."""

    def __init__(self, fn: Any, launches: list[Launch]) -> None:
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid: tuple):
        return lambda *args, **kwargs: self.launches.append(Launch(self.fn, grid, args, kwargs))


def cuda_backend_reason(arch: int) -> str | None:
    """Why the CUDA backend cannot compile for sm_`arch` here, or None."""
    from triton.backends import backends

    if "nvidia" not in backends:
        return "installed triton has no CUDA (nvidia) backend"
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        get_ptxas(arch).path  # noqa: B018  (resolving the tool raises if ptxas is missing)
    except RuntimeError as e:
        return f"triton's CUDA backend has no usable ptxas for sm_{arch}: {e}"
    return None


@functools.cache
def record_launches(dtype: str, G: int) -> dict[str, Launch]:
    """Launches of luna_forward + luna_backward (causal and not, nonneg=True) on meta tensors, by kernel.

    q, k, v: (B, H, N, d) in `dtype`; weights W (m, d), b (m,), w1, b1 (G, hidden), w2 (L, hidden), b2 (L,).
    """
    s, dt = SIZES, DTYPES[dtype]

    def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(*shape, device="meta", dtype=dtype)

    q, k, v = (meta(s["B"], s["H"], s["N"], s["d"], dtype=dt) for _ in range(3))
    m, L, hidden = s["m"], s["L"], s["hidden"]
    weights = (meta(m, s["d"]), meta(m), meta(G, hidden), meta(G, hidden), meta(L, hidden), meta(L))
    launches: list[Launch] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tk, "is_interpreted", lambda: True)  # lets _config accept non-CUDA (meta) tensors
        for name in KERNELS:
            mp.setattr(tk, name, _Recorder(getattr(tk, name), launches))
        for causal in (False, True):
            out, S, z = tk.luna_forward(q, k, v, weights, causal, True, 1e-6, BLOCK_N, SPLITS)
            tk.luna_backward(out, q, k, v, S, z, weights, causal, True, 1e-6, BLOCK_N, SPLITS)
    by_name = {launch.fn.__name__: launch for launch in launches}
    assert sorted(by_name) == sorted(KERNELS) and len(launches) == len(KERNELS)
    return by_name


def compile_launch(launch: Launch, arch: int):
    """triton.compile the kernel of `launch` for sm_`arch`, specialized like a launch with its arguments.

    Tensors become MockTensors (dtype only, 16-aligned pointer). Returns the CompiledKernel (asm
    "ttgir", "ptx", "cubin", ...; metadata.shared in bytes); compiler errors propagate.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import MockTensor, create_function_from_signature

    def mock(x: Any) -> Any:
        return MockTensor(x.dtype) if isinstance(x, torch.Tensor) else x

    fn, target = launch.fn, GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = {key: mock(val) for key, val in launch.kwargs.items()}
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, opts = binder(*map(mock, launch.args), **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, opts)
    return triton.compile(
        ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
    )


# ----- when this session interprets the kernels: run this file without TRITON_INTERPRET ---------
@functools.cache
def compiled_run() -> dict[str, str]:
    """Run this file in a subprocess without TRITON_INTERPRET: {test name: "" if passed, else why}."""
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "report.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            __file__,
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={xml_path}",
        ]
        env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
        )
        if not xml_path.exists():
            raise RuntimeError(
                f"compile subprocess wrote no report:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
            )
        outcomes = {}
        for case in ET.parse(xml_path).iter("testcase"):
            bad = [el for el in case if el.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name")] = (
                "" if not bad else f"{bad[0].tag}: {bad[0].get('message')}\n{bad[0].text}"
            )
        return outcomes


def _check_in_subprocess() -> None:
    name = os.environ["PYTEST_CURRENT_TEST"].split("::")[-1].rsplit(" ", 1)[0]
    outcomes = compiled_run()
    assert name in outcomes, f"{name} did not run in the compile subprocess"
    assert outcomes[name] == "", f"without TRITON_INTERPRET: {outcomes[name]}"


# ----- tests -------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset")
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("config", TEST_CONFIGS.values(), ids=TEST_CONFIGS.keys())
def test_kernel_compiles_for_sm90(config: tuple[str, int], kernel: str) -> None:
    """PTX and cubin for sm_90, within the per-block shared-memory limit, with the launch's num_warps."""
    if INTERPRETED:
        return _check_in_subprocess()
    if (reason := cuda_backend_reason(TEST_ARCH)) is not None:
        pytest.skip(reason)
    launch = record_launches(*config)[kernel]
    compiled = compile_launch(launch, TEST_ARCH)
    assert f".entry {kernel}" in compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 0
    assert compiled.metadata.num_warps == launch.kwargs.get("num_warps", 4)
    assert compiled.metadata.shared <= MAX_SHARED[TEST_ARCH], (
        f"{compiled.metadata.shared} bytes of shared memory"
    )


@pytest.mark.parametrize("G", [1, SIZES["L"]], ids=["G=1", "G=L"])
def test_launches_recorded(G: int) -> None:
    """Every kernel is launched exactly once by forward + backward, causal and not (meta tensors)."""
    if INTERPRETED:
        return _check_in_subprocess()
    launches = record_launches("bf16", G)
    assert launches["_causal_kernel"].grid == (SIZES["B"] * SIZES["H"],)
    assert launches["_state_kernel"].grid == (SIZES["B"] * SIZES["H"], SPLITS)
    assert launches["_state_kernel"].kwargs["G"] == G


# ----- script mode: the resource table for every configuration ----------------------------------
def ptxas_usage(launch: Launch, arch: int) -> str:
    """Compile without the cache and return 'regs / spill stores / spill loads / shared' from ptxas -v."""
    from triton import knobs

    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(io.StringIO()) as log:
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        compiled = compile_launch(launch, arch)
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return (
        f"{regs.group(1) if regs else '?':>4} regs  spill st/ld {spills.group(1) if spills else '?':>6}/"
        f"{spills.group(2) if spills else '?':<6} shared {compiled.metadata.shared:>6} B  "
        f"warps {compiled.metadata.num_warps}"
    )


if __name__ == "__main__":
    for arch in (90, 80):
        for dtype in DTYPES:
            for G in (SIZES["L"], 1):
                print(f"--- sm_{arch} {dtype} G={G}")
                for name, launch in record_launches(dtype, G).items():
                    print(f"  {name:<26} {ptxas_usage(launch, arch)}")
