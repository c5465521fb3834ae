"""Capturing q, k, v of every attention layer through transformers' attention interface, and the
on-disk cache of captures.

`capture_qkv` runs an encoder whose attention goes through `transformers.AttentionInterface`
(BERT-style models do): it registers an attention function under the name `attnbench_capture`
(with the `sdpa` mask function), selects it with `model.set_attn_implementation`, and the
function stores the per-head q, k, v it is called with (after the projections, before the score)
and then computes exact attention with transformers' own `sdpa` function, so the model's output
is unchanged. All of it is untimed and runs once per (model, texts, max length): `load_capture`
keeps the result as safetensors under `cache_dir()/captures/<key>.safetensors`, key = sha256 of
(model name, weights sha256, texts hash, max length, CAPTURE_VERSION).

Shapes: input_ids, attention_mask (T, N) with T texts padded to N = max_length tokens;
captured q.<l>, k.<l>, v.<l> (T, H, N, d) fp32 per layer l; mask (T, N) bool, True = real token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.inputs.capture.model import ModelRef, load
from harness.inputs.capture.texts import texts_hash

CAPTURE = "attnbench_capture"
CAPTURE_VERSION = 1  # bump when what is stored changes
CHUNK = 16  # texts per model call while capturing (bounds memory only)


def cache_dir() -> Path:
    """$ATTNBENCH_CACHE, or ~/.cache/attnbench."""
    return Path(os.environ.get("ATTNBENCH_CACHE") or Path.home() / ".cache" / "attnbench")


def register_attention(name: str, fn: Callable[..., tuple[Tensor, Tensor | None]]) -> None:
    """Register `fn` as transformers attention implementation `name`, with the sdpa mask function
    (a (B, 1, Nq, Nk) bool mask, True = attend, or None when nothing is padded)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)


def key_padding_from(mask: Tensor | None, batch: int, n: int) -> Tensor | None:
    """The (B, N) bool key padding mask (True = real) from transformers' (B, 1, Nq, Nk) bool mask."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError(f"expected a bool attention mask from the sdpa mask function, got {mask.dtype}")
    kpm = mask.expand(batch, 1, -1, n)[:, 0].any(dim=-2)  # key j is real if any query may see it
    return None if bool(kpm.all()) else kpm


@contextlib.contextmanager
def attention_implementation(model: Any, name: str) -> Iterator[None]:
    """Run `model` with attention implementation `name` inside the block, then restore the old one."""
    old = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(old)


def _sdpa(module: Any, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kw: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, mask, **kw)


def capture_qkv(
    model: Any, input_ids: Tensor, attention_mask: Tensor, chunk: int = CHUNK
) -> dict[str, Tensor]:
    """q.<l>, k.<l>, v.<l>: (T, H, N, d) fp32 per layer l, and mask (T, N) bool, of `model` on the
    given token ids (T, N) and attention mask (T, N) (1 = real token). Needs `module.layer_idx`."""
    store: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}

    def capturing(module: Any, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kw: Any):
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise ValueError(f"{type(module).__name__} has no layer_idx: cannot tell its layer")
        scaling = kw.get("scaling")
        if scaling is not None and abs(scaling - query.shape[-1] ** -0.5) > 1e-6:
            raise ValueError(f"layer {layer} scales scores by {scaling}, not 1/sqrt(head_dim)")
        store.setdefault(int(layer), []).append(tuple(x.detach().float().cpu() for x in (query, key, value)))
        return _sdpa(module, query, key, value, mask, **kw)

    register_attention(CAPTURE, capturing)
    device = next(model.parameters()).device
    with torch.no_grad(), attention_implementation(model, CAPTURE):
        for start in range(0, input_ids.shape[0], chunk):
            sl = slice(start, start + chunk)
            model(input_ids=input_ids[sl].to(device), attention_mask=attention_mask[sl].to(device))
    out: dict[str, Tensor] = {"mask": attention_mask.bool().cpu().contiguous()}
    for layer, parts in sorted(store.items()):
        for i, name in enumerate("qkv"):
            out[f"{name}.{layer}"] = torch.cat([p[i] for p in parts]).contiguous()
    return out


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), both (T, max_length) int64, padded and truncated to max_length."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def capture_key(ref: ModelRef, texts: list[str], max_length: int) -> str:
    """The content address of a capture (hex, 24 digits)."""
    ident = [ref.name, ref.weights_hash, texts_hash(texts), max_length, CAPTURE_VERSION]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]


_MEMO: dict[str, dict[str, Tensor]] = {}


def load_capture(ref: ModelRef, texts: list[str], max_length: int) -> dict[str, Tensor]:
    """The capture of `ref` on `texts` at `max_length`: from this process's memo, the disk cache,
    or computed (on CPU) and written to the cache (atomically: a temporary file, then a rename)."""
    from safetensors.torch import load_file, save_file

    key = capture_key(ref, texts, max_length)
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir() / "captures" / f"{key}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
    else:
        tokenizer, model = load(ref)
        tensors = capture_qkv(model, *tokenize(tokenizer, texts, max_length))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        meta = {"model": ref.name, "weights_sha256": ref.weights_hash, "texts_hash": texts_hash(texts)}
        save_file(tensors, str(tmp), metadata={**meta, "max_length": str(max_length)})
        os.replace(tmp, path)
    _MEMO.clear()  # one capture held at a time (each is ~0.2 GB for the default set)
    _MEMO[key] = tensors
    return tensors
