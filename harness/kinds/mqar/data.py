"""MQAR sequences: multi-query associative recall, as in the Zoology benchmark.

Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models",
arXiv 2312.04927; generator `multiquery_ar` in HazyResearch/zoology
(zoology/data/associative_recall.py). A sequence of length N holds `pairs` key-value pairs at
the start, `k1 v1 k2 v2 ...` (keys drawn without replacement from the lower half of the
vocabulary, token 0 excluded, values from the upper half), then each key once more as a query,
at even offsets of the rest of the sequence with power-law spacing (gap g in 0..N/2-pairs-1
drawn with probability ~ g^(power_a - 1), without replacement; small power_a puts most queries
close to the pairs). Every other position holds a random token (`random_non_queries`, Zoology's
function default) or token 0 (`random_non_queries: false`, as Zoology's published configurations
set it, e.g. experiments/paper_configs/iclr24_zoology_figure2/configs.py: random fillers are drawn
from the whole vocabulary, so with a small vocabulary or a long sequence they repeat keys, each
followed by a random token: a harder task that asks for the first occurrence of the key). The target
of a query position is the value bound to its key; every other position has target IGNORE (no
loss, no accuracy).

Written with torch here (Zoology uses numpy's per-row `apply_along_axis`): `torch.multinomial`
draws all rows at once, without replacement, from one seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -100  # target of positions that are not queries (torch.nn.functional.cross_entropy's default)


@dataclass(frozen=True)
class MQARSpec:
    """One MQAR task: vocabulary size, sequence length N, key-value pairs, query spacing."""

    vocab: int
    seq_len: int
    pairs: int
    power_a: float = 0.01
    random_non_queries: bool = True  # fillers: random tokens (True) or token 0 (False)

    def problems(self) -> list[str]:
        """Why this combination cannot be generated (empty: it can)."""
        out = []
        if self.seq_len % 2:
            out.append(f"seq_len {self.seq_len} must be even (queries sit at even offsets)")
        if 4 * self.pairs > self.seq_len:
            out.append(f"{self.pairs} pairs need seq_len >= 4 * pairs = {4 * self.pairs}, got {self.seq_len}")
        if self.vocab // 2 - 1 < self.pairs:
            out.append(
                f"vocab {self.vocab} has {self.vocab // 2 - 1} key tokens, fewer than {self.pairs} pairs"
            )
        if not 0 < self.power_a <= 1:
            out.append(f"power_a must be in (0, 1], got {self.power_a}")
        return out

    @property
    def chance(self) -> float:
        """Accuracy of guessing a value token uniformly: 1 / number of value tokens."""
        return 1.0 / (self.vocab - self.vocab // 2)


def _sample_rows(weights: Tensor, rows: int, size: int, gen: torch.Generator) -> Tensor:
    """`size` distinct indices per row, drawn with probability ~ weights. weights (M,) -> (rows, size)."""
    return torch.multinomial(weights.expand(rows, -1), size, replacement=False, generator=gen)


def mqar_batch(spec: MQARSpec, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """`batch` sequences of `spec` drawn from `gen` -> (inputs, targets), both (batch, seq_len) int64.

    targets[b, t] is the value bound to the key at a query position t, IGNORE elsewhere.
    """
    bad = spec.problems()
    if bad:
        raise ValueError("; ".join(bad))
    n, p, half = spec.seq_len, spec.pairs, spec.vocab // 2
    keys = _sample_rows(torch.ones(half - 1), batch, p, gen) + 1  # tokens 1 .. half-1
    values = _sample_rows(torch.ones(spec.vocab - half), batch, p, gen) + half  # half .. vocab-1
    context = 2 * p
    space = (n - context) // 2  # query slots: offsets 0, 2, ..., 2 * (space - 1) after the context
    gaps = torch.arange(1, space + 1, dtype=torch.float64) ** (spec.power_a - 1)
    slots = _sample_rows(gaps, batch, p, gen)  # (batch, p) distinct slot per query
    if spec.random_non_queries:
        inputs = torch.randint(0, spec.vocab, (batch, n), generator=gen)  # the filler tokens
    else:
        inputs = torch.zeros((batch, n), dtype=torch.long)  # token 0: never a key, value or query
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    query_pos = context + 2 * slots  # (batch, p)
    inputs.scatter_(1, query_pos, keys)
    targets = torch.full((batch, n), IGNORE, dtype=torch.long)
    targets.scatter_(1, query_pos, values)
    return inputs, targets


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (MQAR data is drawn on CPU, then moved)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
