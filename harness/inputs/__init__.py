"""Input sources: where a case's q, k, v come from.

A scenario's `inputs: {dist: NAME, scale, seed, <knobs>}` names a source registered in
`SOURCES` (built-ins in `harness.inputs.builtin`, one file each; other packages through the
`attnbench.inputs` entry-point group). `make_inputs` turns a problem and an `InputSpec` into an
`InputBatch` in the problem's dtype and the variant's layout; `calibration_batches` gives a
learnable variant its fitting data from the source's calibration split. See docs/inputs.md.

Shapes: q, k, v (B, H, N, d) in the canonical "bhnd" layout, (B, N, H, d) in "bnhd";
key_padding_mask (B, N) bool, True = real token, or None.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from harness.inputs.entropy import band_mass, softmax_row_entropy
from harness.inputs.source import FIXABLE_AXES, SPLITS, InputBatch, InputSource, Knob
from harness.inputs.spec import InputSpec
from harness.plugins.contract import LAYOUTS, FitSpec, Problem
from harness.plugins.registry import PluginLoadError, Registry

__all__ = [
    "FIXABLE_AXES",
    "SOURCES",
    "SPLITS",
    "InputBatch",
    "InputSource",
    "InputSpec",
    "Knob",
    "band_mass",
    "calibration_batches",
    "get_source",
    "knob_owners",
    "make_inputs",
    "make_qkv",
    "regime_name",
    "softmax_row_entropy",
    "to_canonical",
]

SOURCES: Registry[type[InputSource]] = Registry(
    "input source", group="attnbench.inputs", builtins="harness.inputs.builtin", base=InputSource
)


def get_source(name: str) -> InputSource:
    """A new instance of the source registered as `name`; ValueError (did-you-mean) when unknown."""
    if name not in SOURCES:
        raise ValueError(str(SOURCES.unknown(name)))
    return SOURCES.get(name)()


def regime_name(spec: InputSpec) -> str:
    """The regime's name in records (`input_dist`) and reports: the dist, plus the knobs its source
    lists in `regime_knobs` when set, e.g. `captured[layer=3]`."""
    source = SOURCES.get(spec.dist)()
    options = source.options(spec.options)
    named = [f"{k}={options[k]}" for k in source.regime_knobs]
    return spec.dist + (f"[{','.join(named)}]" if named else "")


def knob_owners() -> dict[str, list[str]]:
    """Every knob name of the registered sources -> the sorted names of the sources that have it.

    Sources that cannot be imported are skipped (this only feeds error messages).
    """
    owners: dict[str, list[str]] = {}
    for name in SOURCES.names():
        try:
            cls = SOURCES.get(name)
        except PluginLoadError:
            continue
        for knob in cls.knobs:
            owners.setdefault(knob, []).append(name)
    return owners


def _check_batch(batch: InputBatch, shape: tuple[int, int, int, int], name: str) -> None:
    """Raise ValueError unless q, k, v are (B, H, N, d) tensors and the mask is (B, N) bool or None."""
    for label, x in (("q", batch.q), ("k", batch.k), ("v", batch.v)):
        if not isinstance(x, Tensor) or tuple(x.shape) != shape:
            found = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"input source {name!r} returned {label} of shape {found}, expected {shape}")
    mask = batch.key_padding_mask
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (shape[0], shape[2])):
        raise ValueError(
            f"input source {name!r} returned a key_padding_mask of shape {tuple(mask.shape)} and dtype "
            f"{mask.dtype}, expected ({shape[0]}, {shape[2]}) bool"
        )


def make_inputs(
    problem: Problem,
    spec: InputSpec,
    layout: str = "bhnd",
    split: str = "eval",
    index: int = 0,
    requires_grad: bool = False,
    device: str | None = None,
) -> InputBatch:
    """Batch `index` of the `split` split of `spec`'s source for `problem`.

    q, k, v: (B, H, N, d) ("bhnd") or (B, N, H, d) ("bnhd", transposed and contiguous), in the
    problem's dtype, on `device` (default `problem.device`); q and k multiplied by `spec.scale`.
    The source draws with seed `spec.seed + index`. With `requires_grad` the three are leaf
    tensors that require grad. key_padding_mask stays (B, N) bool (or None) in every layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    source = get_source(spec.dist)
    options = source.options(spec.options)
    for axis, allowed in source.fixed_axes(options).items():
        if getattr(problem, axis) not in allowed:
            raise ValueError(
                f"input source {spec.dist!r} needs {axis} in {list(allowed)}, got {getattr(problem, axis)!r}"
            )
    shape = (problem.batch, problem.heads, problem.seq_len, problem.head_dim)
    raw = source.make(options, shape, problem.causal, split, spec.seed + index, device or problem.device)
    _check_batch(raw, shape, spec.dist)
    out = []
    for x, s in ((raw.q, spec.scale), (raw.k, spec.scale), (raw.v, 1.0)):
        x = (x * s if s != 1.0 else x).to(problem.torch_dtype)
        if layout == "bnhd":
            x = x.transpose(1, 2).contiguous()
        out.append(x.requires_grad_(requires_grad))
    return InputBatch(out[0], out[1], out[2], raw.key_padding_mask, raw.info)


def calibration_length(problem: Problem, spec: InputSpec, fit: FitSpec) -> int:
    """The length Nc of the calibration batches: fit.seq_len or min(problem.seq_len, 1024), or
    problem.seq_len when the source fixes seq_len. A fit depends on N only through Nc."""
    source = get_source(spec.dist)
    fixed = source.fixed_axes(source.options(spec.options))
    return problem.seq_len if "seq_len" in fixed else fit.seq_len or min(problem.seq_len, 1024)


def calibration_batches(problem: Problem, spec: InputSpec, fit: FitSpec) -> list[InputBatch]:
    """`fit.batches` fp32 (B, H, Nc, d) batches from the calibration split, on problem.device.

    Nc = fit.seq_len or min(problem.seq_len, 1024), or problem.seq_len when the source fixes
    seq_len. Batch i is index fit.seed + i of the "calib" split (synthetic sources: seed
    spec.seed + 10_000 + fit.seed + i), never the evaluation data.
    """
    calib = dataclasses.replace(problem, seq_len=calibration_length(problem, spec, fit), dtype="fp32")
    return [make_inputs(calib, spec, split="calib", index=fit.seed + i) for i in range(fit.batches)]


def make_qkv(
    problem: Problem,
    spec: InputSpec,
    layout: str = "bhnd",
    seed_offset: int = 0,
    requires_grad: bool = False,
    device: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(q, k, v) of `make_inputs(problem, spec, layout, index=seed_offset, ...)`, without the mask."""
    batch = make_inputs(problem, spec, layout, index=seed_offset, requires_grad=requires_grad, device=device)
    return batch.qkv


def to_canonical(x: Tensor, layout: str) -> Tensor:
    """A tensor in `layout` -> "bhnd" (B, H, N, d): transposes "bnhd", returns "bhnd" unchanged."""
    if layout == "bhnd":
        return x
    if layout == "bnhd":
        return x.transpose(1, 2)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
