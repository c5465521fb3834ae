"""Issue 12: a wrong output is never `ok` (shape, rows, batch, dtype, device, in-place inputs),
a failing case keeps its traceback tail, and an exception whose __str__ raises does not stop
the sweep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.config.scenario import load_scenario
from harness.execute.progress import QuietReporter
from harness.execute.runner import run_scenario
from harness.measure import output_contract as oc
from harness.measure.failures import one_line, trace_tail
from harness.plugins.contract import AttentionVariant, Capabilities
from harness.plugins.variants import VARIANTS
from harness.results.record_lines import read_records


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@dataclass(frozen=True)
class FaultParams:
    fault: str = "none"


class Faulty(AttentionVariant):
    """Exact attention that breaks the output contract in the way `fault` names."""

    name = "faulty"
    Params = FaultParams
    impls = ("torch",)
    capabilities = Capabilities(exact=True)

    def forward(self, q, k, v, causal):
        fault = self.params.fault
        if fault == "scale_q":  # attends to a modified q: true error ~ large, naive check ~ 0
            q.mul_(3.0)
        if fault == "restore_q":  # modifies and restores: caught by the version counter
            q.mul_(2.0).div_(2.0)
        if fault == "unprintable":
            raise Unprintable()
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return {
            "none": out,
            "scale_q": out,
            "restore_q": out,
            "last_dim_1": out[..., :1],
            "extra_rows": torch.cat([out, out[:, :, :7]], dim=2),
            "one_batch": out[:1],
            "dtype": out.double(),
            "not_tensor": out.tolist(),
        }[fault]


@pytest.fixture
def faulty():
    VARIANTS.register("faulty", Faulty)
    yield
    VARIANTS.unregister("faulty")


FAULTS = ["none", "scale_q", "restore_q", "last_dim_1", "extra_rows", "one_batch", "dtype", "not_tensor"]


def test_every_wrong_output_is_an_error_and_the_sweep_goes_on(faulty, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: contract\ndevice: cpu\n"
        "problem: {batch: 2, heads: 2, head_dim: 8, seq_len: 32}\n"
        f"variants:\n  - {{name: faulty, params: {{fault: {FAULTS + ['unprintable']}}}}}\n"
        "accuracy: {rows: 16}\n"
        "measure: {warmup_ms: 0, min_samples: 2, rep_ms: 0, memory: false}\n"
    )
    run_scenario(
        load_scenario(str(path)),
        tmp_path / "run",
        "cpu",
        reporter=QuietReporter(),
        plots=False,
        executor="inline",
    )
    recs = {r["params"]["fault"]: r for r in read_records(tmp_path / "run" / "records.jsonl")}
    assert recs["none"]["status"] == "ok" and recs["none"]["rel_err"] < 1e-5
    for fault in FAULTS[1:]:
        assert recs[fault]["status"] == "error", (fault, recs[fault]["reason"])
        assert recs[fault].get("time_ms_median") is None, fault  # never timed: not written
    assert "modified its inputs" in recs["scale_q"]["reason"] and "(q)" in recs["scale_q"]["reason"]
    assert "modified its inputs" in recs["restore_q"]["reason"]
    assert "shape (2, 2, 32, 1), expected (2, 2, 32, 8)" in recs["last_dim_1"]["reason"]
    assert "shape (2, 2, 39, 8)" in recs["extra_rows"]["reason"]
    assert "shape (1, 2, 32, 8)" in recs["one_batch"]["reason"]
    assert "dtype torch.float64, expected torch.float32" in recs["dtype"]["reason"]
    assert "returned list" in recs["not_tensor"]["reason"]
    bad = recs["unprintable"]
    assert bad["status"] == "error" and "Unprintable" in bad["reason"]
    assert "raise Unprintable()" in bad["error_trace"]  # the variant's line, for its author
    report = (tmp_path / "run" / "report.md").read_text()
    assert "raise Unprintable()" in report  # the footnote shows the traceback tail


def test_fingerprint_sees_any_single_element_change() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(2, 3, 50, 8).to(dtype)
        before = oc.fingerprint(x)
        y = x.clone()
        assert oc.fingerprint(y).digest == before.digest
        y.view(-1)[777] = float(y.view(-1)[777]) + 1.0  # one element
        assert oc.digest(y) != before.digest
        z = x.clone()
        z.view(-1)[[3, 4]] = z.view(-1)[[4, 3]]  # a swap keeps the sum: the weights see it
        if not torch.equal(z, x):
            assert oc.digest(z) != before.digest


def test_checked_call_reports_device_and_inputs() -> None:
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(oc.ContractError, match="modified its inputs in place \\(k\\)"):
        oc.checked_call(lambda a, b, c: (b.zero_(), a.clone())[1], (q, q.clone(), q.clone()))
    assert oc.output_problems(q, (1, 2, 4, 8), torch.float32, torch.device("cuda", 0)).startswith(
        "output has device cpu"
    )


def test_one_line_and_trace_survive_a_broken_str() -> None:
    try:
        raise Unprintable()
    except Unprintable as exc:
        assert one_line(exc).startswith("Unprintable: <str() of the exception failed")
        assert "raise Unprintable()" in trace_tail(exc)
