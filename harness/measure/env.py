"""Machine and software fingerprint written to env.json beside every run's records."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

OPTIONAL_PACKAGES = (
    "performer-pytorch",
    "nystrom-attention",
    "flash-attn",
    "xformers",
    "fla-core",
    "triton",
    "numpy",
    "pandas",
)
FINGERPRINT_KEYS = ("cpu", "gpu", "gpu_driver", "cuda", "torch", "threads")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(cwd: Path | None = None) -> tuple[str, bool]:
    """(commit sha, dirty flag) of the repository holding this package; ("", False) outside git."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return "", False
    return sha, dirty


def _gpu_facts() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"gpu": None, "gpu_driver": None, "gpu_count": 0, "gpu_memory_bytes": None}
    props = torch.cuda.get_device_properties(0)
    facts: dict[str, Any] = {
        "gpu": props.name,
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_bytes": props.total_memory,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_sm_count": props.multi_processor_count,
        "gpu_driver": None,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        facts["gpu_driver"] = pynvml.nvmlSystemGetDriverVersion()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        facts["gpu_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
        facts["gpu_power_limit_w"] = pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000
    except Exception as exc:  # optional extra: ImportError, or pynvml.NVMLError (not importable without it)
        facts["gpu_driver_error"] = f"{type(exc).__name__}: {exc}"
    return facts


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in OPTIONAL_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect_env() -> dict[str, Any]:
    """Everything a reader needs to know which machine and software produced a run."""
    sha, dirty = git_state()
    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        **_gpu_facts(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "threads": torch.get_num_threads(),
        "git_sha": sha,
        "git_dirty": dirty,
        "packages": package_versions(),
    }


def fingerprint(env: dict[str, Any]) -> dict[str, Any]:
    """The part of env.json that must match for two runs' timings to be comparable."""
    return {k: env.get(k) for k in FINGERPRINT_KEYS}
