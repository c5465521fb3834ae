"""Machine and software fingerprint of a worker, and the provenance every record carries.

`collect_env` describes the process it runs in (its host, its current CUDA device, its software);
`env_id` is a short hash of the keys that identify that machine and software stack, and
`write_env` stores the fingerprint once per id as `envs/<env_id>.json` in the run directory, so a
run resumed elsewhere, or spread over several workers, keeps one description per environment.
`device_identity` names the device a worker measures on (records carry it per case).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.common.files import ensure_dir, write_atomic

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
# what identifies a machine and software stack (env_id hashes these; never volatile values like time)
ENV_ID_KEYS = (
    "hostname", "cpu", "cpu_count", "gpu", "gpu_uuid", "gpu_driver", "cuda", "torch", "python",
    "platform", "threads", "git_sha", "git_dirty", "packages",
)  # fmt: skip


def cpu_name() -> str:
    """The CPU model string (/proc/cpuinfo's `model name`, else what `platform` knows)."""
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


def _uuid(props: Any) -> str:
    """`str(props.uuid)` of CUDA device properties; "" where this torch build has none."""
    uuid = getattr(props, "uuid", None)
    return str(uuid) if uuid is not None else ""


def _gpu_facts() -> dict[str, Any]:
    """Facts of the current CUDA device (the one this worker measures on), not always GPU 0."""
    if not torch.cuda.is_available():
        return {"gpu": None, "gpu_driver": None, "gpu_count": 0, "gpu_memory_bytes": None, "gpu_uuid": None}
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    facts: dict[str, Any] = {
        "gpu": props.name,
        "gpu_index": index,
        "gpu_uuid": _uuid(props) or None,
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
        # NVML numbers every GPU of the host, torch only the visible ones: find it by its UUID
        uuid = facts["gpu_uuid"]
        handle = (
            pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            if uuid
            else pynvml.nvmlDeviceGetHandleByIndex(index)
        )
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
    """Everything a reader needs to know which machine and software produced a run: this process's
    host, its current CUDA device (when CUDA is available) and its software."""
    sha, dirty = git_state()
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        **_gpu_facts(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "visible_devices": visible_devices(),
        "threads": torch.get_num_threads(),
        "git_sha": sha,
        "git_dirty": dirty,
        "packages": package_versions(),
    }


def fingerprint(env: dict[str, Any]) -> dict[str, Any]:
    """The part of env.json that must match for two runs' timings to be comparable."""
    return {k: env.get(k) for k in FINGERPRINT_KEYS}


def env_id(env: dict[str, Any]) -> str:
    """A short content hash of the keys of `env` that identify a machine and software stack
    (ENV_ID_KEYS): equal for two workers on the same host, device and software, whatever the time."""
    key = {k: env.get(k) for k in ENV_ID_KEYS}
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_env(run_dir: Path, env: dict[str, Any]) -> str:
    """Store `env` as `run_dir/envs/<env_id>.json` unless that file exists (never overwritten);
    returns the id. Written to a temporary name and renamed, so concurrent workers never see half."""
    ident = env_id(env)
    folder = Path(run_dir) / "envs"
    path = folder / f"{ident}.json"
    if path.exists():
        return ident
    ensure_dir(folder)
    if not path.exists():  # another worker may write it meanwhile: the same content, renamed whole
        write_atomic(path, json.dumps({**env, "env_id": ident}, indent=2, default=str) + "\n")
    return ident


def visible_devices() -> str:
    """This process's CUDA_VISIBLE_DEVICES ("" when unset)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def device_identity(device: str) -> dict[str, str]:
    """{"name", "uuid"} of the device cases run on: for cuda (or "cuda:i") the worker's current
    CUDA device (index i when given) by name and UUID ("" where torch has none); for cpu the CPU
    model string and uuid ""."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(
            dev.index if dev.index is not None else torch.cuda.current_device()
        )
        return {"name": props.name, "uuid": _uuid(props)}
    return {"name": cpu_name(), "uuid": ""}


def provenance(device: str) -> dict[str, str]:
    """The per-record provenance of this process: host, device_name, device_uuid, visible_devices."""
    ident = device_identity(device)
    return {
        "host": socket.gethostname(),
        "device_name": ident["name"],
        "device_uuid": ident["uuid"],
        "visible_devices": visible_devices(),
    }
