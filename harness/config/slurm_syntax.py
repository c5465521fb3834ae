"""Slurm's syntax for what reaches a batch script: sbatch option names and values.

Used by the scenario's `execute:` block (partition, slurm_params), the command line (`--partition`,
`--slurm-param`) and the `slurm` executor (harness/execute/slurm.py, harness/execute/cluster.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# sbatch option names and values that reach `#SBATCH --key=value` lines of the batch script.
# submitit quotes values with shlex, but sbatch parses those lines itself: a newline would start a
# new line of the script, a quote or `$` would change what sbatch reads. Values keep to the
# characters of Slurm's own syntax for names, lists, sizes, times, GRES and node ranges.
_KEY = re.compile(r"[a-z][a-z0-9_-]*\Z")
_VALUE = re.compile(r"[A-Za-z0-9_.,:=@%+/\[\]-]+\Z")
# constraint expressions (sbatch --constraint / --prefer / --cluster-constraint) also use & | * !
# and parentheses: `a100&ib`, `[rack1|rack2]`, `gpu*2`
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.,:=@%+/\[\]&|*!()-]+\Z")
_CONSTRAINT_KEYS = ("constraint", "prefer", "cluster_constraint")
# options the harness itself sets for submitit's protocol (job arrays, log files, the checkpoint
# signal), or sets from its own flags
_OWNED = {
    "array": "the harness makes the job array",
    "output": "submitit names the log files",
    "error": "submitit names the log files",
    "open_mode": "submitit appends to the log files",
    "signal": "submitit's checkpoint signal requeues a job before its time limit",
    "wrap": "submitit writes the batch script",
    "time": "use --time-min (or execute: time_min)",
    "partition": "use --partition (or execute: partition)",
}


class SlurmSyntaxError(ValueError):
    """An option that cannot go into a batch script; `str(err)` is one line (exit 2)."""


def check_value(where: str, value: object, key: str = "") -> str:
    """`value` as a string that sbatch reads as written (no newline, quote, `$`, `;`, space...)."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    pattern = _CONSTRAINT if key in _CONSTRAINT_KEYS else _VALUE
    if isinstance(value, (dict, list, tuple)) or value is None or not pattern.match(text):
        allowed = "letters, digits and _ . , : = @ % + / [ ] -"
        if key in _CONSTRAINT_KEYS:
            allowed += " & | * ! ( )"
        raise SlurmSyntaxError(
            f"{where}: {text[:60]!r} cannot go into a Slurm batch script; expected {allowed} "
            "(no spaces, quotes, newlines or shell characters)"
        )
    return text


def check_param(where: str, key: object, value: object) -> tuple[str, str | bool]:
    """One sbatch option (`account`, `cpus-per-task`, ...) -> (name with underscores, value).
    `True` is a flag without a value (`exclusive: true` -> `#SBATCH --exclusive`)."""
    name = str(key).strip().replace("-", "_").lower() if isinstance(key, str) else ""
    if not _KEY.match(name):
        raise SlurmSyntaxError(f"{where}: {str(key)[:60]!r} is not an sbatch option name (like account, qos)")
    if name in _OWNED:
        raise SlurmSyntaxError(f"{where}: {name} cannot be set here: {_OWNED[name]}")
    if value is True:
        return name, True
    return name, check_value(where, value, name)


def parse_cli_params(items: Sequence[str]) -> dict[str, str | bool]:
    """`--slurm-param KEY=VALUE` (repeatable; `--slurm-param exclusive` is a flag)."""
    params: dict[str, str | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        where = f"--slurm-param {item[:60]!r}"
        name, checked = check_param(where, key, value if sep else True)
        params[name] = checked
    return params
