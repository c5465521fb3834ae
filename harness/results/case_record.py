"""The record of a case before it runs: identity, problem and provenance (shared by every kind)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import torch

from harness.config.sweep import Case
from harness.inputs import regime_name
from harness.measure import hygiene
from harness.plugins.variants import VARIANTS
from harness.results.records import Record


def new_record(case: Case, ctx: Any, kind: str | None = None) -> Record:
    """The record of `case` before it runs: identity, problem and provenance. `ctx` is the worker's
    `harness.execute.context.CaseContext` (run id, provenance, scenario); `kind` defaults to the
    scenario's."""
    if not ctx.host:
        ctx.set_provenance(ctx.worker, ctx.env_id)
    cls = VARIANTS.get(case.variant)
    p = case.problem
    sc = ctx.scenario
    return Record(
        case_id=case.case_id,
        run_id=ctx.run_id,
        scenario=sc.name,
        scenario_version=sc.version,
        variant=case.variant,
        variant_version=cls.version,
        impl=case.impl,
        params=case.params,
        label=case.label,
        config_key=case.config_key,
        batch=p.batch,
        heads=p.heads,
        seq_len=p.seq_len,
        head_dim=p.head_dim,
        feature_dim=cls.feature_dim(p, cls.make_params(case.params)),
        dtype=p.dtype,
        device=p.device,
        causal=p.causal,
        mode=p.mode,
        input_dist=regime_name(case.inputs),  # the dist, with its regime knobs: captured[layer=3]
        input_scale=case.inputs.scale,
        input_seed=case.inputs.seed,
        kind=kind or sc.kind,
        task=dict(case.task),
        git_sha=ctx.git_sha,
        host=ctx.host,
        worker=ctx.worker,
        device_name=ctx.device_name,
        device_uuid=ctx.device_uuid,
        visible_devices=ctx.visible_devices,
        env_id=ctx.env_id,
        **getattr(ctx, "slurm", {}),  # slurm_job_id, slurm_array_task_id, slurm_node (CaseContext)
        threads=torch.get_num_threads(),
        cores=hygiene.cores(),
        started_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        repro=f"python run_bench.py {ctx.scenario_arg} --device {p.device} --case {case.case_id}",
    )
