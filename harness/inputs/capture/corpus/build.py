"""Rebuild `devils_dictionary.txt` from Debian's `dict-devil` package (a maintenance tool, not imported).

    apt-get download dict-devil && dpkg-deb -x dict-devil_*.deb devil
    python harness/inputs/capture/corpus/build.py devil/usr/share/dictd/devil.dict.dz

Reads the dictionary's text (Ambrose Bierce, *The Devil's Dictionary*, 1911: public domain, see
README.md), keeps the entries from ABASEMENT to ZOOLOGY in their order, packs consecutive entries
into documents of at least `MIN_TOKENS` all-MiniLM-L6-v2 tokens (a document always starts at an
entry), and writes `DOCUMENTS` of them, evenly spaced over the alphabet, one per block (blocks
separated by a blank line; each document on one line, its whitespace collapsed).
"""

from __future__ import annotations

import gzip
import re
import sys
from pathlib import Path

MIN_TOKENS = 540  # margin over the 512 the scenarios pack to
DOCUMENTS = 64  # 32 calibration + 32 evaluation
ENTRY = re.compile(r"^[A-Z][A-Z'.-]*(?: [A-Z'.-]+)*, ")  # "ABASEMENT, n." starts an entry
HEADER = """\
# The Devil's Dictionary, by Ambrose Bierce (1911; public domain, see README.md beside this file).
# attnbench's long-text set: one document per block, blocks separated by a blank line; each block is a
# run of consecutive dictionary entries of at least 540 all-MiniLM-L6-v2 tokens. Block 0, 2, 4, ... are
# the calibration split, blocks 1, 3, 5, ... the evaluation split. Rebuilt by build.py from Debian's
# dict-devil package."""


def entries(text: str) -> list[str]:
    """The dictionary's entries (ABASEMENT .. ZOOLOGY), each with its whitespace collapsed."""
    body = text[text.index("\nABASEMENT, n.") + 1 :]
    body = body[: body.rindex("\n abcdefghijklmnopqrstuvwxyz")]
    out: list[str] = []
    for line in body.splitlines():
        if ENTRY.match(line) or not out:
            out.append(line)
        else:
            out[-1] += "\n" + line
    return [" ".join(e.split()) for e in out]


def main(dict_dz: str) -> None:
    from transformers import AutoTokenizer

    from harness.inputs.capture import model

    tokenizer = AutoTokenizer.from_pretrained(model.resolve(model.DEFAULT_MODEL).path)
    docs: list[str] = []
    current: list[str] = []
    for entry in entries(gzip.decompress(Path(dict_dz).read_bytes()).decode("utf-8")):
        current.append(entry)
        if len(tokenizer(" ".join(current))["input_ids"]) >= MIN_TOKENS:
            docs.append(" ".join(current))
            current = []
    if len(docs) < DOCUMENTS:
        raise SystemExit(f"only {len(docs)} documents of >= {MIN_TOKENS} tokens")
    picked = [docs[round(i * (len(docs) - 1) / (DOCUMENTS - 1))] for i in range(DOCUMENTS)]
    out = Path(__file__).with_name("devils_dictionary.txt")
    out.write_text(HEADER + "\n\n" + "\n\n".join(picked) + "\n", encoding="utf-8")
    print(f"{out}: {DOCUMENTS} of {len(docs)} documents, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
