"""The tiny causal language model MQAR trains: any registered attention variant in its slot.

    tokens (B, N) -> token + position embedding (B, N, C), C = heads * head_dim
      -> layers x [x += proj(variant(q, k, v, causal=True)) of norm(x); x += mlp(norm(x))]
      -> norm -> head (B, N, vocab) logits

nanoGPT-shaped (Karpathy, github.com/karpathy/nanoGPT model.py: pre-norm blocks, GELU MLP of
width 4C, learned positions), without dropout or weight tying. `shift` (off here by default, on
in the `task:` block's defaults) adds an embedding of the previous token (a table of its own) to
each token's: a causal convolution of width 2 over the tokens, like the short convolutions
Zoology puts in front of its sequence mixers. It hands each value the key before it, so one
attention layer can do the lookup. The variant's learnable parameters (LUNA's feature maps, Luna
nested's pack queries) are parameters of this model and train with it, end to end.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from harness.plugins.contract import AttentionVariant


class VariantAttention(nn.Module):
    """Multi-head self-attention whose core is an attention variant instance (any layout)."""

    def __init__(self, variant: AttentionVariant, layout: str, heads: int, head_dim: int) -> None:
        super().__init__()
        width = heads * head_dim
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.variant, self.layout, self.heads, self.head_dim = variant, layout, heads, head_dim

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, C) -> (B, N, C); the variant runs causally."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).unbind(dim=2)  # (B, N, H, d) each
        if self.layout == "bhnd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = self.variant(q, k, v, True)
        if self.layout == "bhnd":
            out = out.transpose(1, 2)
        return self.proj(out.reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: attention through the variant, then a GELU MLP of width 4C."""

    def __init__(self, attention: VariantAttention, width: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), attention
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, C) -> (B, N, C)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """Token and position embeddings, `len(variants)` blocks, final norm and a vocabulary head."""

    def __init__(
        self,
        variants: list[AttentionVariant],
        layout: str,
        vocab: int,
        max_len: int,
        heads: int,
        head_dim: int,
        shift: bool = False,
    ) -> None:
        super().__init__()
        width = heads * head_dim
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(max_len, width)
        self.prev = nn.Embedding(vocab, width) if shift else None  # the previous token, its own embedding
        self.blocks = nn.ModuleList(
            Block(VariantAttention(v, layout, heads, head_dim), width) for v in variants
        )
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)
        for name, p in self.named_parameters():  # nanoGPT's init; the variants keep their own
            if ".variant." not in name and p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif ".variant." not in name and name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, N) int64 -> logits (B, N, vocab)."""
        x = self.tok(tokens)
        if self.prev is not None:  # token t also sees token t-1 (position 0 sees nothing)
            x = x + nn.functional.pad(self.prev(tokens[:, :-1]), (0, 0, 1, 0))
        x = x + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build_model(
    cls: type[AttentionVariant],
    params: Any,
    impl: str,
    *,
    layers: int,
    vocab: int,
    max_len: int,
    heads: int,
    head_dim: int,
    device: str = "cpu",
    shift: bool = False,
) -> TinyLM:
    """A TinyLM with `layers` fresh instances of the variant `cls` (fp32, on `device`)."""
    variants = [cls(params, impl, heads, head_dim, device, "fp32") for _ in range(layers)]
    model = TinyLM(variants, cls.layout_for(impl), vocab, max_len, heads, head_dim, shift=shift)
    return model.to(device)
