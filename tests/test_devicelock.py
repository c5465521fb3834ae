"""The per-device lock: two workers on one device never hold the timed section at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from harness.execute.devicelock import device_key, device_lock


def test_device_keys_name_the_physical_device() -> None:
    assert device_key("cpu") == "cpu"
    assert device_key("cuda", uuid="GPU-1234/ab") == "cuda-GPU-1234_ab"
    assert device_key("cuda", visible="3") == "cuda-3"


def test_holders_of_one_device_never_overlap_and_other_devices_do(tmp_path: Path) -> None:
    spans: dict[str, list[tuple[float, float]]] = {"cpu": [], "cuda-0": []}

    def hold(key: str) -> None:
        with device_lock(tmp_path, key):
            start = time.monotonic()
            time.sleep(0.2)
            spans[key].append((start, time.monotonic()))

    threads = [threading.Thread(target=hold, args=(key,)) for key in ("cpu", "cpu", "cpu", "cuda-0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = sorted(spans["cpu"])
    pairs = zip(cpu, cpu[1:], strict=False)
    assert len(cpu) == 3 and all(a_end <= b_start for (_, a_end), (b_start, _) in pairs)
    ((gpu_start, _),) = spans["cuda-0"]
    assert gpu_start < cpu[-1][0]  # another device's lock did not queue behind the three cpu holders
