"""The variant contract: problems, capabilities and the base class every attention implements.

`attentions/` imports only this module and `harness.measure.costs`. The runner builds a `Problem` per
case, asks the variant class whether it supports it (`not_supported_reasons`), instantiates it
with its resolved `Params`, `impl` and the shapes it needs (`heads`, `head_dim`, `device`, `dtype`;
never the `Problem`, which describes a benchmark case), optionally `fit`s it, then calls `forward`
on inputs built in the variant's declared `layout`. The class also names its fp32 reference
(`reference`, a lazy "module:function" into its `naive.py`) and its tolerances against it
(`tolerances`); `harness.plugins.conformance` holds the checks every variant must pass.

Tensor layouts:
    "bhnd": (batch B, heads H, seq N, head_dim d)  -- the canonical layout
    "bnhd": (batch B, seq N, heads H, head_dim d)  -- flash_attn / xformers / fla
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES: tuple[str, ...] = ("fwd", "bwd", "fwd_bwd")
LAYOUTS: tuple[str, ...] = ("bhnd", "bnhd")


@dataclass(frozen=True)
class Problem:
    """One attention problem: shapes, dtype, device, masking and what is measured."""

    batch: int
    heads: int
    seq_len: int
    head_dim: int
    dtype: str = "fp32"  # one of DTYPES
    device: str = "cpu"  # "cpu" | "cuda"
    causal: bool = False
    mode: str = "fwd"  # one of MODES
    masked: bool = False  # a key-padding mask is passed (B, N) bool, True = a real token

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def needs_backward(self) -> bool:
        return self.mode in ("bwd", "fwd_bwd")


@dataclass(frozen=True)
class Capabilities:
    """What a variant can run. Anything outside these becomes a readable `skipped` reason."""

    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16")
    causal: bool = True
    non_causal: bool = True
    backward: bool = True
    head_dim_min: int = 1
    head_dim_max: int | None = None
    requires: tuple[str, ...] = ()  # importable module names of optional packages
    learnable: bool = False  # has parameters that `fit` trains
    layout: str = "bhnd"  # input/output layout, one of LAYOUTS
    exact: bool = False  # computes exact softmax attention (up to rounding)
    masking: bool = False  # forward honours key_padding_mask (padded keys receive no attention)
    # False for a mixer that is not an approximation of softmax attention (DeltaNet): kernel cases
    # record time and memory, and the error columns are marked not applicable with the reason
    approximates_softmax: bool = True


@dataclass(frozen=True)
class Tolerance:
    """Largest relative Frobenius error allowed for the outputs and for the gradients.

    In `AttentionVariant.tolerances`, keyed by dtype: "fp32" against the variant's fp32 reference;
    "bf16" / "fp16" against the same impl run in fp32 on the rounded inputs.
    """

    output: float
    grad: float


@dataclass(frozen=True)
class FitSpec:
    """How a learnable variant is distilled to exact softmax (untimed, before accuracy)."""

    steps: int = 200
    lr: float = 1e-2
    seed: int = 1234  # calibration inputs and any sampling inside fit
    batches: int = 4  # calibration batches drawn from the scenario's input distribution
    seq_len: int | None = None  # calibration length; None = min(case seq_len, 1024)
    rows: int = 256  # query rows per batch used for the softmax teacher
    mse_weight: float = 0.0  # loss = KL(softmax || variant weights) + mse_weight * output MSE


@dataclass
class FitResult:
    """What `fit` reports; the runner stores it beside the accuracy metrics."""

    steps: int
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)


class Teacher:
    """Exact softmax attention on selected query rows, for distillation. For q, k, v (B, H, N, d)
    fp32 and rows (R,): `weights` (B, H, R, N) (causal: keys j > i masked), `outputs` (B, H, R, d)."""

    def __init__(self, causal: bool) -> None:
        self.causal = causal

    def logits(self, q: Tensor, k: Tensor, rows: Tensor) -> Tensor:
        scores = q[:, :, rows] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, R, N)
        if self.causal:
            cols = torch.arange(k.shape[-2], device=k.device)
            scores = scores.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
        return scores

    def weights(self, q: Tensor, k: Tensor, rows: Tensor) -> Tensor:
        return torch.softmax(self.logits(q, k, rows), dim=-1)

    def outputs(self, q: Tensor, k: Tensor, v: Tensor, rows: Tensor) -> Tensor:
        return self.weights(q, k, rows) @ v


@dataclass(frozen=True)
class NoParams:
    """Params of a variant without hyperparameters."""


def missing_packages(modules: Sequence[str]) -> list[str]:
    """Names in `modules` that cannot be imported here (checked without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


class AttentionVariant(nn.Module):
    """Base class of every attention variant.

    Subclasses set the class attributes, define a frozen `Params` dataclass and implement `forward`,
    `flop_terms` and `bytes_moved` (learnable ones also `fit`, with `capabilities.learnable`). An
    instance is built per case, `cls(params, impl, heads, head_dim, device, dtype)`, right after
    `torch.manual_seed(seed)`: draws from torch's default generator in `__init__` are deterministic.

    Required class attributes: `name`, `version`, `paper`, `reference_impl` (the upstream code
    it follows), `reference` ("module:function" of the fp32 reference, signature
    `fn(variant, q, k, v, causal, key_padding_mask=None) -> Tensor` on canonical (B, H, N, d)
    inputs, reading the instance's parameters) and `tolerances` (at least "fp32").
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    paper: ClassVar[str] = ""
    reference_impl: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # "module:function", the fp32 reference (see the class docstring)
    impl_references: ClassVar[dict[str, str]] = {}  # per-impl overrides of `reference`
    tolerances: ClassVar[dict[str, Tolerance]] = {}  # dtype -> Tolerance; "fp32" is required
    known_defects: ClassVar[dict[str, str]] = {}  # "impl:check" -> documented upstream defect
    flop_rtol: ClassVar[float] = 1e-9  # |FlopCounterMode - matmul model| / counted allowed
    Params: ClassVar[type] = NoParams
    impls: ClassVar[tuple[str, ...]] = ("default",)  # first is the default
    capabilities: ClassVar[Capabilities] = Capabilities()
    impl_requires: ClassVar[dict[str, tuple[str, ...]]] = {}  # extra packages per impl
    # params sets (scenario `params:` dicts) the contract tests check besides the defaults
    contract_params: ClassVar[tuple[dict[str, Any], ...]] = ()

    def __init__(
        self, params: Any, impl: str, heads: int, head_dim: int, device: str = "cpu", dtype: str = "fp32"
    ) -> None:
        super().__init__()
        self.params = params
        self.impl = impl
        self.heads = heads
        self.head_dim = head_dim
        self.device = device  # "cpu" | "cuda"
        self.dtype = dtype  # one of DTYPES: the dtype of the inputs this instance is built for

    # ----- static description -------------------------------------------------------------
    @classmethod
    def param_fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls.Params)}

    @classmethod
    def make_params(cls, values: dict[str, Any]) -> Any:
        """Build `Params` from a mapping; unknown names raise `KeyError` listing valid ones."""
        known = cls.param_fields()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise KeyError(f"unknown param(s) {unknown} for {cls.name}; expected {sorted(known)}")
        return cls.Params(**values)

    @classmethod
    def not_supported_reasons(cls, problem: Problem, params: Any, impl: str) -> list[str]:
        """Readable reasons this case cannot run; empty means supported.

        The base checks capabilities; subclasses extend with `super()` and their own rules.
        """
        caps = cls.capabilities_for(impl)
        reasons: list[str] = []
        if impl not in cls.impls:
            reasons.append(f"{cls.name} has no impl {impl!r} (impls: {', '.join(cls.impls)})")
        if problem.device not in caps.devices:
            reasons.append(f"{cls.name}/{impl} does not run on {problem.device}")
        if problem.dtype not in caps.dtypes:
            reasons.append(f"{cls.name}/{impl} does not support dtype {problem.dtype}")
        if problem.causal and not caps.causal:
            reasons.append(f"{cls.name}/{impl} has no causal form")
        if not problem.causal and not caps.non_causal:
            reasons.append(f"{cls.name}/{impl} is causal only")
        if problem.needs_backward and not caps.backward:
            reasons.append(f"{cls.name}/{impl} has no backward pass")
        if problem.masked and not caps.masking:
            reasons.append(f"{cls.name}/{impl} has no key-padding mask support")
        if problem.head_dim < caps.head_dim_min:
            reasons.append(f"{cls.name}/{impl} needs head_dim >= {caps.head_dim_min}")
        if caps.head_dim_max is not None and problem.head_dim > caps.head_dim_max:
            reasons.append(f"{cls.name}/{impl} supports head_dim <= {caps.head_dim_max}")
        missing = missing_packages(caps.requires + cls.impl_requires.get(impl, ()))
        if missing:
            reasons.append(f"{cls.name}/{impl} needs optional package(s) not installed: {', '.join(missing)}")
        return reasons

    @classmethod
    def capabilities_for(cls, impl: str) -> Capabilities:
        """What `impl` can run; `capabilities` unless an impl differs (e.g. in masking)."""
        return cls.capabilities

    @classmethod
    def reference_for(cls, impl: str) -> str:
        """The "module:function" of `impl`'s fp32 reference: `impl_references[impl]` or `reference`."""
        return cls.impl_references.get(impl, cls.reference)

    @classmethod
    def layout_for(cls, impl: str) -> str:
        """Input/output layout of `impl` ("bhnd" or "bnhd"), from `capabilities_for(impl)`; the
        runner builds inputs in it."""
        return cls.capabilities_for(impl).layout

    @classmethod
    def feature_dim(cls, problem: Problem, params: Any) -> int | None:
        """The feature dimension D the variant works at; None for exact attention."""
        return None

    @classmethod
    def state_bytes(cls, problem: Problem, params: Any, impl: str) -> float | None:
        """Bytes of the state a causal decoder of this variant keeps per sequence after
        `problem.seq_len` tokens, all heads of one layer, in the dtype it keeps it in (linear
        attention: the D x d state and D normalizer per head, fp32; exact attention: the K and V
        cache, 2 N d per head); None where no causal recurrent form exists. Recall
        benchmarks plot accuracy against it."""
        return None

    @classmethod
    def flop_terms(cls, problem: Problem, params: Any, impl: str) -> dict[str, float]:
        """FLOPs of one call of `impl` in `problem.mode` (whole batch, all heads), by part: what the
        impl executes (a masked half it computes, checkpoint recomputation). "*_matmul" parts are
        what FlopCounterMode counts (mm, bmm, addmm, baddbmm, `flop_counter_formulas` ops)."""
        raise NotImplementedError

    @classmethod
    def flops(cls, problem: Problem, params: Any, impl: str, matmul_only: bool = False) -> float:
        """FLOPs of one call of `impl` in `problem.mode`: the sum of `flop_terms` (only its
        "*_matmul" parts when `matmul_only`, what FlopCounterMode can check)."""
        terms = cls.flop_terms(problem, params, impl)
        return float(sum(v for key, v in terms.items() if not matmul_only or key.endswith("_matmul")))

    @classmethod
    def flop_counter_formulas(cls, impl: str) -> dict[Any, Callable[..., int]]:
        """FlopCounterMode `custom_mapping` (op -> fn(*shapes, **kwargs, out_val)) for fused ops
        of `impl` the counter has no formula for."""
        return {}

    @classmethod
    def bytes_moved(cls, problem: Problem, params: Any, impl: str) -> float:
        """Analytic minimum bytes read+written to main memory by `impl` in `problem.mode`."""
        raise NotImplementedError

    # ----- per-case behaviour -------------------------------------------------------------
    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
    ) -> Tensor:  # noqa: D401
        """Attention output in the variant's layout, same shape and dtype as `q`.

        key_padding_mask: (B, N) bool, True = a real token, False = padding (Hugging Face's
        `attention_mask`); padded keys receive no attention, outputs at padded query rows are
        unspecified. An impl without `masking` raises ValueError when given one.
        """
        raise NotImplementedError

    def fit(
        self,
        calib_batches: Sequence[tuple[Tensor, Tensor, Tensor]],
        teacher: Teacher,
        spec: FitSpec,
    ) -> FitResult:
        """Distil learnable parameters to `teacher` on calibration batches (B, H, N, d), fp32."""
        raise NotImplementedError(f"{self.name} has nothing to fit")

    def info(self) -> dict[str, Any]:
        """Extra per-case facts to record (e.g. that a package used its slow fallback path)."""
        return {}


def check_no_mask(variant: AttentionVariant, key_padding_mask: Tensor | None) -> None:
    """Raise ValueError when a mask reaches an impl without masking (never silently ignored)."""
    if key_padding_mask is not None:
        raise ValueError(f"{variant.name}/{variant.impl} has no key-padding mask support")


VariantFactory = Callable[..., AttentionVariant]
