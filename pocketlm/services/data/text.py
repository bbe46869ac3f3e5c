"""Text normalised the same way for every check of `pocketlm data curate`: Unicode NFKC,
lower case, words as runs of letters and digits (punctuation and spacing ignored)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator, Sequence

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The normalised words of ``text``."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def digest(ws: Sequence[str]) -> bytes:
    """A 16-byte fingerprint of a normalised text (exact duplicates share it)."""
    return hashlib.blake2b(" ".join(ws).encode(), digest_size=16).digest()


def ngrams(ws: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    """Every run of ``n`` consecutive words (none when there are fewer)."""
    for i in range(len(ws) - n + 1):
        yield tuple(ws[i : i + n])


def shingles(ws: Sequence[str], n: int) -> list[bytes]:
    """The distinct word ``n``-grams as bytes (MinHash input); a text shorter than ``n``
    words is one shingle."""
    grams = {" ".join(g) for g in ngrams(ws, n)} or {" ".join(ws)}
    return [g.encode() for g in grams]
