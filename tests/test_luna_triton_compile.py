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
The launch options are the autotune candidates of attentions/luna/triton_configs.py: the test
compiles each kernel's default (first) candidate and bounds its bf16 register spills (ptxas -v);
a slow test compiles every candidate. Run `python tests/test_luna_triton_compile.py` for a table
of registers, spills and shared memory for every candidate on sm_90 and sm_80.
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
from attentions.luna.triton_configs import KERNELS, candidates  # noqa: E402

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
# ptxas spill stores per thread allowed for the default (first) candidate of each kernel in bf16:
# the worst measured, the causal backward key kernel at BLOCK_N 16 (32 B; 656 B at the first guess)
MAX_BF16_SPILL_BYTES = 32
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


def with_config(launch: Launch, config: tuple[int, int, int]) -> Launch:
    """The launch with (BLOCK_N, num_warps, num_stages) of an autotune candidate (triton_configs.py)."""
    bn, warps, stages = config
    return Launch(launch.fn, launch.grid, launch.args, {**launch.kwargs, "BLOCK_N": bn, "num_warps": warps,
                                                        "num_stages": stages})  # fmt: skip


def default_candidate(kernel: str, dtype: str) -> tuple[int, int, int]:
    """The first autotune candidate of `kernel` at SIZES: what runs where nothing is timed."""
    return candidates(kernel, SIZES["d"], SIZES["m"] * SIZES["L"], dtype)[0]


# ----- tests -------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset")
@pytest.mark.sampled(len(KERNELS))  # every kernel once in the default run, both dtypes under -m slow
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("config", TEST_CONFIGS.values(), ids=TEST_CONFIGS.keys())
def test_kernel_compiles_for_sm90(config: tuple[str, int], kernel: str) -> None:
    """The default autotune candidate: PTX and cubin for sm_90, within the per-block shared-memory
    limit, with its num_warps; in bf16, ptxas spills at most MAX_BF16_SPILL_BYTES per thread."""
    if INTERPRETED:
        return _check_in_subprocess()
    if (reason := cuda_backend_reason(TEST_ARCH)) is not None:
        pytest.skip(reason)
    cand = default_candidate(kernel, config[0])
    launch = with_config(record_launches(*config)[kernel], cand)
    compiled, log = compile_logged(launch, TEST_ARCH)
    assert f".entry {kernel}" in compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 0
    assert compiled.metadata.num_warps == cand[1]
    assert compiled.metadata.shared <= MAX_SHARED[TEST_ARCH], (
        f"{compiled.metadata.shared} bytes of shared memory"
    )
    spills = re.search(r"(\d+) bytes spill stores", log)
    assert spills is not None, f"no ptxas report in the compile log:\n{log[-2000:]}"
    if config[0] == "bf16":
        assert int(spills.group(1)) <= MAX_BF16_SPILL_BYTES, f"{kernel} {cand}: {spills.group(0)}"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_candidate_compiles(kernel: str, dtype: str) -> None:
    """Every autotune candidate at SIZES compiles for sm_90 within the shared-memory limit (a config
    over it would fail to launch on the GPU, and autotune would time nothing for it)."""
    if INTERPRETED:
        return _check_in_subprocess()
    if (reason := cuda_backend_reason(TEST_ARCH)) is not None:
        pytest.skip(reason)
    launch = record_launches(dtype, SIZES["L"])[kernel]
    for cand in candidates(kernel, SIZES["d"], SIZES["m"] * SIZES["L"], dtype):
        compiled = compile_launch(with_config(launch, cand), TEST_ARCH)
        assert compiled.metadata.shared <= MAX_SHARED[TEST_ARCH], f"{cand}: {compiled.metadata.shared} B"


@pytest.mark.parametrize("G", [1, SIZES["L"]], ids=["G=1", "G=L"])
def test_launches_recorded(G: int) -> None:
    """Every kernel is launched exactly once by forward + backward, causal and not (meta tensors)."""
    if INTERPRETED:
        return _check_in_subprocess()
    launches = record_launches("bf16", G)
    assert launches["_causal_kernel"].grid == (SIZES["B"] * SIZES["H"],)
    assert launches["_state_kernel"].grid == (SIZES["B"] * SIZES["H"], SPLITS)
    assert launches["_state_kernel"].kwargs["G"] == G


# ----- ptxas -v: registers, spills ----------------------------------------------------------------
def compile_logged(launch: Launch, arch: int) -> tuple[Any, str]:
    """compile_launch without the cache, with ptxas -v: (the CompiledKernel, ptxas's report)."""
    from triton import knobs

    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(io.StringIO()) as log:
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        compiled = compile_launch(launch, arch)
    return compiled, log.getvalue()


def ptxas_usage(launch: Launch, arch: int) -> str:
    """Compile without the cache and return 'regs / spill stores / spill loads / shared' from ptxas -v."""
    compiled, text = compile_logged(launch, arch)
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return (
        f"{regs.group(1) if regs else '?':>4} regs  spill st/ld {spills.group(1) if spills else '?':>6}/"
        f"{spills.group(2) if spills else '?':<6} shared {compiled.metadata.shared:>6} B  "
        f"warps {compiled.metadata.num_warps}"
    )


if __name__ == "__main__":  # every autotune candidate (BLOCK_N/num_warps/num_stages) at SIZES
    for arch in (90, 80):
        for dtype in DTYPES:
            for G in (SIZES["L"], 1):
                print(f"--- sm_{arch} {dtype} G={G}")
                for name, launch in record_launches(dtype, G).items():
                    for cand in candidates(name, SIZES["d"], SIZES["m"] * SIZES["L"], dtype):
                        tag = "/".join(map(str, cand))
                        print(f"  {name:<26} {tag:<8} {ptxas_usage(with_config(launch, cand), arch)}")
