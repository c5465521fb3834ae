"""Tests of harness.inputs: the built-in sources (seeded, bit-stable), make_inputs layouts and
dtypes, the calibration split, and the entropy / band-mass helpers (with and without padding)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness.inputs import (
    SOURCES,
    InputBatch,
    InputSpec,
    band_mass,
    calibration_batches,
    make_inputs,
    make_qkv,
    softmax_row_entropy,
    to_canonical,
)
from harness.measure.rowsample import row_weights, sample_rows
from harness.common.checks import Invalid
from harness.plugins.contract import FitSpec, Problem

DISTS = ["clustered", "gaussian", "local", "peaked"]
SMALL = Problem(batch=2, heads=3, seq_len=63, head_dim=16)


def test_builtin_sources_are_registered() -> None:
    assert set(DISTS) <= set(SOURCES.names())
    for name in DISTS:
        cls = SOURCES.get(name)
        assert cls.name == name and cls.description
        source = cls()
        assert source.fixed_axes(source.options()) == {}
        for knob_name, knob in cls.knobs.items():  # every default passes its own validator
            assert knob.check(knob.default, f"inputs.{knob_name}") == knob.default


# ----- the values of the sources before they became plugins ---------------------------------
# Frozen from harness/inputs/synthetic.py (deleted) so committed baselines keep matching: for
# Problem(2, 2, 33, 8), InputSpec(dist, scale, seed, options) below: sums of q, k, v, of q * k,
# three single values and the softmax row entropy over all rows; and for calibration batch 1 of
# FitSpec(batches=2, seq_len=17, seed=3) on Problem(1, 2, 40, 8): sums of q, k, v and one value.
FROZEN_SPECS = {
    "gaussian": InputSpec("gaussian", 0.5, 3, ()),
    "peaked": InputSpec("peaked", 1.0, 0, (("noise", 0.2), ("sharpness", 1.5))),
    "clustered": InputSpec("clustered", 2.0, 7, (("clusters", 3), ("spread", 0.25))),
    "local": InputSpec("local", 1.0, 1, (("window", 5),)),
}
FROZEN = {
    ("gaussian", False): (
        -6.489955655299127,
        -37.39703730089241,
        28.541043397359317,
        0.2244493448211342,
        0.23778347671031952,
        0.8774771690368652,
        1.4458544254302979,
        3.4638029156309185,
    ),
    ("gaussian", True): (
        -6.489955655299127,
        -37.39703730089241,
        28.541043397359317,
        0.2244493448211342,
        0.23778347671031952,
        0.8774771690368652,
        1.4458544254302979,
        2.545614069158381,
    ),
    ("gaussian", "calib"): (
        -4.198733035475016,
        6.7166678449139,
        -3.5601608578581363,
        -0.274784117937088,
    ),
    ("peaked", False): (
        114.96846773009747,
        33.0096199378022,
        -68.64496166544268,
        36.6111147638499,
        -0.05095973610877991,
        0.7869559526443481,
        0.7547092437744141,
        2.1269891912286933,
    ),
    ("peaked", True): (
        -17.556879302486777,
        33.0096199378022,
        -68.64496166544268,
        148.4247124620403,
        1.1706016063690186,
        0.7869559526443481,
        0.7547092437744141,
        1.3685987067945076,
    ),
    ("peaked", "calib"): (
        37.611897345632315,
        17.571651791455224,
        -20.619474223349243,
        2.746273994445801,
    ),
    ("clustered", False): (
        -212.88715327251703,
        -184.65784948458895,
        -4.030101702781394,
        1479.403275684551,
        2.442282199859619,
        -0.5724427103996277,
        1.5892502069473267,
        2.2319786765358667,
    ),
    ("clustered", True): (
        -212.88715327251703,
        -184.65784948458895,
        -4.030101702781394,
        1479.403275684551,
        2.442282199859619,
        -0.5724427103996277,
        1.5892502069473267,
        1.5266267025109492,
    ),
    ("clustered", "calib"): (
        -60.46649067848921,
        -49.584178481251,
        -12.612557142041624,
        0.8569990396499634,
    ),
    ("local", False): (
        198.5780868269503,
        196.76039735414088,
        1.9262422766123564,
        4454.984638552411,
        2.3442111015319824,
        1.481825351715088,
        -0.5156666040420532,
        2.1273778279622397,
    ),
    ("local", True): (
        198.5780868269503,
        196.76039735414088,
        1.9262422766123564,
        4454.984638552411,
        2.3442111015319824,
        1.481825351715088,
        -0.5156666040420532,
        1.5110443577621921,
    ),
    ("local", "calib"): (
        240.68154445197433,
        235.9588824287057,
        8.40739030810073,
        2.1666934490203857,
    ),
}


def _exact(dist: str) -> float:
    """Tolerance on single values: exact except local, whose cos/sin may differ by an ulp per CPU."""
    return 1e-6 if dist == "local" else 0.0


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("causal", [False, True])
def test_values_match_the_frozen_generator(dist: str, causal: bool) -> None:
    batch = make_inputs(Problem(2, 2, 33, 8, causal=causal), FROZEN_SPECS[dist])
    q, k, v = batch.qkv
    expected = FROZEN[(dist, causal)]
    sums = [float(x.double().sum()) for x in (q, k, v)] + [float((q.double() * k.double()).sum())]
    assert sums == pytest.approx(expected[:4], rel=1e-9)
    values = [float(q[1, 1, -1, -1]), float(k[0, 1, 5, 3]), float(v[1, 0, 7, 2])]
    assert values == pytest.approx(expected[4:7], rel=_exact(dist), abs=_exact(dist))
    assert softmax_row_entropy(q, k, causal, rows=64) == pytest.approx(expected[7], rel=1e-6)
    assert batch.key_padding_mask is None


@pytest.mark.parametrize("dist", DISTS)
def test_calibration_values_match_the_frozen_generator(dist: str) -> None:
    fit = FitSpec(batches=2, seq_len=17, seed=3)
    q, k, v = calibration_batches(Problem(1, 2, 40, 8), FROZEN_SPECS[dist], fit)[1].qkv
    expected = FROZEN[(dist, "calib")]
    assert [float(x.double().sum()) for x in (q, k, v)] == pytest.approx(expected[:3], rel=1e-9)
    assert float(q[0, 1, -1, -1]) == pytest.approx(expected[3], rel=_exact(dist), abs=_exact(dist))


# ----- make_inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_shapes_dtypes_layouts(dist: str, dtype: str, layout: str) -> None:
    problem = dataclasses.replace(SMALL, dtype=dtype)
    batch = make_inputs(problem, InputSpec(dist=dist), layout=layout)
    assert isinstance(batch, InputBatch) and batch.key_padding_mask is None
    expected = (2, 3, 63, 16) if layout == "bhnd" else (2, 63, 3, 16)
    for x in batch.qkv:
        assert x.shape == expected and x.dtype == problem.torch_dtype and x.is_contiguous()
        assert x.device.type == "cpu" and not x.requires_grad
        assert torch.isfinite(x).all() and x.float().std() > 0.1
    ref = make_inputs(problem, InputSpec(dist=dist))
    for x, r in zip(batch.qkv, ref.qkv, strict=True):
        assert torch.equal(to_canonical(x, layout), r)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("causal", [False, True])
def test_seeded(dist: str, causal: bool) -> None:
    problem = dataclasses.replace(SMALL, causal=causal)
    a = make_inputs(problem, InputSpec(dist=dist, seed=5)).qkv
    b = make_inputs(problem, InputSpec(dist=dist, seed=5)).qkv
    c = make_inputs(problem, InputSpec(dist=dist, seed=6)).qkv
    d = make_inputs(problem, InputSpec(dist=dist, seed=5), index=1).qkv
    e = make_inputs(problem, InputSpec(dist=dist, seed=4), index=2).qkv
    for x, y, z, w in zip(a, b, c, d, strict=True):
        assert torch.equal(x, y) and not torch.equal(x, z) and not torch.equal(x, w)
    for x, z in zip(c, e, strict=True):
        assert torch.equal(x, z)  # only seed + index matters


def test_make_qkv_is_make_inputs_without_the_mask() -> None:
    spec = InputSpec(dist="peaked", seed=2)
    old_style = make_qkv(SMALL, spec, "bnhd", seed_offset=3)
    for x, y in zip(old_style, make_inputs(SMALL, spec, "bnhd", index=3).qkv, strict=True):
        assert torch.equal(x, y)


def test_requires_grad_gives_leaves() -> None:
    for layout in ("bhnd", "bnhd"):
        batch = make_inputs(dataclasses.replace(SMALL, dtype="bf16"), InputSpec(), layout, requires_grad=True)
        for x in batch.qkv:
            assert x.requires_grad and x.is_leaf


@pytest.mark.parametrize("dist", DISTS)
def test_scale_multiplies_q_and_k_only(dist: str) -> None:
    one = make_inputs(SMALL, InputSpec(dist=dist, scale=1.0)).qkv
    two = make_inputs(SMALL, InputSpec(dist=dist, scale=2.0)).qkv
    torch.testing.assert_close(two[0], 2 * one[0])
    torch.testing.assert_close(two[1], 2 * one[1])
    assert torch.equal(two[2], one[2])


def test_gaussian_moments() -> None:
    q, k, v = make_inputs(Problem(1, 4, 1000, 64), InputSpec(scale=0.5)).qkv
    assert q.std().item() == pytest.approx(0.5, rel=0.02) and k.mean().abs() < 0.01
    assert v.std().item() == pytest.approx(1.0, rel=0.02)


def test_bad_requests_rejected() -> None:
    with pytest.raises(ValueError, match="unknown input source 'laplace'"):
        make_inputs(SMALL, InputSpec(dist="laplace"))
    with pytest.raises(ValueError, match="did you mean 'peaked'"):
        make_inputs(SMALL, InputSpec(dist="peakd"))
    with pytest.raises(ValueError, match="windw"):
        make_inputs(SMALL, InputSpec(dist="local", options=(("windw", 8),)))
    with pytest.raises(ValueError, match="layout"):
        make_inputs(SMALL, InputSpec(), layout="nbhd")
    with pytest.raises(ValueError, match="split"):
        make_inputs(SMALL, InputSpec(), split="train")
    with pytest.raises(ValueError, match="head_dim >= 2"):
        make_inputs(dataclasses.replace(SMALL, head_dim=1), InputSpec(dist="local"))


def test_knob_validators_raise_invalid_with_the_key_path() -> None:
    source = SOURCES.get("local")()
    assert source.check_knob("window", 8, "inputs.window") == 8
    with pytest.raises(Invalid) as err:
        source.check_knob("window", 0, "inputs.window")
    assert err.value.where == "inputs.window" and "positive int" in err.value.message
    with pytest.raises(Invalid, match="not a knob of input source local"):
        source.check_knob("clusters", 3, "inputs.clusters")


# ----- the shape of attention each source produces ------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dist,max_ratio", [("peaked", 0.3), ("clustered", 0.9), ("local", 0.9)])
def test_lower_entropy_than_gaussian(dist: str, max_ratio: float, causal: bool) -> None:
    problem = Problem(1, 2, 1000, 64, causal=causal)
    gauss = softmax_row_entropy(*make_inputs(problem, InputSpec()).qkv[:2], causal)
    ent = softmax_row_entropy(*make_inputs(problem, InputSpec(dist=dist)).qkv[:2], causal)
    assert ent < max_ratio * gauss


@pytest.mark.parametrize("causal", [False, True])
def test_peaked_copies_a_visible_key(causal: bool) -> None:
    q, k, _ = make_inputs(Problem(1, 2, 1000, 64, causal=causal), InputSpec(dist="peaked")).qkv
    best = (q @ k.transpose(-1, -2)).argmax(-1)  # unmasked argmax: the copied key
    visible = (best <= torch.arange(1000)).float().mean()
    if causal:
        assert visible > 0.99
    else:
        assert 0.3 < visible < 0.7


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,head_dim", [(64, 64), (16, 48), (64, 16)])
def test_local_mass_within_window(causal: bool, window: int, head_dim: int) -> None:
    spec = InputSpec(dist="local", options=(("window", window),))
    q, k, _ = make_inputs(Problem(1, 2, 1000, head_dim, causal=causal), spec).qkv
    assert band_mass(q, k, causal, window) > 0.9
    assert band_mass(q, k, causal, window // 8) < 0.7  # spread over the window, not one token


def test_entropy_and_band_mass_of_known_attention() -> None:
    n = 1000
    zeros = torch.zeros(1, 1, n, 8)  # uniform attention
    assert softmax_row_entropy(zeros, zeros, False) == pytest.approx(math.log(n), rel=1e-5)
    idx = sample_rows(n, 256, 0).double()
    w = row_weights(idx.long(), n, 256)  # each sampled row stands for 1 / (inclusion probability) rows
    all_rows = torch.arange(n).double()
    # causal: row i attends uniformly to i + 1 keys, entropy ln(i + 1)
    causal_expected = float((w * torch.log(idx + 1)).sum() / w.sum())
    assert softmax_row_entropy(zeros, zeros, True) == pytest.approx(causal_expected, rel=1e-5)
    assert causal_expected == pytest.approx(torch.log(all_rows + 1).mean().item(), rel=0.01)  # ~ all rows
    assert causal_expected != pytest.approx(torch.log(idx + 1).mean().item(), rel=0.01)  # unweighted is off
    assert band_mass(zeros, zeros, False, window=n) == pytest.approx(1.0)
    causal_band = float((w * torch.clamp(idx + 1, max=10) / (idx + 1)).sum() / w.sum())  # 10 of i + 1 keys
    assert band_mass(zeros, zeros, True, window=9) == pytest.approx(causal_band, rel=1e-5)
    eye = 100.0 * torch.eye(n)[None, None]  # each row attends to itself only
    assert softmax_row_entropy(eye, eye, False, rows=n) < 1e-3
    assert band_mass(eye, eye, False, window=0, rows=n) > 0.999


def test_entropy_and_band_mass_with_padding() -> None:
    n, real = 100, torch.tensor([60, 100])  # sample 0 has 60 real tokens, sample 1 has 100
    zeros = torch.zeros(2, 3, n, 8)
    mask = torch.arange(n)[None, :] < real[:, None]  # (B, N), True = real token
    # uniform over the real keys: ln 60 for the 60 real rows of sample 0, ln 100 for sample 1
    expected = (60 * math.log(60) + 100 * math.log(100)) / 160
    assert softmax_row_entropy(zeros, zeros, False, rows=n, key_padding_mask=mask) == pytest.approx(expected)
    unmasked = softmax_row_entropy(zeros, zeros, False, rows=n)
    assert unmasked == pytest.approx(math.log(n)) and unmasked != pytest.approx(expected)
    # causal, left-padded: padded query rows see only padded keys (nan weights) and are not counted
    left = mask.flip(-1)
    causal = softmax_row_entropy(zeros, zeros, True, rows=n, key_padding_mask=left)
    first = n - 60  # sample 0's first real token: row i sees i - first + 1 real keys
    ent = sum(math.log(i - first + 1) for i in range(first, n)) + sum(math.log(i + 1) for i in range(n))
    assert causal == pytest.approx(ent / 160)
    # band mass: all mass of a real row of sample 0 lies on its 60 real keys
    window = band_mass(zeros, zeros, False, window=59, rows=n, key_padding_mask=mask)
    inside = sum(min(i + 60, n) - max(i - 59, 0) for i in range(n)) / n / n  # sample 1's mean band share
    assert window == pytest.approx((60 * 1.0 + 100 * inside) / 160)
    nobody = torch.zeros(2, n, dtype=torch.bool)
    assert math.isnan(softmax_row_entropy(zeros, zeros, False, key_padding_mask=nobody))


# ----- calibration split --------------------------------------------------------------------
@pytest.mark.parametrize("dist", DISTS)
def test_calibration_batches(dist: str) -> None:
    problem = Problem(2, 2, 1500, 16, dtype="bf16", causal=True)
    spec = InputSpec(dist=dist, seed=3)
    batches = calibration_batches(problem, spec, FitSpec(batches=3))
    assert len(batches) == 3
    evaluation = [x.float()[:, :, :1024] for x in make_inputs(problem, spec).qkv]
    for batch in batches:
        assert isinstance(batch, InputBatch) and batch.key_padding_mask is None
        for x, e in zip(batch.qkv, evaluation, strict=True):
            assert x.shape == (2, 2, 1024, 16) and x.dtype == torch.float32 and x.device.type == "cpu"
            assert not torch.allclose(x, e, atol=0.1)
    assert not torch.equal(batches[0].q, batches[1].q)
    again = calibration_batches(problem, spec, FitSpec(batches=3))
    assert all(
        torch.equal(a, b)
        for ba, bb in zip(batches, again, strict=True)
        for a, b in zip(ba.qkv, bb.qkv, strict=True)
    )


def test_calibration_seq_len_and_seed() -> None:
    problem = Problem(1, 2, 200, 16)
    short = calibration_batches(problem, InputSpec(), FitSpec(batches=1))
    assert short[0].q.shape == (1, 2, 200, 16)
    custom = calibration_batches(problem, InputSpec(), FitSpec(batches=2, seq_len=64, seed=1))
    assert custom[0].q.shape == (1, 2, 64, 16)
    other = calibration_batches(problem, InputSpec(), FitSpec(batches=1, seq_len=64, seed=2))
    assert torch.equal(custom[1].q, other[0].q)  # batch i uses seed + 10_000 + fit.seed + i
    short64 = dataclasses.replace(problem, seq_len=64)
    evaluation = make_inputs(short64, InputSpec(), index=10_000 + 2)  # the calib split = another seed
    assert torch.equal(other[0].q, evaluation.q)
    assert torch.equal(make_inputs(short64, InputSpec(), split="calib", index=2).v, evaluation.v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dist", DISTS)
def test_cuda_generation_is_seeded(dist: str) -> None:
    problem = dataclasses.replace(SMALL, device="cuda", causal=True, dtype="bf16")
    a = make_inputs(problem, InputSpec(dist=dist)).qkv
    b = make_inputs(problem, InputSpec(dist=dist)).qkv
    for x, y in zip(a, b, strict=True):
        assert x.device.type == "cuda" and x.dtype == torch.bfloat16 and torch.equal(x, y)
    calib = calibration_batches(problem, InputSpec(dist=dist), FitSpec(batches=1))
    assert calib[0].q.device.type == "cuda" and calib[0].q.dtype == torch.float32
