"""Input sources as plugins: a source planted from this module (one class, registered by name) is
validated by the scenario loader, generates inputs and runs through the whole pipeline; a source
that fixes problem axes rejects scenarios that contradict them; padding masks reach the variant."""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml

from harness.common.checks import non_negative, positive_int
from harness.config.scenario import ScenarioError, load_scenario, scenario_to_dict
from harness.config.sweep import expand
from harness.execute.progress import QuietReporter
from harness.execute.runner import run_scenario
from harness.inputs import (
    SOURCES,
    InputBatch,
    InputSource,
    InputSpec,
    Knob,
    calibration_batches,
    make_inputs,
    softmax_row_entropy,
)
from harness.plugins import registry as registry_mod
from harness.plugins.contract import AttentionVariant, Capabilities, FitSpec, Problem
from harness.plugins.registry import Registry
from harness.plugins.variants import VARIANTS
from harness.results.record_lines import read_records

Shape = tuple[int, int, int, int]


def _gen(device: str, seed: int, split: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed + (500 if split == "calib" else 0))


class ConstantKeys(InputSource):
    """Every key is one shared vector per (batch, head) plus `jitter` noise: with jitter 0 the
    attention is exactly uniform whatever the queries. q, k, v: (B, H, N, d)."""

    name: ClassVar[str] = "constant-keys"
    description: ClassVar[str] = "all keys equal (plus jitter): uniform attention"
    knobs: ClassVar[dict[str, Knob]] = {"jitter": Knob(0.0, non_negative, "noise on the shared key")}

    def make(
        self, options: Mapping[str, Any], shape: Shape, causal: bool, split: str, seed: int, device: str
    ) -> InputBatch:
        gen = _gen(device, seed, split)
        B, H, N, d = shape
        shared = torch.randn((B, H, 1, d), generator=gen, device=device)
        k = shared.expand(shape) + options["jitter"] * torch.randn(shape, generator=gen, device=device)
        q, v = (torch.randn(shape, generator=gen, device=device) for _ in range(2))
        return InputBatch(q, k.contiguous(), v)


class Captured(InputSource):
    """Stands in for attention captured from a model: 2 heads of dim 8, sentences of 16 or 32
    tokens, each batch row a sentence of random length >= min_len, right-padded (mask (B, N))."""

    name: ClassVar[str] = "recorded"  # not "captured": a built-in source
    pads: ClassVar[bool] = True
    knobs: ClassVar[dict[str, Knob]] = {"min_len": Knob(4, positive_int, "shortest sentence")}

    def fixed_axes(self, options: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
        return {"heads": (2,), "head_dim": (8,), "seq_len": (16, 32)}

    def make(
        self, options: Mapping[str, Any], shape: Shape, causal: bool, split: str, seed: int, device: str
    ) -> InputBatch:
        gen = _gen(device, seed, split)
        B, H, N, d = shape
        lengths = torch.randint(min(options["min_len"], N), N + 1, (B,), generator=gen, device=device)
        mask = torch.arange(N, device=device)[None, :] < lengths[:, None]  # (B, N), True = real
        q, k, v = (
            torch.randn(shape, generator=gen, device=device) * mask[:, None, :, None] for _ in range(3)
        )
        return InputBatch(q, k, v, mask)


class BadAxis(Captured):
    name: ClassVar[str] = "bad-axis"

    def fixed_axes(self, options: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
        return {"dtype": ("fp32",)}


class WrongShape(ConstantKeys):
    name: ClassVar[str] = "wrong-shape"

    def make(self, *args: Any) -> InputBatch:
        batch = super().make(*args)
        return InputBatch(batch.q[:, :, :-1], batch.k, batch.v)


class NotASource:
    """Registered by mistake: the registry must refuse it."""


class MaskAware(AttentionVariant):
    """Exact non-causal attention that honours a key padding mask (B, N) and records what it got."""

    name = "mask_aware"
    impls = ("torch",)
    capabilities = Capabilities(exact=True, causal=False, masking=True)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.seen = None if key_padding_mask is None else tuple(key_padding_mask.shape)
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def info(self) -> dict[str, Any]:
        return {"mask_seen": list(self.seen) if self.seen else None}


PLANTED = {
    "constant-keys": ConstantKeys,
    "recorded": Captured,
    "bad-axis": BadAxis,
    "wrong-shape": WrongShape,
    "not-a-source": f"{__name__}:NotASource",
}


@pytest.fixture(autouse=True)
def planted():
    for name, target in PLANTED.items():
        SOURCES.register(name, target)
    VARIANTS.register("mask_aware", MaskAware)
    yield
    for name in PLANTED:
        SOURCES.unregister(name)
    VARIANTS.unregister("mask_aware")


def scenario(
    tmp_path: Path, inputs: str, problem: str = "batch: 2, heads: 2, head_dim: 8, seq_len: 16"
) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: planted\ndevice: cpu\nproblem: {{{problem}}}\ninputs: {inputs}\n"
        "variants: [{name: softmax}]\n"
        "measure: {warmup_ms: 0, min_samples: 2, rep_ms: 0, memory: false, timeout_s: 60}\n"
    )
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(path))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


# ----- a new source is one class -------------------------------------------------------------
def test_planted_source_runs_a_case_end_to_end(tmp_path: Path) -> None:
    s = load_scenario(str(scenario(tmp_path, "{dist: constant-keys, jitter: 0.0, seed: 3}")))
    assert s.inputs == (InputSpec("constant-keys", 1.0, 3, (("jitter", 0.0),)),)
    problem = Problem(2, 2, 16, 8)
    batch = make_inputs(problem, s.inputs[0])
    assert torch.equal(batch.k, batch.k[:, :, :1].expand_as(batch.k))  # every key the same
    assert softmax_row_entropy(batch.q, batch.k, False) == pytest.approx(math.log(16), rel=1e-6)
    summary = run_scenario(
        s, tmp_path / "run", "cpu", reporter=QuietReporter(), plots=False, executor="inline"
    )
    records = read_records(tmp_path / "run" / "records.jsonl")
    assert summary.statuses == {"ok": 1} and len(records) == 1
    rec = records[0]
    assert rec["status"] == "ok" and rec["input_dist"] == "constant-keys"
    assert rec["softmax_entropy"] == pytest.approx(math.log(16), rel=1e-6)  # the source's data was used
    assert rec["rel_err"] < 1e-5


def test_planted_knob_is_validated_and_round_trips(tmp_path: Path) -> None:
    msg = load_error(scenario(tmp_path, "{dist: constant-keys, jitter: -1}"))
    assert ": inputs.jitter: expected a number >= 0, found -1 (int)" in msg
    msg = load_error(scenario(tmp_path, "{dist: constant-keys, window: 4}"))
    assert ": inputs.window: a knob of dist local, not constant-keys (its knobs: jitter)" in msg
    msg = load_error(scenario(tmp_path, "{dist: constant-key}"))
    assert ": inputs.dist: unknown input source 'constant-key' (did you mean 'constant-keys'?)" in msg
    s = load_scenario(
        str(scenario(tmp_path, "[{dist: constant-keys, jitter: 0.5}, {dist: gaussian, scale: 0.5}]"))
    )
    d = scenario_to_dict(s)
    assert d["inputs"][0] == {"dist": "constant-keys", "scale": 1.0, "seed": 0, "jitter": 0.5}
    d.pop("path")
    again_path = tmp_path / "again.yaml"
    again_path.write_text(yaml.safe_dump(d, sort_keys=False))
    again = load_scenario(str(again_path))
    assert again.inputs == s.inputs and again.problem == s.problem


# ----- a source that fixes problem axes ------------------------------------------------------
@pytest.mark.parametrize(
    ("problem", "where", "expected"),
    [
        ("batch: 2, heads: 2, head_dim: 16, seq_len: 16", "problem.head_dim", "expected 8"),
        ("batch: 2, heads: [2, 4], head_dim: 8, seq_len: 16", "problem.heads", "expected 2"),
        ("batch: 2, heads: 2, head_dim: 8, seq_len: [16, 64]", "problem.seq_len", "expected one of 16, 32"),
    ],
)
def test_fixed_axes_reject_a_contradicting_problem(
    tmp_path: Path, problem: str, where: str, expected: str
) -> None:
    msg = load_error(scenario(tmp_path, "{dist: recorded}", problem))
    axis = where.split(".")[1]
    assert f": {where}: {expected}: input source recorded (inputs) fixes {axis}; found " in msg
    listed = load_error(scenario(tmp_path, "[{dist: gaussian}, {dist: recorded}]", problem))
    assert f": {where}: {expected}: input source recorded (inputs[1]) fixes {axis}" in listed


def test_fixed_axes_accept_a_matching_problem(tmp_path: Path) -> None:
    s = load_scenario(
        str(
            scenario(
                tmp_path, "{dist: recorded, min_len: 5}", "batch: 3, heads: 2, head_dim: 8, seq_len: [16, 32]"
            )
        )
    )
    assert s.inputs[0].options == (("min_len", 5),)
    assert [c.problem.seq_len for c in expand(s, "cpu")] == [16, 32]
    problem = Problem(3, 2, 32, 8, dtype="bf16")
    batch = make_inputs(problem, s.inputs[0], layout="bnhd")
    mask = batch.key_padding_mask
    assert batch.q.shape == (3, 32, 2, 8) and batch.q.dtype == torch.bfloat16
    assert mask.shape == (3, 32) and mask.dtype == torch.bool and mask.sum(1).min() >= 5
    assert not batch.q[~mask].any()  # padded tokens are zero in the bnhd layout too
    calib = calibration_batches(problem, s.inputs[0], FitSpec(batches=2, seq_len=8))
    assert [b.q.shape for b in calib] == [(3, 2, 32, 8)] * 2  # fixed seq_len wins over fit.seq_len
    assert all(b.q.dtype == torch.float32 and b.key_padding_mask.shape == (3, 32) for b in calib)
    assert not torch.equal(calib[0].q, make_inputs(problem, s.inputs[0], index=1234).q.float())


def test_make_inputs_checks_fixed_axes_and_the_batch() -> None:
    with pytest.raises(ValueError, match=r"input source 'recorded' needs head_dim in \[8\], got 16"):
        make_inputs(Problem(1, 2, 16, 16), InputSpec("recorded"))
    with pytest.raises(ValueError, match=r"'wrong-shape' returned q of shape \(1, 2, 15, 8\), expected"):
        make_inputs(Problem(1, 2, 16, 8), InputSpec("wrong-shape"))


def test_source_errors_name_the_source(tmp_path: Path) -> None:
    msg = load_error(scenario(tmp_path, "{dist: bad-axis}"))
    assert ": inputs.dist: input source bad-axis fixes 'dtype', which is not a problem axis" in msg
    msg = load_error(scenario(tmp_path, "{dist: not-a-source}"))
    assert ": inputs.dist: input source 'not-a-source' is not a valid input source" in msg


def test_padding_mask_reaches_the_variant(tmp_path: Path) -> None:
    path = scenario(tmp_path, "{dist: recorded}")
    path.write_text(path.read_text().replace("{name: softmax}", "{name: mask_aware}"))
    s = load_scenario(str(path))
    run_scenario(s, tmp_path / "run", "cpu", reporter=QuietReporter(), plots=False, executor="inline")
    (rec,) = read_records(tmp_path / "run" / "records.jsonl")
    assert rec["status"] == "ok", rec["reason"]
    assert rec["info"]["mask_seen"] == [2, 16]
    batch = make_inputs(Problem(2, 2, 16, 8), s.inputs[0])
    masked = softmax_row_entropy(batch.q, batch.k, False, key_padding_mask=batch.key_padding_mask)
    assert rec["softmax_entropy"] == pytest.approx(masked)
    assert masked != pytest.approx(softmax_row_entropy(batch.q, batch.k, False))


def test_masked_inputs_skip_variants_without_masking(tmp_path: Path) -> None:
    """A source that pads marks its problems masked: a variant without masking is skipped, with why."""
    path = scenario(tmp_path, "{dist: recorded}")
    path.write_text(path.read_text().replace("{name: softmax}", "{name: nystrom}"))
    run_scenario(
        load_scenario(str(path)),
        tmp_path / "run",
        "cpu",
        reporter=QuietReporter(),
        plots=False,
        executor="inline",
    )
    (rec,) = read_records(tmp_path / "run" / "records.jsonl")
    assert rec["status"] == "skipped"
    assert "has no key-padding mask support" in rec["reason"]


def test_sources_from_another_package_come_through_the_entry_point_group(monkeypatch) -> None:
    assert SOURCES.group == "attnbench.inputs"
    plugin = EntryPoint(name="ext-keys", value=f"{__name__}:ConstantKeys", group="attnbench.inputs")

    def fake_entry_points(group: str) -> list[EntryPoint]:
        return [plugin] if group == "attnbench.inputs" else []

    monkeypatch.setattr(registry_mod, "entry_points", fake_entry_points)
    fresh: Registry[type[InputSource]] = Registry("input source", group="attnbench.inputs", base=InputSource)
    assert fresh.names() == ["ext-keys"] and fresh.get("ext-keys") is ConstantKeys
