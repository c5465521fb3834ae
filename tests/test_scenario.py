"""Strict scenario loading: good fixtures load to the expected dataclasses, every bad one fails
with a single-line `ScenarioError` naming the file, the key path and what was expected.

The variants used here are fakes registered for this module only (`fake_exact`, `fake_learn`),
so these tests do not depend on any real attention variant.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from harness.config import sweep
from harness.config.scenario import (
    AccuracySpec,
    ChecksSpec,
    FitBlock,
    InputSpec,
    MeasureSpec,
    ProblemSpec,
    Scenario,
    ScenarioError,
    VariantEntry,
    load_scenario,
    scenario_to_dict,
)
from harness.plugins.contract import AttentionVariant, Capabilities
from harness.plugins.variants import VARIANTS

FIXTURES = Path(__file__).parent / "fixtures" / "scenarios"
BASE = "name: t\nproblem: {batch: 1, heads: 2, head_dim: 16, seq_len: 63}\n"


@dataclass(frozen=True)
class FakeExactParams:
    block: int = 64
    scale: float = 1.0
    fused: bool = False
    kernel: str = "relu"

    def __post_init__(self) -> None:
        if self.block % 2:
            raise ValueError(f"block must be even, got {self.block}")


class FakeExact(AttentionVariant):
    name = "fake_exact"
    Params = FakeExactParams
    impls = ("torch", "fused")
    capabilities = Capabilities(exact=True)


@dataclass(frozen=True)
class FakeLearnParams:
    m: int  # no default: the type comes from the annotation
    eps: float = 1e-6
    window: int | None = None


class FakeLearn(AttentionVariant):
    name = "fake_learn"
    Params = FakeLearnParams
    capabilities = Capabilities(learnable=True)


@pytest.fixture(autouse=True)
def fake_variants():
    VARIANTS.register("fake_exact", FakeExact)
    VARIANTS.register("fake_learn", FakeLearn)
    yield
    VARIANTS.unregister("fake_exact")
    VARIANTS.unregister("fake_learn")


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(str(path))
    return str(info.value)


def assert_one_line(msg: str, path: Path, where: str) -> None:
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(f"{path}: {where}: "), msg


# ----- good scenarios -------------------------------------------------------------------------
def test_good_minimal_gets_defaults() -> None:
    path = FIXTURES / "good_minimal.yaml"
    assert load_scenario(str(path)) == Scenario(
        path=str(path),
        name="minimal",
        version=1,
        description="",
        device="auto",
        problem=ProblemSpec(batch=(1,), heads=(2,), head_dim=(16,), seq_len=(63,)),
        inputs=(InputSpec(),),
        variants=(VariantEntry(name="fake_exact"),),
        accuracy=AccuracySpec(),
        measure=MeasureSpec(),
        checks=ChecksSpec(),
    )


def test_good_full_loads_every_section() -> None:
    path = FIXTURES / "good_full.yaml"
    s = load_scenario(str(path))
    assert (s.name, s.version, s.description, s.device) == ("full", 3, "every key of the schema", "cpu")
    assert s.problem == ProblemSpec(
        batch=(1, 2),
        heads=(4,),
        head_dim=(16, 32),
        seq_len=(63, 1000),
        dtype=("fp32", "bf16"),
        causal=(False, True),
        mode=("fwd_bwd",),
    )
    assert s.inputs[0] == InputSpec("clustered", 2.0, 7, (("clusters", 8), ("spread", 0.25)))
    assert isinstance(s.inputs[0].scale, float)
    assert s.variants == (
        VariantEntry(
            name="fake_exact",
            impl=("torch", "fused"),
            params=(("block", (32, 64)), ("scale", (2.0,)), ("fused", (True,)), ("kernel", ("exp",))),
            label="exact",
        ),
        VariantEntry(
            name="fake_learn",
            params=(("m", (4, 8)), ("window", (None,))),
            fit=FitBlock(steps=10, lr=1e-3, seed=5, batches=2, seq_len=None, rows=32, mse_weight=0.5),
        ),
        VariantEntry(
            name="fake_learn",
            impl=("default",),
            params=(("m", (2,)), ("window", (16, "local"))),
            fit=FitBlock(),  # learnable variants are fitted with the defaults when no fit block is given
        ),
    )
    assert isinstance(s.variants[0].params[1][1][0], float)  # int written for a float field
    assert s.accuracy == AccuracySpec(enabled=False, rows=128, seed=3)
    assert s.measure == MeasureSpec(5.0, 3, 50, 20.5, False, 30.0, False)
    assert s.checks == ChecksSpec(causality=False, batch_independence=True, tolerance=1e-3)


def test_good_full_expands_to_cases() -> None:
    s = load_scenario(str(FIXTURES / "good_full.yaml"))
    problems = 2 * 1 * 2 * 2 * 2 * 2 * 1  # batch, heads, head_dim, seq_len, dtype, causal, mode
    configs = 2 * 2 + 2 + 2  # fake_exact impls x blocks, fake_learn m, fake_learn window
    cases = sweep.expand(s, "cpu")
    assert len(cases) == problems * configs
    fitted = [c for c in cases if c.fit is not None]
    assert len(fitted) == problems * 4  # both fake_learn entries: one explicit fit block, one default
    explicit = [c for c in fitted if c.fit.rows == 32]
    assert len(explicit) == problems * 2 and {c.params["m"] for c in explicit} == {4, 8}
    assert all(c.params["m"] == 2 and c.fit.steps == FitBlock().steps for c in fitted if c.fit.rows != 32)


def test_scenario_to_dict_is_json_and_round_trips(tmp_path: Path) -> None:
    s = load_scenario(str(FIXTURES / "good_full.yaml"))
    d = json.loads(json.dumps(scenario_to_dict(s)))
    assert d["path"] == s.path and d["inputs"]["clusters"] == 8
    d.pop("path")
    again = load_scenario(str(write(tmp_path, yaml.safe_dump(d, sort_keys=False))))
    assert again == dataclasses.replace(s, path=again.path)


@pytest.mark.parametrize(
    ("inputs", "options"),
    [
        ("{dist: peaked, noise: 0.5}", (("noise", 0.5),)),
        ("{dist: local, window: 16}", (("window", 16),)),
        ("{dist: gaussian}", ()),
    ],
)
def test_input_dist_knobs(tmp_path: Path, inputs: str, options: tuple) -> None:
    s = load_scenario(str(write(tmp_path, BASE + f"inputs: {inputs}\nvariants: [{{name: fake_exact}}]\n")))
    assert s.inputs[0].options == options


# ----- bad scenarios (fixtures) ---------------------------------------------------------------
BAD = {
    "bad_top_key_typo": ("varients", "unknown key (did you mean 'variants'?); expected one of name,"),
    "bad_nested_key_typo": (
        "problem.seq_lne",
        "unknown key (did you mean 'seq_len'?); "
        "expected one of batch, heads, head_dim, seq_len, dtype, causal, mode",
    ),
    "bad_wrong_type": ("problem.heads", "expected a positive int, found 'eight' (str)"),
    "bad_bool_as_int": ("problem.batch", "expected a positive int, found true (bool)"),
    "bad_negative_size": ("problem.head_dim", "expected a positive int, found -16 (int)"),
    "bad_zero_size": ("problem.seq_len[1]", "expected a positive int, found 0 (int)"),
    "bad_unknown_dtype": ("problem.dtype[1]", "unknown dtype 'fp61' (did you mean 'fp16'?)"),
    "bad_unknown_variant": ("variants[1].name", "unknown variant 'fake_exct' (did you mean 'fake_exact'?)"),
    "bad_unknown_param": ("variants[0].params.blok", "unknown key (did you mean 'block'?)"),
    "bad_param_type": ("variants[2].params.m[1]", "expected an int, found 2.5 (float)"),
    "bad_param_rejected": ("variants[0].params", "block=33: block must be even, got 33"),
    "bad_impl": ("variants[0].impl[1]", "unknown impl 'fuzed' (did you mean 'fused'?)"),
    "bad_fit_not_learnable": ("variants[0].fit", "not learnable, it has nothing to fit"),
    "bad_yaml_syntax": ("line 3, column 9", "invalid YAML"),
    "bad_empty": ("(top level)", "empty file"),
    "bad_top_list": ("(top level)", "expected a mapping with name, problem and variants, found a list"),
    "bad_python_tag": ("line 1, column 7", "YAML tag '!!python/object/apply:os.system' is not allowed"),
    "bad_duplicate_values": ("problem.seq_len[2]", "duplicate value 63 (int)"),
    "bad_duplicate_key": ("problem.seq_len", "duplicate key (lines 6 and 7)"),
    "bad_missing_problem": ("problem", "required key is missing"),
    "bad_empty_variants": ("variants", "expected a non-empty list"),
    "bad_inputs_knob": ("inputs.window", "a knob of dist local, not peaked"),
    "bad_float_as_text": ("variants[0].fit.lr", "found '1e-2' (str); YAML reads"),
    "bad_max_samples": ("measure.max_samples", "expected an int >= min_samples, found 5"),
}


def test_every_bad_fixture_has_an_expectation() -> None:
    assert {p.stem for p in FIXTURES.glob("bad_*.yaml")} == set(BAD)


@pytest.mark.parametrize("stem", sorted(BAD))
def test_bad_fixture(stem: str) -> None:
    path = FIXTURES / f"{stem}.yaml"
    where, expected = BAD[stem]
    msg = load_error(path)
    assert_one_line(msg, path, where)
    assert expected in msg, msg


# ----- bad scenarios (inline) -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        ("name: t\nproblem: [1]\nvariants: [{name: fake_exact}]", "problem", "expected a mapping"),
        (BASE + "variants: [fake_exact]", "variants[0]", "expected a mapping like {name: fake_exact}"),
        (BASE + "variants: [{name: fake_exact}]\n1: 2", "(top level)", "keys must be strings"),
        (BASE + "version: 0\nvariants: [{name: fake_exact}]", "version", "positive int, found 0"),
        (BASE + "device: gpu\nvariants: [{name: fake_exact}]", "device", "(did you mean 'cpu'?)"),
        (BASE + "inputs:\nvariants: [{name: fake_exact}]", "inputs", "found null"),
        (BASE + "inputs: {nosie: 1}\nvariants: [{name: fake_exact}]", "inputs.nosie", "'noise'"),
        (BASE + "inputs: {scale: 0}\nvariants: [{name: fake_exact}]", "inputs.scale", "number > 0"),
        (BASE + "inputs: {seed: -1}\nvariants: [{name: fake_exact}]", "inputs.seed", "int >= 0"),
        (BASE + "variants: [{name: fake_exact, params: {fused: 1}}]", "variants[0].params.fused", "true or"),
        (BASE + "variants: [{name: fake_exact, params: {kernel: 1}}]", "variants[0].params.kernel", "string"),
        (
            BASE + "variants: [{name: fake_exact, params: {scale: .nan}}]",
            "variants[0].params.scale",
            "number",
        ),
        (BASE + "variants: [{name: fake_learn, params: {m: []}}]", "variants[0].params.m", "empty list"),
        (BASE + "variants: [{name: fake_learn, params: {m: [[1]]}}]", "variants[0].params.m[0]", "a list"),
        (
            BASE + "variants: [{name: fake_learn, params: {m: 2, window: true}}]",
            "variants[0].params.window",
            "null",
        ),
        (BASE + "variants: [{name: fake_learn}]", "variants[0].params", "missing 1 required"),
        (BASE + "variants: [{name: fake_exact, impl: []}]", "variants[0].impl", "empty list"),
        (BASE + "variants: [{name: fake_exact, lable: x}]", "variants[0].lable", "(did you mean 'label'?)"),
        (
            BASE + "variants: [{name: fake_learn, params: {m: 2}, fit: {stpes: 1}}]",
            "variants[0].fit.stpes",
            "'steps'",
        ),
        (
            BASE + "variants: [{name: fake_learn, params: {m: 2}, fit: {seq_len: 0}}]",
            "variants[0].fit.seq_len",
            "int",
        ),
        (BASE + "variants: [{name: fake_exact}]\naccuracy: {rows: 0}", "accuracy.rows", "positive int"),
        (BASE + "variants: [{name: fake_exact}]\nchecks: {tolerance: 0}", "checks.tolerance", "number > 0"),
        (
            BASE + "variants: [{name: fake_exact}]\nmeasure: {flush_l2: 1}",
            "measure.flush_l2",
            "true or false",
        ),
        (BASE + "variants: [{name: fake_exact}]\n---\nname: u", "line 4, column 1", "single document"),
    ],
)
def test_bad_inline(tmp_path: Path, text: str, where: str, expected: str) -> None:
    path = write(tmp_path, text)
    msg = load_error(path)
    assert_one_line(msg, path, where)
    assert expected in msg, msg


def test_variant_without_params_rejects_any(tmp_path: Path) -> None:
    class Plain(AttentionVariant):
        name = "fake_plain"

    VARIANTS.register("fake_plain", Plain)
    try:
        path = write(tmp_path, BASE + "variants: [{name: fake_plain, params: {block: 1}}]")
        msg = load_error(path)
    finally:
        VARIANTS.unregister("fake_plain")
    assert_one_line(msg, path, "variants[0].params.block")
    assert "no keys are allowed here" in msg


def test_registered_variant_that_cannot_import(tmp_path: Path) -> None:
    VARIANTS.register("fake_broken", "no_such_module_for_attnbench:Broken")
    try:
        path = write(tmp_path, BASE + "variants: [{name: fake_broken}]")
        msg = load_error(path)
    finally:
        VARIANTS.unregister("fake_broken")
    assert_one_line(msg, path, "variants[0].name")
    assert "registered but cannot be imported" in msg and "no_such_module_for_attnbench" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert_one_line(load_error(path), path, "(file)")
    assert "file not found" in load_error(path)


def test_multiline_exception_text_stays_one_line(tmp_path: Path) -> None:
    class Picky(FakeExact):
        @classmethod
        def make_params(cls, values: dict) -> FakeExactParams:
            raise ValueError("first line\nsecond line")

    VARIANTS.register("fake_picky", Picky)
    try:
        path = write(tmp_path, BASE + "variants: [{name: fake_picky}]")
        msg = load_error(path)
    finally:
        VARIANTS.unregister("fake_picky")
    assert_one_line(msg, path, "variants[0].params")
    assert "first line second line" in msg


# ----- no YAML tag can run code ---------------------------------------------------------------
def _tagged(marker: Path, tag: str) -> str:
    return f'name: !!python/object/apply:{tag} ["touch {marker}"]\nproblem: {{}}\nvariants: []\n'


def test_python_tag_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path, _tagged(marker, "os.system"))
    msg = load_error(path)
    assert_one_line(msg, path, "line 1, column 7")
    assert "not allowed" in msg
    assert not marker.exists()


def test_marker_detects_an_unsafe_loader(tmp_path: Path) -> None:
    """Control for the test above: an unsafe loader does run the tag and creates the marker."""
    marker = tmp_path / "pwned"
    yaml.unsafe_load(_tagged(marker, "os.system"))
    assert marker.exists()


SHIPPED = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_loads_and_expands(path: Path) -> None:
    from harness.config.sweep import expand

    scenario = load_scenario(str(path))
    device = "cpu" if scenario.device == "auto" else scenario.device
    assert expand(scenario, device), f"{path.name} expands to no case"


def test_inputs_list_sweeps_regimes(tmp_path: Path) -> None:
    from harness.config.sweep import expand

    path = tmp_path / "regimes.yaml"
    path.write_text(
        "name: regimes\ndevice: cpu\nproblem: {batch: 1, heads: 2, head_dim: 16, seq_len: [63, 128]}\n"
        "inputs: [{dist: gaussian}, {dist: peaked, sharpness: 1.5}, {dist: gaussian, scale: 0.5}]\n"
        "variants:\n  - name: fake_exact\n"
    )
    s = load_scenario(str(path))
    assert [(i.dist, i.scale) for i in s.inputs] == [("gaussian", 1.0), ("peaked", 1.0), ("gaussian", 0.5)]
    assert s.inputs[1].options == (("sharpness", 1.5),)
    cases = expand(s, "cpu")
    assert len(cases) == 6 and len({c.case_id for c in cases}) == 6
    assert [c.inputs.dist for c in cases] == ["gaussian"] * 2 + ["peaked"] * 2 + ["gaussian"] * 2
    # a one-regime scenario keeps the case ids it had before lists were allowed
    single = tmp_path / "single.yaml"
    single.write_text(path.read_text().replace(
        "inputs: [{dist: gaussian}, {dist: peaked, sharpness: 1.5}, {dist: gaussian, scale: 0.5}]",
        "inputs: {dist: gaussian}",
    ))  # fmt: skip
    assert [c.case_id for c in expand(load_scenario(str(single)), "cpu")] == [c.case_id for c in cases[:2]]


@pytest.mark.parametrize(
    ("inputs", "where", "expected"),
    [
        ("[]", "inputs", "non-empty list"),
        ("[{dist: peaked}, {dist: peaked, noise: 0.2}]", "inputs[1]", "same dist and scale as inputs[0]"),
        ("[{dist: gaussian}, {dist: local, clusters: 3}]", "inputs[1].clusters", "a knob of dist clustered"),
        (
            "[{dist: gaussian}, {dist: nope}]",
            "inputs[1].dist",
            "unknown input source 'nope'; known: captured, clustered, gaussian, local, peaked",
        ),
        ("{dist: peakd}", "inputs.dist", "unknown input source 'peakd' (did you mean 'peaked'?); known: "),
        ("{dist: 3}", "inputs.dist", "expected an input source name (one of captured, clustered, gaussian,"),
        (
            "{dist: gaussian, clusters: 3}",
            "inputs.clusters",
            "a knob of dist clustered, not gaussian (its knobs: none)",
        ),
        ("{dist: clustered, noise: 3}", "inputs.noise", "a knob of dist local and peaked, not clustered"),
        (
            "{dist: local, windw: 3}",
            "inputs.windw",
            "unknown key (did you mean 'window'?); expected one of dist,",
        ),
        ("{dist: peaked, sharpness: 0}", "inputs.sharpness", "expected a number > 0, found 0 (int)"),
        ("{dist: clustered, clusters: 2.5}", "inputs.clusters", "expected a positive int, found 2.5"),
    ],
)
def test_bad_inputs_list(tmp_path: Path, inputs: str, where: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\ndevice: cpu\nproblem: {batch: 1, heads: 2, head_dim: 16, seq_len: 63}\n"
        f"inputs: {inputs}\nvariants:\n  - name: fake_exact\n"
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(path))
    assert_one_line(str(err.value), path, where)
    assert expected in str(err.value)


@pytest.mark.parametrize("dist", ["gaussian", "peaked", "clustered", "local"])
def test_every_source_knob_is_settable_from_yaml(tmp_path: Path, dist: str) -> None:
    from harness.inputs import SOURCES

    knobs = SOURCES.get(dist).knobs
    assert dist == "gaussian" or knobs
    setting = "".join(f", {name}: {knob.default}" for name, knob in knobs.items())
    path = write(tmp_path, BASE + f"inputs: {{dist: {dist}{setting}}}\nvariants: [{{name: fake_exact}}]\n")
    s = load_scenario(str(path))
    assert s.inputs[0].options == tuple(sorted((name, knob.default) for name, knob in knobs.items()))
