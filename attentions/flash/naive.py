"""The fp32 reference `flash` is checked against: exact softmax attention, the same function as
`attentions/softmax/naive.py` (imported from there, not written twice).

    scores = q k^T / sqrt(d)                      (N, N) per batch and head
    scores[i, j] hidden for j > i (causal) and for padded keys j
    out = softmax(scores, dim=-1) v

FlashAttention computes exactly this function, tiled so the N x N matrix never reaches main
memory (online softmax). The reference runs in fp32 (fp64 if the inputs are fp64) in the
canonical (B, H, N, d) layout; the flash_attn and xformers impls take (B, N, H, d), so the
conformance checks transpose their inputs and outputs around it.
"""

from __future__ import annotations

from torch import Tensor

from attentions.softmax.naive import softmax_attention as exact_attention

__all__ = ["exact_attention", "reference"]


def reference(
    variant: object, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of `flash`: exact softmax attention. (B, H, N, d) -> fp32."""
    return exact_attention(q, k, v, causal, key_padding_mask)
