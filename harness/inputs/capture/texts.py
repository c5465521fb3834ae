"""The fixed text set the captured attention is computed on, its hash and its two splits.

A text file holds one text per line; blank lines and lines starting with `#` are skipped. The
packaged default (`texts.txt` beside this module) has 64 texts of 2 to ~45 words. Split by text:
texts 0, 2, 4, ... are the calibration split, 1, 3, 5, ... the evaluation split (interleaved, so
both halves cover short and long texts), each `len(texts) // 2` texts long.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DEFAULT_TEXTS = Path(__file__).with_name("texts.txt")


def read_texts(path: str | None = None) -> list[str]:
    """The texts of `path` (default: the packaged set). ValueError when it holds fewer than 2."""
    file = Path(path).expanduser() if path else DEFAULT_TEXTS
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line and not line.startswith("#")]
    if len(texts) < 2:
        raise ValueError(f"{file}: expected at least 2 texts (one per line), found {len(texts)}")
    return texts


def texts_hash(texts: list[str]) -> str:
    """sha256 of the texts (joined by newlines), first 16 hex digits: recorded and cache-keyed."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]


def split_indices(n_texts: int, split: str) -> list[int]:
    """Indices of the texts of `split` ("calib": even, "eval": odd), `n_texts // 2` of them."""
    if split not in ("calib", "eval"):
        raise ValueError(f"unknown split {split!r}; expected 'calib' or 'eval'")
    start = 0 if split == "calib" else 1
    return list(range(start, 2 * (n_texts // 2), 2))
