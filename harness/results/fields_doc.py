"""Every record field and metric in one Markdown table: `python -m harness.results.fields_doc`.

The committed copy is docs/record-fields.md (tests/test_metrics.py fails when it is stale).
Fields are described here; metrics describe themselves in the registry.
"""

from __future__ import annotations

from dataclasses import fields

import pandas as pd

from harness.plugins.kinds import KINDS
from harness.plugins.metrics import Metric, metrics_of
from harness.results.records import SCHEMA_VERSION, Record

FIELD_DOCS = {
    "case_id": "hash of the case's full configuration (variant, impl, params, problem, inputs, fit and "
    "accuracy settings), stable across runs: what --resume and compare key on",
    "run_id": "the run this record belongs to",
    "scenario": "scenario name",
    "scenario_version": "the scenario's `version:`",
    "variant": "registered variant name",
    "variant_version": "the variant class's `version` (bumped when its numbers change)",
    "impl": "the variant's implementation",
    "params": "resolved variant parameters (defaults filled in); also flat `param.<name>` columns",
    "label": "display name of the configuration in reports (variant, [impl], (swept params))",
    "config_key": "hash of the configuration and problem without seq_len (OOM skipping, plots)",
    "batch": "batch size B",
    "heads": "attention heads H",
    "seq_len": "sequence length N",
    "head_dim": "head dimension d",
    "feature_dim": "the variant's feature dimension D (features, landmarks, ...); null for exact attention",
    "dtype": "fp32 | fp16 | bf16",
    "device": "cpu | cuda",
    "causal": "causal masking",
    "mode": "fwd | bwd | fwd_bwd: the timed pass",
    "input_dist": "input regime: the source name, with its regime knobs (captured[layer=3])",
    "input_scale": "scale of q and k",
    "input_seed": "seed of the inputs",
    "exact": "the variant class has `capabilities.exact` (computes exact softmax attention): the accuracy "
    "reference and the default speed baseline; read from the class for schema-1 records",
    "kind": "the benchmark kind that measured the case (kernel, or another kind: docs/kinds.md); schema 1-3 "
    "records read with the kind that claims them",
    "task": "the kind's task options at this case's point (the `task:` block with one value per task "
    "axis); {} for kernel cases; also flat `task.<key>` columns",
    "status": "ok | skipped | oom | error | nan | timeout | leak | crashed (its worker process died)",
    "reason": "why the status is not ok (one line)",
    "error_trace": "status error: the last lines of the case's traceback, shown in the report's footnote "
    '(`--raise` re-raises the failure instead); "" otherwise',
    "mem_method": "how memory was measured (cuda_caching_allocator, torch_profiler_memory_timeline, ...)",
    "info": "variant facts (e.g. performer-pytorch's causal path, fit_reused)",
    "git_sha": "revision of the harness that ran the case",
    "host": 'host name of the worker that ran the case (socket.gethostname()); "" before schema 3',
    "worker": 'the worker that ran it: "main" (inline), "w0", "gpu1", "job-123", ...',
    "device_name": "the device measured on: the CUDA device's name, or the CPU model string",
    "device_uuid": 'the CUDA device\'s UUID (torch.cuda.get_device_properties(i).uuid); "" on CPU',
    "visible_devices": 'the worker\'s CUDA_VISIBLE_DEVICES ("" when unset)',
    "env_id": "short hash of the worker's machine and software fingerprint: the run directory's "
    "`envs/<env_id>.json` (harness.measure.env.env_id)",
    "slurm_job_id": "the Slurm job that ran it: SLURM_ARRAY_JOB_ID for an array task, else SLURM_JOB_ID "
    '("" off Slurm)',
    "slurm_array_task_id": 'its SLURM_ARRAY_TASK_ID (the job is `<slurm_job_id>_<task>`; "" off an array)',
    "slurm_node": 'the node it ran on (SLURMD_NODENAME; "" off Slurm)',
    "threads": "torch intra-op threads in force (`measure.threads`: 1 by default on CPU)",
    "cores": "os.cpu_count() of the host; a time measured with `load_before` or `load_after` above it is "
    "marked ‡ in the report",
    "started_at": "UTC start time of the case",
    "wall_s": "wall time of the whole case (inputs, fit, checks, timing, memory)",
    "repro": "a command that reruns just this case",
    "schema_version": f"record schema (this attnbench writes {SCHEMA_VERSION}, reads 1 to 4)",
}
COMMAND = "python -m harness.results.fields_doc > docs/record-fields.md"
DATAFRAME_ONLY = {
    "params_str": "`params` as `k=v,k=v` (sorted)",
    "param.<name>": "one column per variant parameter (null where a variant has no such parameter)",
    "task.<key>": "one column per task option (the kind's task point)",
    "info.<key>": "one column per key of `info`, nested mappings as `info.<key>.<sub>`, as in `export`",
}


def _kinds() -> list[str]:
    """The installed kinds, the default one first."""
    return sorted(KINDS.names(), key=lambda k: (k != "kernel", k))


def _builtin_metrics() -> list[Metric]:
    """The installed kinds' metrics, each once, the default kind's first."""
    seen: dict[str, Metric] = {}
    for kind in _kinds():
        seen.update((m.name, m) for m in metrics_of(kind) if m.name not in seen)
    return list(seen.values())


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _metric_row(m: Metric) -> dict[str, str]:
    return {
        "metric": f"`{m.name}`",
        "unit": m.unit,
        "better": {"lower": "↓ lower", "higher": "↑ higher"}.get(m.direction or "", "—"),
        "group": m.group,
        "kind": ", ".join(k for k in _kinds() if m.name in {x.name for x in metrics_of(k)}),
        "source": "derived" if m.compute is not None else m.measured_by,
        "compare gate": _cell(m.gate_rule() or "reported only"),
        "meaning": _cell(m.description),
    }


def render() -> str:
    """The Markdown of docs/record-fields.md."""
    field_rows = [
        {"field": f"`{f.name}`", "type": _cell(f"`{f.type}`"), "meaning": _cell(FIELD_DOCS[f.name])}
        for f in fields(Record)
        if f.name != "metrics"
    ]
    extra = [{"column": f"`{k}`", "meaning": _cell(v)} for k, v in DATAFRAME_ONLY.items()]
    table = {"index": False, "disable_numparse": True}
    return "\n".join(
        [
            "# Record fields and metrics",
            "",
            f"<!-- Generated by `{COMMAND}`; do not edit. -->",
            "",
            "A record is one case: one line of `records.jsonl`, one row of `records.parquet` and of",
            "`harness.results.records.to_dataframe`. All three are flat: a key or column per field and per",
            "metric, and only the metrics that were measured are written (schema 4). Metrics are declared",
            "by the kind that fills them (`harness/kinds/<kind>/metrics.py`; another package adds its own",
            "kind, or a metric for a kind, through the `attnbench.kinds` and `attnbench.metrics` entry-point",
            "groups); a derived metric is computed from the others when a record is written or a DataFrame",
            "is built. The metrics below are those of the built-in kinds; `kinds` says whose they are.",
            "",
            "## Fields",
            "",
            pd.DataFrame(field_rows).to_markdown(**table),
            "",
            "## Metrics",
            "",
            pd.DataFrame([_metric_row(m) for m in _builtin_metrics()]).to_markdown(**table),
            "",
            "## DataFrame and parquet only",
            "",
            pd.DataFrame(extra).to_markdown(**table),
            "",
        ]
    )


if __name__ == "__main__":
    print(render(), end="")
