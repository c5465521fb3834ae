"""The fixed text sets the captured attention is computed on: the file format, its bounds, the hash
and the two splits.

A texts file is UTF-8 text holding one document per block: blocks are separated by one or more
blank lines, and the lines of one block are joined with a single space (a tokenizer sees a newline
as a space anyway) into one document. Lines whose first non-blank character is `#` are comments and
are dropped before blocks are formed. A file must hold at least 2 documents, at most `MAX_TEXTS`,
and be at most `MAX_BYTES` long.

Two sets are packaged and named instead of a path: `short` (the default: `texts.txt` beside this
module, 64 texts of 2 to ~45 words, written for this repository) and `long` (`corpus/
devils_dictionary.txt`: 64 documents of 542-1539 all-MiniLM-L6-v2 tokens from Ambrose Bierce's
*The Devil's Dictionary*, 1911, public domain; `corpus/README.md`). Any other name is a path (write
`./long` for a file named `long`).

Split by document: documents 0, 2, 4, ... are the calibration split, 1, 3, 5, ... the evaluation
split (interleaved, so both halves cover short and long documents), each `len(texts) // 2` long.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

HERE = Path(__file__).parent
PACKAGED = {"short": HERE / "texts.txt", "long": HERE / "corpus" / "devils_dictionary.txt"}
DEFAULT_TEXTS = PACKAGED["short"]
MAX_BYTES = 16 * 2**20  # a texts file larger than this is refused (16 MiB)
MAX_TEXTS = 20_000  # documents per file


class TextsError(ValueError):
    """A texts file that cannot be used; the message is one line naming the file."""


def texts_path(name: str | None) -> Path:
    """The file a `texts:` value names: a packaged set (`short`, `long`; None = `short`) or a path."""
    if name is None:
        return DEFAULT_TEXTS
    return PACKAGED.get(name) or Path(name).expanduser()


def parse_blocks(text: str) -> list[str]:
    """The documents of a texts file's content: blank-line-separated blocks, `#` lines dropped,
    each block's lines stripped and joined with one space."""
    docs: list[str] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if line:
            current.append(line)
        elif current:
            docs.append(" ".join(current))
            current = []
    if current:
        docs.append(" ".join(current))
    return docs


@functools.lru_cache(maxsize=8)
def _read(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    """The documents of `path` (cached per path, size and modification time)."""
    file = Path(path)
    if size > MAX_BYTES:
        raise TextsError(f"{file}: {size} bytes, more than the {MAX_BYTES} a texts file may hold")
    try:
        content = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextsError(f"{file}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    docs = parse_blocks(content)
    if len(docs) < 2:
        raise TextsError(
            f"{file}: expected at least 2 documents (blocks separated by a blank line), found {len(docs)}"
        )
    if len(docs) > MAX_TEXTS:
        raise TextsError(f"{file}: {len(docs)} documents, more than the {MAX_TEXTS} a texts file may hold")
    return tuple(docs)


def read_texts(name: str | None = None) -> list[str]:
    """The documents of the set `name` names (see `texts_path`; default: the packaged short set).

    Raises TextsError (one line naming the file) for a missing, unreadable, oversized, non-UTF-8
    file or one with fewer than 2 or more than MAX_TEXTS documents."""
    file = texts_path(name)
    try:
        st = file.stat()
        if not file.is_file():
            raise TextsError(f"{file}: not a regular file (expected a texts file)")
        return list(_read(str(file), st.st_size, st.st_mtime_ns))
    except OSError as err:
        raise TextsError(f"{file}: cannot read the texts file ({err.strerror or err})") from None


def texts_hash(texts: list[str]) -> str:
    """sha256 of the documents (joined by newlines; a document holds none), first 16 hex digits:
    recorded and cache-keyed."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]


def split_indices(n_texts: int, split: str) -> list[int]:
    """Indices of the texts of `split` ("calib": even, "eval": odd), `n_texts // 2` of them."""
    if split not in ("calib", "eval"):
        raise ValueError(f"unknown split {split!r}; expected 'calib' or 'eval'")
    start = 0 if split == "calib" else 1
    return list(range(start, 2 * (n_texts // 2), 2))
