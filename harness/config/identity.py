"""What identifies a validated scenario: a content hash, and the key paths where two differ.

`run.json` keeps the hash of the scenario a run was planned from; `--resume` with a scenario that
hashes differently is refused, naming the keys that changed, so an edited scenario is never
silently mixed into an old run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from harness.config.scenario import Scenario, scenario_to_dict

NOT_PLANNED = ("path", "execute")  # where the file lies and how groups run do not change the cases


def scenario_body(s: Scenario) -> dict[str, Any]:
    """The scenario as plain JSON data, without what does not change the planned cases."""
    body = {k: val for k, val in scenario_to_dict(s).items() if k not in NOT_PLANNED}
    return json.loads(json.dumps(body, sort_keys=True, default=str))


def body_hash(body: dict[str, Any]) -> str:
    """16 hex digits of the sha256 of `body` as canonical JSON."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_keys(old: Any, new: Any, where: str = "") -> list[str]:
    """Key paths (`problem.seq_len`, `variants[1].params.m`) where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            path = f"{where}.{key}" if where else str(key)
            out += changed_keys(old.get(key), new.get(key), path) if key in old and key in new else [path]
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            p
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for p in changed_keys(a, b, f"{where}[{i}]")
        ]
    return [] if old == new else [where or "(top level)"]
