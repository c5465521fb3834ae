"""Swapping a model's attention for registered variants, and the fidelity of its sentence embeddings.

The swap goes through transformers' attention interface: `LayerSwap` is registered as the
attention implementation `attnbench_swap` (with the sdpa mask function) and routes each call to
the function of the calling layer (`module.layer_idx`): q, k, v (B, H, N, d) and the key padding
mask (B, N) bool (True = real token; None when nothing is padded) -> output (B, H, N, d).
Sentence embeddings are computed as the sentence-transformers model does: mean pooling over the
real tokens of the last hidden state, then L2 normalization.

Fidelity against the original embeddings E0 (T, D) of the evaluation texts:
    cos_i = <E_i, E0_i> (both normalized); cos_mean, cos_p5 = mean and 5th percentile over texts
    spearman = Spearman correlation (scipy) of the pairwise similarities E E^T and E0 E0^T over
               pairs i < j
    max_abs_diff = max |E - E0| (the exact-softmax self-test holds it below 1e-5)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from harness import inputs
from harness.inputs.capture.capture import attention_implementation, key_padding_from, register_attention
from harness.plugins.contract import AttentionVariant

SWAP = "attnbench_swap"
CHUNK = 16  # texts per model call (bounds memory only)

LayerFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


def variant_fn(variant: AttentionVariant, layout: str, dtype: torch.dtype) -> LayerFn:
    """A layer function calling `variant.forward(q, k, v, causal=False, key_padding_mask=...)` in the
    variant's layout and `dtype`; q, k, v and the output canonical (B, H, N, d), in q's dtype."""

    def fn(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None) -> Tensor:
        args = [x.to(dtype) for x in (q, k, v)]
        if layout == "bnhd":
            args = [x.transpose(1, 2).contiguous() for x in args]
        kw = {} if kpm is None else {"key_padding_mask": kpm}
        out = variant(*args, False, **kw)
        return inputs.to_canonical(out, layout).to(q.dtype)

    return fn


def uniform_fn(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None) -> Tensor:
    """Uniform attention: every query gets the mean of the real values. v (B, H, N, d) -> same shape."""
    if kpm is None:
        return v.mean(dim=-2, keepdim=True).expand_as(v)
    w = kpm.to(v.dtype)[:, None, :, None]  # (B, 1, N, 1)
    return ((v * w).sum(dim=-2, keepdim=True) / w.sum(dim=-2, keepdim=True)).expand_as(v)


class LayerSwap:
    """The registered attention function: routes layer l's call to `layers[l]`."""

    def __init__(self, layers: dict[int, LayerFn]) -> None:
        self.layers = layers

    def __call__(
        self, module: Any, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kw: Any
    ) -> tuple[Tensor, None]:
        layer = getattr(module, "layer_idx", None)
        if layer not in self.layers:
            raise ValueError(f"no swapped attention for layer {layer!r} of {type(module).__name__}")
        kpm = key_padding_from(mask, query.shape[0], key.shape[-2])
        out = self.layers[layer](query, key, value, kpm)  # (B, H, N, d)
        return out.transpose(1, 2).contiguous(), None  # (B, N, H, d), as transformers' functions return


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Normalized mean of the real tokens: hidden (T, N, D), attention_mask (T, N) -> (T, D)."""
    w = attention_mask.to(hidden.dtype)[..., None]
    pooled = (hidden * w).sum(dim=1) / w.sum(dim=1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def embed(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    layers: dict[int, LayerFn] | None = None,
    per_text: bool = False,
) -> Tensor:
    """Sentence embeddings (T, D) of token ids (T, N), with every layer swapped when `layers` is given.

    per_text: run each text alone, cut to its real tokens (no padding, no mask reaches the
    attention): for variants without key-padding-mask support.
    """
    device = next(model.parameters()).device
    outs = []
    swap = contextlib_swap(model, layers)
    with torch.no_grad(), swap:
        if per_text:
            for ids, am in zip(input_ids, attention_mask, strict=True):
                n = int(am.sum())
                ids1, am1 = ids[None, :n].to(device), am[None, :n].to(device)
                outs.append(mean_pool(model(input_ids=ids1, attention_mask=am1).last_hidden_state, am1))
        else:
            for start in range(0, input_ids.shape[0], CHUNK):
                ids, am = (x[start : start + CHUNK].to(device) for x in (input_ids, attention_mask))
                outs.append(mean_pool(model(input_ids=ids, attention_mask=am).last_hidden_state, am))
    return torch.cat(outs).float().cpu()


def contextlib_swap(model: Any, layers: dict[int, LayerFn] | None) -> Any:
    """A context manager running `model` with `layers` swapped in (or unchanged when None)."""
    import contextlib

    if layers is None:
        return contextlib.nullcontext()
    register_attention(SWAP, LayerSwap(layers))
    return attention_implementation(model, SWAP)


def fidelity(emb: Tensor, ref: Tensor) -> dict[str, float | None]:
    """cos_mean, cos_p5, spearman, max_abs_diff of embeddings (T, D) against the original (T, D)."""
    from scipy.stats import spearmanr

    cos = (emb.double() * ref.double()).sum(dim=-1)
    pairs = torch.triu_indices(len(ref), len(ref), offset=1)
    sim, sim0 = (x.double() @ x.double().T for x in (emb, ref))
    rho = spearmanr(sim[pairs[0], pairs[1]].numpy(), sim0[pairs[0], pairs[1]].numpy()).statistic
    return {
        "cos_mean": float(cos.mean()),
        "cos_p5": float(torch.quantile(cos, 0.05)),
        "spearman": float(rho) if rho == rho else None,  # nan when one side is constant
        "max_abs_diff": float((emb - ref).abs().max()),
    }
