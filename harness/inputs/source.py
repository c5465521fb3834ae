"""The input-source contract: what a scenario's `inputs: {dist: NAME, ...}` entry plugs into.

An input source produces q, k, v (and optionally a key padding mask) for one problem shape. It
declares its knobs (name -> default and validator), the problem axes it fixes (a source built on
captured model attention has fixed heads, head_dim and lengths), and a `make` that returns one
`InputBatch` per (split, seed). Sources are registered by name in `harness.inputs.SOURCES`; the
scenario loader validates knobs and fixed axes through this interface, and the pipeline calls
`harness.inputs.make_inputs`, which applies the scale, the dtype and the variant's layout.

Tensor shapes (canonical "bhnd" layout):
    q, k, v            (B, H, N, d) float32, on the requested device
    key_padding_mask   (B, N) bool, True = a real token, False = padding; None when every token is real
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from harness.common.checks import Check, Invalid

SPLITS: tuple[str, ...] = ("eval", "calib")
"""eval: the inputs a case is measured on. calib: the data learnable variants are fitted on."""

Shape = tuple[int, int, int, int]  # (B, H, N, d)

FIXABLE_AXES: tuple[str, ...] = ("batch", "heads", "seq_len", "head_dim", "causal")
"""Problem axes a source may fix (`InputSource.fixed_axes`): the shape of its data and masking."""


@dataclass(frozen=True)
class Knob:
    """One setting of a source: its default and the validator of a YAML value.

    check(raw, where) returns the validated value or raises `harness.common.checks.Invalid`
    naming `where` (a key path such as `inputs.window`).
    """

    default: Any
    check: Check
    doc: str = ""


@dataclass
class InputBatch:
    """One batch of attention inputs.

    q, k, v: (B, H, N, d) in the canonical layout (fp32 from a source; `make_inputs` casts to the
    problem's dtype and may transpose to (B, N, H, d) for "bnhd" variants).
    key_padding_mask: (B, N) bool, True where the token is real; None when nothing is padded.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    key_padding_mask: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # facts for the record's `info` (captured: texts hash)

    @property
    def qkv(self) -> tuple[Tensor, Tensor, Tensor]:
        """(q, k, v), e.g. for a variant's `fit`, which takes tuples."""
        return self.q, self.k, self.v


class InputSource:
    """Base class of every input source (one file per source; see docs/inputs.md).

    Subclasses set `name`, `description` and `knobs`, and implement `make`; a source that only
    supports some problem shapes overrides `fixed_axes`. The constructor takes no arguments and
    should be cheap (the scenario loader builds one to validate a scenario): load any data
    lazily in `make`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    knobs: ClassVar[dict[str, Knob]] = {}
    pads: ClassVar[bool] = False  # its batches may carry a key padding mask (variable-length inputs)
    regime_knobs: ClassVar[tuple[str, ...]] = ()  # knobs that name a regime of their own (captured: layer)
    probe_weights: ClassVar[bool] = False  # kernel cases also record KL(softmax || variant weights)

    def unavailable(self, options: Mapping[str, Any]) -> list[str]:
        """Why this source cannot run here (a missing optional package, with the install command);
        a case with reasons is `skipped`. [] (the default) when it can."""
        return []

    def options(self, given: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> dict[str, Any]:
        """Every knob: its default updated by `given`. Unknown names raise ValueError."""
        given = dict(given)
        unknown = sorted(set(given) - set(self.knobs))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for input source {self.name!r}; expected {sorted(self.knobs)}"
            )
        return {name: given.get(name, knob.default) for name, knob in self.knobs.items()}

    def check_knob(self, name: str, raw: Any, where: str) -> Any:
        """Validate one YAML knob value with its validator; raises Invalid(where, ...)."""
        if name not in self.knobs:
            allowed = ", ".join(self.knobs) or "none"
            raise Invalid(where, f"not a knob of input source {self.name} (its knobs: {allowed})")
        return self.knobs[name].check(raw, where)

    def check_options(self, options: Mapping[str, Any], where: str) -> None:
        """Checks across knobs, or against files the knobs name, made when a scenario loads (after each
        knob's own validator): raise `Invalid(f"{where}.<knob>", message)`. `options` holds every
        knob, defaults filled in. The default checks nothing."""

    def fixed_axes(self, options: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
        """Problem axes this source fixes, e.g. {"heads": (12,), "head_dim": (32,)}.

        Keys are in FIXABLE_AXES (batch, heads, seq_len, head_dim, causal: fields of the scenario's
        `problem:` block); values are the allowed values. A scenario whose axis takes any other value
        is rejected when it loads. {} (the default) means any shape works.
        """
        return {}

    def make(
        self,
        options: Mapping[str, Any],
        shape: Shape,
        causal: bool,
        split: str,
        seed: int,
        device: str,
    ) -> InputBatch:
        """One batch of `shape` = (B, H, N, d): q, k, v fp32 (B, H, N, d) on `device`.

        options: every knob (defaults filled in). causal: whether the problem is causal (a source
        may make queries attend to visible keys only). split: "eval" or "calib" (calibration data
        must come from the source's own calibration split, never the evaluation data). seed: the
        scenario's input seed plus the batch index; equal arguments must give equal tensors.
        The key padding mask, if any, is (B, N) bool with True = real token.
        """
        raise NotImplementedError(f"input source {self.name!r} does not implement make")
