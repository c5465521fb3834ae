"""captured: q, k, v of one attention layer of a pretrained encoder on a fixed text set.

The model (default `sentence-transformers/all-MiniLM-L6-v2`: 6 layers, 12 heads, head_dim 32) runs
once over the texts (`harness/inputs/capture/`: captured through transformers' attention
interface, cached on disk as safetensors), untimed. A case's batch is `batch` texts of a split
(the whole split when batch = len(texts) // 2; fewer: a subset drawn with the seed), each padded
to `max_length` tokens, all heads of layer `layer`:

    eval:  q, k, v (B, H, N, d) as the model computed them; key_padding_mask (B, N) from the tokenizer
    calib: the calibration texts' real tokens repeated to fill N (token t of text i is token
           t mod n_i), no padding and no mask: learnable variants fit on real q, k pairs only
           (their `fit` takes no mask)

Fixes heads and head_dim (the model's), seq_len (max_length), batch (<= len(texts) // 2) and
causal (false: an encoder). Needs the `quality` extra; without it a case is skipped with the
install command. Records carry the texts hash and model weights hash in `info`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from harness.common.checks import Invalid, as_str, non_negative_int, optional, positive, positive_int
from harness.inputs.capture import capture, model, texts
from harness.inputs.source import InputBatch, InputSource, Knob, Shape

DEFAULT_LIMIT_GB = 4.0  # `capture_limit_gb`: the largest capture (in memory and in the cache) by default


def _texts_file(raw: Any, where: str) -> str | None:
    """A packaged set's name (short, long), a path to a usable texts file, or null (short): the
    file is read and bounded here (texts.read_texts: size, UTF-8, 2 .. MAX_TEXTS documents)."""
    name = optional(as_str)(raw, where)
    try:
        texts.read_texts(name)
    except texts.TextsError as err:
        raise Invalid(where, str(err)) from None
    return name


def select_texts(n_texts: int, split: str, batch: int, seed: int) -> list[int]:
    """Indices of the `batch` texts of `split` a case uses: the whole split when batch is its size,
    else a sorted subset drawn with `seed`. ValueError when the split has fewer texts."""
    pool = texts.split_indices(n_texts, split)
    if batch > len(pool):
        raise ValueError(f"captured: batch {batch} exceeds the {len(pool)} texts of the {split} split")
    if batch < len(pool):
        gen = torch.Generator().manual_seed(seed)
        pool = sorted(pool[i] for i in torch.randperm(len(pool), generator=gen)[:batch].tolist())
    return pool


class CapturedSource(InputSource):
    """Real attention inputs: one layer of a pretrained encoder on fixed texts."""

    name: ClassVar[str] = "captured"
    description: ClassVar[str] = "q, k, v of one layer of a pretrained encoder (MiniLM) on fixed texts"
    knobs: ClassVar[dict[str, Knob]] = {
        "model": Knob(model.DEFAULT_MODEL, as_str, "a Hugging Face model id or a local model folder"),
        "layer": Knob(0, non_negative_int, "the attention layer whose q, k, v are used (0-based)"),
        "texts": Knob(None, _texts_file, "short, long or a texts file, one document per block (null: short)"),
        "max_length": Knob(64, positive_int, "tokens per text after padding / truncation (= seq_len)"),
        "capture_limit_gb": Knob(
            DEFAULT_LIMIT_GB, positive, "the largest capture allowed (GB = 1e9 bytes): raise it for more"
        ),
    }
    regime_knobs: ClassVar[tuple[str, ...]] = ("layer",)
    pads: ClassVar[bool] = True
    probe_weights: ClassVar[bool] = True

    def unavailable(self, options: Mapping[str, Any]) -> list[str]:
        reason = model.missing_reason()
        return [reason] if reason else []

    def check_options(self, options: Mapping[str, Any], where: str) -> None:
        """Bounds that need the model's config.json (read without weights or transformers): the
        model folder, `layer` below its layer count, `max_length` within its positions, and the
        capture's projected size within `capture_limit_gb`. Raises Invalid naming the knob; a hub id
        that is not on this machine is checked when it is downloaded."""
        try:
            config = model.read_config(options["model"])
            if config is None:
                return
            file = f"{model.local_folder(options['model'])}/config.json"
            layers, heads, head_dim = model.attention_shape(config, file)
            positions = model.max_positions(config, file)
        except model.ModelConfigError as err:
            raise Invalid(f"{where}.model", str(err)) from None
        if int(options["layer"]) >= layers:
            raise Invalid(
                f"{where}.layer", f"expected 0 .. {layers - 1} ({options['model']} has {layers} layers), "
                f"found {options['layer']}"
            )  # fmt: skip
        n = int(options["max_length"])
        if n > positions:
            raise Invalid(
                f"{where}.max_length",
                f"expected at most {positions} (max_position_embeddings of {file}), found {n}",
            )
        n_texts = len(texts.read_texts(options["texts"]))
        size = capture.projected_bytes(n_texts, layers, heads, head_dim, n)
        limit = float(options["capture_limit_gb"])
        if size > limit * 1e9:
            raise Invalid(
                f"{where}.max_length",
                f"the capture of {n_texts} texts x {layers} layers at {n} tokens would take "
                f"{size / 1e9:.1f} GB, over capture_limit_gb {limit:g}: shorten max_length or the texts, "
                "or raise capture_limit_gb",
            )

    def fixed_axes(self, options: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
        half = len(texts.read_texts(options["texts"])) // 2
        fixed: dict[str, tuple[Any, ...]] = {
            "seq_len": (int(options["max_length"]),),
            "batch": tuple(range(1, half + 1)),
            "causal": (False,),
        }
        config = model.read_config(options["model"])
        if config is not None:
            layers, heads, head_dim = model.attention_shape(config, options["model"])
            fixed.update(heads=(heads,), head_dim=(head_dim,))
        return fixed

    def load(self, options: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str], model.ModelRef]:
        """(capture tensors, texts, model ref) for these options; ValueError for a layer out of range."""
        ref = model.resolve(options["model"])
        text_list = texts.read_texts(options["texts"])
        tensors = capture.load_capture(ref, text_list, int(options["max_length"]))
        layer = int(options["layer"])
        if f"q.{layer}" not in tensors:
            layers = sum(1 for name in tensors if name.startswith("q."))
            raise ValueError(f"captured: layer {layer} out of range; {options['model']} has {layers} layers")
        return tensors, text_list, ref

    def make(
        self,
        options: Mapping[str, Any],
        shape: Shape,
        causal: bool,
        split: str,
        seed: int,
        device: str,
    ) -> InputBatch:
        """q, k, v (B, H, N, d) fp32 of layer `options["layer"]` for B texts of `split` (see module doc)."""
        if causal:
            raise ValueError("captured attention comes from a bidirectional encoder; causal is not supported")
        tensors, text_list, ref = self.load(options)
        idx = torch.tensor(select_texts(len(text_list), split, shape[0], seed))
        layer = int(options["layer"])
        q, k, v = (tensors[f"{n}.{layer}"][idx] for n in "qkv")  # (B, H, N, d)
        mask = tensors["mask"][idx]  # (B, N) bool
        if split == "calib":  # real tokens repeated to fill N: token t of text i is token t mod n_i
            n = mask.sum(dim=1, keepdim=True)  # (B, 1)
            if not bool((mask == (torch.arange(mask.shape[1])[None, :] < n)).all()):
                raise ValueError("captured: calibration needs right-padded texts (real tokens first)")
            pos = torch.arange(mask.shape[1])[None, :] % n  # (B, N)
            gather = pos[:, None, :, None].expand_as(q)
            q, k, v = (x.gather(2, gather) for x in (q, k, v))
            return InputBatch(*(x.to(device).contiguous() for x in (q, k, v)))
        info = {
            "model": ref.name,
            "texts": options["texts"] or "short",
            "weights_sha256": ref.weights_hash[:16],
            "texts_hash": texts.texts_hash(text_list),
        }
        note = capture.CACHE_NOTES.get(capture.capture_key(ref, text_list, int(options["max_length"])))
        if note:
            info["capture_cache"] = note
        return InputBatch(*(x.to(device).contiguous() for x in (q, k, v)), mask.to(device), info)
