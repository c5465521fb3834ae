"""Tests of harness.inputs.synthetic: seeded distributions, layouts, calibration split, entropy helpers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness.config.scenario import InputSpec
from harness.inputs.synthetic import (
    DIST_OPTIONS,
    band_mass,
    calibration_batches,
    make_qkv,
    softmax_row_entropy,
    to_canonical,
)
from harness.measure.accuracy import sample_rows
from harness.plugins.contract import FitSpec, Problem

DISTS = sorted(DIST_OPTIONS)
SMALL = Problem(batch=2, heads=3, seq_len=63, head_dim=16)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_shapes_dtypes_layouts(dist: str, dtype: str, layout: str) -> None:
    problem = dataclasses.replace(SMALL, dtype=dtype)
    q, k, v = make_qkv(problem, InputSpec(dist=dist), layout=layout)
    expected = (2, 3, 63, 16) if layout == "bhnd" else (2, 63, 3, 16)
    for x in (q, k, v):
        assert x.shape == expected and x.dtype == problem.torch_dtype and x.is_contiguous()
        assert x.device.type == "cpu" and not x.requires_grad
        assert torch.isfinite(x).all() and x.float().std() > 0.1
    ref = make_qkv(problem, InputSpec(dist=dist))
    for x, r in zip((q, k, v), ref, strict=True):
        assert torch.equal(to_canonical(x, layout), r)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("causal", [False, True])
def test_seeded(dist: str, causal: bool) -> None:
    problem = dataclasses.replace(SMALL, causal=causal)
    a = make_qkv(problem, InputSpec(dist=dist, seed=5))
    b = make_qkv(problem, InputSpec(dist=dist, seed=5))
    c = make_qkv(problem, InputSpec(dist=dist, seed=6))
    d = make_qkv(problem, InputSpec(dist=dist, seed=5), seed_offset=1)
    e = make_qkv(problem, InputSpec(dist=dist, seed=4), seed_offset=2)
    for x, y, z, w in zip(a, b, c, d, strict=True):
        assert torch.equal(x, y) and not torch.equal(x, z) and not torch.equal(x, w)
    for x, z in zip(c, e, strict=True):
        assert torch.equal(x, z)  # only seed + seed_offset matters


def test_requires_grad_gives_leaves() -> None:
    for layout in ("bhnd", "bnhd"):
        for x in make_qkv(dataclasses.replace(SMALL, dtype="bf16"), InputSpec(), layout, requires_grad=True):
            assert x.requires_grad and x.is_leaf


@pytest.mark.parametrize("dist", DISTS)
def test_scale_multiplies_q_and_k_only(dist: str) -> None:
    one = make_qkv(SMALL, InputSpec(dist=dist, scale=1.0))
    two = make_qkv(SMALL, InputSpec(dist=dist, scale=2.0))
    torch.testing.assert_close(two[0], 2 * one[0])
    torch.testing.assert_close(two[1], 2 * one[1])
    assert torch.equal(two[2], one[2])


def test_gaussian_moments() -> None:
    q, k, v = make_qkv(Problem(1, 4, 1000, 64), InputSpec(scale=0.5))
    assert q.std().item() == pytest.approx(0.5, rel=0.02) and k.mean().abs() < 0.01
    assert v.std().item() == pytest.approx(1.0, rel=0.02)


def test_unknown_dist_and_option_rejected() -> None:
    with pytest.raises(ValueError, match="unknown input dist"):
        make_qkv(SMALL, InputSpec(dist="laplace"))
    with pytest.raises(ValueError, match="windw"):
        make_qkv(SMALL, InputSpec(dist="local", options=(("windw", 8),)))
    with pytest.raises(ValueError, match="layout"):
        make_qkv(SMALL, InputSpec(), layout="nbhd")


# ----- the shape of attention each distribution produces ------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dist,max_ratio", [("peaked", 0.3), ("clustered", 0.9), ("local", 0.9)])
def test_lower_entropy_than_gaussian(dist: str, max_ratio: float, causal: bool) -> None:
    problem = Problem(1, 2, 1000, 64, causal=causal)
    gauss = softmax_row_entropy(*make_qkv(problem, InputSpec())[:2], causal)
    ent = softmax_row_entropy(*make_qkv(problem, InputSpec(dist=dist))[:2], causal)
    assert ent < max_ratio * gauss


@pytest.mark.parametrize("causal", [False, True])
def test_peaked_copies_a_visible_key(causal: bool) -> None:
    q, k, _ = make_qkv(Problem(1, 2, 1000, 64, causal=causal), InputSpec(dist="peaked"))
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
    q, k, _ = make_qkv(Problem(1, 2, 1000, head_dim, causal=causal), spec)
    assert band_mass(q, k, causal, window) > 0.9
    assert band_mass(q, k, causal, window // 8) < 0.7  # spread over the window, not one token


def test_entropy_and_band_mass_of_known_attention() -> None:
    n = 1000
    zeros = torch.zeros(1, 1, n, 8)  # uniform attention
    assert softmax_row_entropy(zeros, zeros, False) == pytest.approx(math.log(n), rel=1e-5)
    causal_expected = torch.log(sample_rows(n, 256, 0).double() + 1).mean().item()  # ln(i + 1)
    assert softmax_row_entropy(zeros, zeros, True) == pytest.approx(causal_expected, rel=1e-5)
    assert band_mass(zeros, zeros, False, window=n) == pytest.approx(1.0)
    idx = sample_rows(n, 256, 0).double()
    causal_band = (torch.clamp(idx + 1, max=10) / (idx + 1)).mean().item()  # 10 of i + 1 keys
    assert band_mass(zeros, zeros, True, window=9) == pytest.approx(causal_band, rel=1e-5)
    eye = 100.0 * torch.eye(n)[None, None]  # each row attends to itself only
    assert softmax_row_entropy(eye, eye, False, rows=n) < 1e-3
    assert band_mass(eye, eye, False, window=0, rows=n) > 0.999


# ----- calibration split --------------------------------------------------------------------
@pytest.mark.parametrize("dist", DISTS)
def test_calibration_batches(dist: str) -> None:
    problem = Problem(2, 2, 1500, 16, dtype="bf16", causal=True)
    spec = InputSpec(dist=dist, seed=3)
    batches = calibration_batches(problem, spec, FitSpec(batches=3))
    assert len(batches) == 3
    evaluation = [x.float()[:, :, :1024] for x in make_qkv(problem, spec)]
    for batch in batches:
        for x, e in zip(batch, evaluation, strict=True):
            assert x.shape == (2, 2, 1024, 16) and x.dtype == torch.float32 and x.device.type == "cpu"
            assert not torch.allclose(x, e, atol=0.1)
    assert not torch.equal(batches[0][0], batches[1][0])
    again = calibration_batches(problem, spec, FitSpec(batches=3))
    assert all(
        torch.equal(a, b) for ba, bb in zip(batches, again, strict=True) for a, b in zip(ba, bb, strict=True)
    )


def test_calibration_seq_len_and_seed() -> None:
    problem = Problem(1, 2, 200, 16)
    short = calibration_batches(problem, InputSpec(), FitSpec(batches=1))
    assert short[0][0].shape == (1, 2, 200, 16)
    custom = calibration_batches(problem, InputSpec(), FitSpec(batches=2, seq_len=64, seed=1))
    assert custom[0][0].shape == (1, 2, 64, 16)
    other = calibration_batches(problem, InputSpec(), FitSpec(batches=1, seq_len=64, seed=2))
    assert torch.equal(custom[1][0], other[0][0])  # batch i uses seed + 10_000 + fit.seed + i


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dist", DISTS)
def test_cuda_generation_is_seeded(dist: str) -> None:
    problem = dataclasses.replace(SMALL, device="cuda", causal=True, dtype="bf16")
    a = make_qkv(problem, InputSpec(dist=dist))
    b = make_qkv(problem, InputSpec(dist=dist))
    for x, y in zip(a, b, strict=True):
        assert x.device.type == "cuda" and x.dtype == torch.bfloat16 and torch.equal(x, y)
    calib = calibration_batches(problem, InputSpec(dist=dist), FitSpec(batches=1))
    assert calib[0][0].device.type == "cuda" and calib[0][0].dtype == torch.float32
