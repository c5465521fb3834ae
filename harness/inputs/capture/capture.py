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
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.inputs.capture.model import ModelRef, load
from harness.inputs.capture.texts import texts_hash

CAPTURE = "attnbench_capture"
CAPTURE_VERSION = 2  # bump when what is stored changes
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


def projected_bytes(n_texts: int, layers: int, heads: int, head_dim: int, max_length: int) -> int:
    """Bytes of a capture: q, k, v fp32 (T, H, N, d) per layer and the (T, N) bool mask."""
    return n_texts * max_length * (3 * layers * heads * head_dim * 4 + 1)


def tensors_hash(tensors: dict[str, Tensor]) -> str:
    """sha256 (hex) of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().reshape(-1).view("uint8") if t.numel() else b"")
    return h.hexdigest()


class CacheEntryError(ValueError):
    """A cache entry that is not the capture it is filed under (the message names the file)."""


def _expected_meta(ref: ModelRef, texts: list[str], max_length: int) -> dict[str, str]:
    return {
        "model": ref.name,
        "weights_sha256": ref.weights_hash,
        "texts_hash": texts_hash(texts),
        "n_texts": str(len(texts)),
        "max_length": str(max_length),
        "capture_version": str(CAPTURE_VERSION),
    }


def verify_entry(path: Path, expected: dict[str, str]) -> dict[str, Tensor]:
    """The tensors of cache entry `path` after checking that it is the capture `expected` describes
    (its inputs: model, weights, texts hash, text count, max length, version), that every tensor
    has the shape that implies (mask (T, N); q.l, k.l, v.l (T, H, N, d) for l = 0 .. layers - 1)
    and that the tensors hash to the `tensors_sha256` stored with them. CacheEntryError otherwise."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CacheEntryError(f"{path}: unreadable capture ({_one_line(err)})") from None
    for name, want in expected.items():
        if meta.get(name) != want:
            found = meta.get(name)
            raise CacheEntryError(f"{path}: {name} is {found!r}, expected {want!r} (another capture)")
    n_texts, max_length = int(expected["n_texts"]), int(expected["max_length"])
    mask = tensors.get("mask")
    if mask is None or mask.dtype != torch.bool or tuple(mask.shape) != (n_texts, max_length):
        found = None if mask is None else (mask.dtype, tuple(mask.shape))
        raise CacheEntryError(f"{path}: mask is {found}, expected bool {(n_texts, max_length)}")
    layers = sum(1 for name in tensors if name.startswith("q."))
    wanted = {"mask"} | {f"{x}.{layer}" for layer in range(layers) for x in "qkv"}
    if layers == 0 or set(tensors) != wanted:
        raise CacheEntryError(f"{path}: tensors {sorted(tensors)}, expected mask and q, k, v of every layer")
    shape = tuple(tensors["q.0"].shape)  # (T, H, N, d)
    for name, t in tensors.items():
        if name == "mask":
            continue
        if t.dtype != torch.float32 or tuple(t.shape) != shape or shape[0::2][:2] != (n_texts, max_length):
            want = f"float32 (T={n_texts}, H, N={max_length}, d)"
            raise CacheEntryError(f"{path}: {name} is {t.dtype} {tuple(t.shape)}, expected {want}")
    if meta.get("tensors_sha256") != tensors_hash(tensors):
        raise CacheEntryError(f"{path}: the tensors do not match their stored sha256 (corrupt)")
    return tensors


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def write_entry(path: Path, tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    """Write a cache entry atomically: a temporary file beside it, then a rename over `path`."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={**meta, "tensors_sha256": tensors_hash(tensors)})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CaptureCacheWarning(UserWarning):
    """The capture cache could not be used; the capture is kept in memory (or was rebuilt)."""


_MEMO: dict[str, dict[str, Tensor]] = {}
CACHE_NOTES: dict[str, str] = {}  # capture key -> what happened to its cache entry (for records' info)
_WARNED: set[str] = set()


def _warn_once(topic: str, message: str) -> None:
    """One CaptureCacheWarning per `topic` (a cache folder) per process."""
    if topic not in _WARNED:
        _WARNED.add(topic)
        warnings.warn(message, CaptureCacheWarning, stacklevel=3)


def load_capture(ref: ModelRef, texts: list[str], max_length: int) -> dict[str, Tensor]:
    """The capture of `ref` on `texts` at `max_length`: from this process's memo, the disk cache
    (verified: `verify_entry`), or computed (on CPU) and written to the cache atomically.

    A bad entry (another capture, corrupt, truncated, wrong shapes) is rebuilt and replaced, with a
    warning naming the file; a cache that cannot be written (an unwritable folder, a path that is
    not a file) leaves the capture in memory, with one warning per folder. Either is noted in
    `CACHE_NOTES[key]`."""
    key = capture_key(ref, texts, max_length)
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir() / "captures" / f"{key}.safetensors"
    expected = _expected_meta(ref, texts, max_length)
    tensors = None
    if path.exists() or path.is_symlink():
        try:
            tensors = verify_entry(path, expected)
        except CacheEntryError as err:
            CACHE_NOTES[key] = f"rebuilt: {err}"
            warnings.warn(f"capture cache: {err}; rebuilding it", CaptureCacheWarning, stacklevel=2)
    if tensors is None:
        tokenizer, model = load(ref)
        tensors = capture_qkv(model, *tokenize(tokenizer, texts, max_length))
        try:
            write_entry(path, tensors, expected)
        except OSError as err:
            reason = f"{path}: cannot write the capture cache ({err.strerror or _one_line(err)})"
            CACHE_NOTES[key] = f"in memory: {reason}"
            _warn_once(str(path.parent), f"capture cache: {reason}; keeping the capture in memory")
    _MEMO.clear()  # one capture held at a time (the default set: ~0.2 GB; the long set at 512: ~0.9 GB)
    _MEMO[key] = tensors
    return tensors
