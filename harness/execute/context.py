"""What every case of a worker shares: the run's identity, the worker's provenance, caches, locks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from harness.config.scenario import Scenario
from harness.execute.slurm import slurm_provenance
from harness.measure import env
from harness.measure.roofline import Roofline


class CaseContext:
    """Run-level facts every case needs, and the provenance of the worker running it: `worker`
    ("main", "w0", "gpu1", "job-123"), `env_id` (`measure.env.write_env`), and host and device,
    read in that process by `set_provenance` (or by the first record when nothing called it)."""

    def __init__(
        self,
        scenario: Scenario,
        run_id: str,
        git_sha: str,
        scenario_arg: str,
        device: str,
        *,
        worker: str = "main",
        env_id: str = "",
        host: str = "",
        device_name: str = "",
        device_uuid: str = "",
        visible_devices: str = "",
    ) -> None:
        self.scenario, self.run_id, self.git_sha = scenario, run_id, git_sha
        self.scenario_arg, self.device = scenario_arg, device
        self.worker, self.env_id = worker, env_id
        self.host, self.device_name, self.device_uuid = host, device_name, device_uuid
        self.visible_devices = visible_devices
        self.slurm: dict[str, str] = {}  # slurm_job_id, slurm_array_task_id, slurm_node ({} off Slurm)
        self.roofline: Roofline | None = None  # set by the runner when measure.roofline is on
        # what a kind keeps between the cases of one worker (the kernel kind: its fits, shared by
        # the fwd and fwd_bwd cases of one configuration, harness/kinds/kernel/fitting.py)
        self.kind_cache: dict[str, Any] = {}
        # held around the timed and memory passes; workers sharing a device set a device lock
        # (execute/devicelock.py) so they never time two cases at once
        self.measure_lock: Callable[[], AbstractContextManager] = contextlib.nullcontext
        self.raise_errors = False  # `--raise`: a failing case re-raises instead of being recorded

    def set_provenance(self, worker: str, env_id: str) -> None:
        """Name this worker and its environment, and read host and device from this process
        (call it in the worker, after its CUDA device is chosen)."""
        self.worker, self.env_id = worker, env_id
        facts = env.provenance(self.device)
        self.host, self.device_name = facts["host"], facts["device_name"]
        self.device_uuid, self.visible_devices = facts["device_uuid"], facts["visible_devices"]
        self.slurm = slurm_provenance()
