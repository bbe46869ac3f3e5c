"""Quality filters of `pocketlm data curate`: length, repetition, character classes and
language, after the rules DeepMind used to clean MassiveText for Gopher (Rae et al. 2021,
appendix A), with their thresholds.

Each check returns the reason a text is dropped (with a detail a person can read), or None.
The language check needs no model: English text is mostly ASCII letters, and at least 10% of
its words are common English function words ("the", "of", "and"...); a text under
``lang_min_words`` words is too short for the second test and passes it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from pocketlm.services.data.text import ngrams, words

CHECKS = ("length", "repetition", "characters", "language")

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves""".split()
)


@dataclass(frozen=True)
class Rules:
    """Thresholds; a text is dropped by the first check it fails (in ``CHECKS`` order)."""

    min_words: int = 5  # Gopher: 50 for web pages; 5 keeps short labelled examples
    max_words: int = 100_000  # Gopher
    max_dup_line_frac: float = 0.30  # lines that repeat an earlier line (Gopher)
    max_dup_line_chars: float = 0.20  # their share of the characters (Gopher)
    top_ngram_chars: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_ngram_chars: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
    )  # fmt: skip
    min_alpha_words: float = 0.80  # words with a letter (Gopher)
    max_symbol_ratio: float = 0.10  # "#" and ellipses per word (Gopher)
    mean_word_length: tuple[float, float] = (3.0, 10.0)  # Gopher
    max_digit_frac: float = 0.30  # of the characters that are not spaces
    min_ascii_letters: float = 0.90  # of the letters: English is written in ASCII letters
    min_stopword_frac: float = 0.10  # of the words (English prose: 40-50%)
    lang_min_words: int = 20  # shorter texts are not judged by their stopwords


Verdict = tuple[str, str]  # (reason, detail)


def check(text: str, rules: Rules, skip: frozenset[str] = frozenset()) -> Verdict | None:
    """Why ``text`` fails the quality checks not in ``skip``, or None when it passes."""
    tokens = text.split()
    for name, fn in _CHECKS.items():
        if name not in skip and (verdict := fn(text, tokens, rules)):
            return verdict
    return None


def _length(text: str, tokens: list[str], r: Rules) -> Verdict | None:
    if len(tokens) < r.min_words:
        return "too_short", f"{len(tokens)} words < {r.min_words}"
    if len(tokens) > r.max_words:
        return "too_long", f"{len(tokens)} words > {r.max_words}"
    return None


def _repetition(text: str, tokens: list[str], r: Rules) -> Verdict | None:
    for unit, parts in (("line", text.split("\n")), ("paragraph", text.split("\n\n"))):
        parts = [p.strip() for p in parts if p.strip()]
        dup_n, dup_chars = _duplicates(parts)
        if parts and dup_n / len(parts) > r.max_dup_line_frac:
            return "repetition", f"{dup_n / len(parts):.0%} of {unit}s repeated"
        total = sum(map(len, parts))
        if total and dup_chars / total > r.max_dup_line_chars:
            return "repetition", f"repeated {unit}s hold {dup_chars / total:.0%} of the text"
    ws = [t.lower() for t in tokens]
    chars = sum(map(len, ws))
    for n, limit in r.top_ngram_chars:
        top = collections.Counter(ngrams(ws, n)).most_common(1)
        if top and top[0][1] > 1:
            gram, count = top[0]
            frac = count * sum(map(len, gram)) / chars
            if frac > limit:
                return "repetition", f"the {n}-gram {' '.join(gram)!r} is {frac:.0%} of the text"
    for n, limit in r.dup_ngram_chars:
        frac = _dup_ngram_chars(ws, n) / chars if chars else 0.0
        if frac > limit:
            return "repetition", f"repeated {n}-grams hold {frac:.0%} of the text"
    return None


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """(parts that repeat an earlier one, their characters)."""
    seen: set[str] = set()
    n = chars = 0
    for p in parts:
        if p in seen:
            n, chars = n + 1, chars + len(p)
        seen.add(p)
    return n, chars


def _dup_ngram_chars(ws: list[str], n: int) -> int:
    """Characters of the words inside an n-gram seen earlier in the text (each once)."""
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(ws)
    for i, gram in enumerate(ngrams(ws, n)):
        if gram in seen:
            covered[i : i + n] = [True] * n
        seen.add(gram)
    return sum(len(w) for w, c in zip(ws, covered) if c)


def _characters(text: str, tokens: list[str], r: Rules) -> Verdict | None:
    if not tokens:
        return "characters", "no words"
    alpha = sum(any(c.isalpha() for c in t) for t in tokens) / len(tokens)
    if alpha < r.min_alpha_words:
        return "characters", f"{alpha:.0%} of words have a letter < {r.min_alpha_words:.0%}"
    symbols = (text.count("#") + text.count("...") + text.count("…")) / len(tokens)
    if symbols > r.max_symbol_ratio:
        return "characters", f"{symbols:.2f} '#' or '...' per word > {r.max_symbol_ratio}"
    mean = sum(map(len, tokens)) / len(tokens)
    low, high = r.mean_word_length
    if not low <= mean <= high:
        return "characters", f"mean word length {mean:.1f} outside {low:g}-{high:g}"
    chars = sum(map(len, tokens))
    digits = sum(c.isdigit() for c in text) / chars
    if digits > r.max_digit_frac:
        return "characters", f"{digits:.0%} digits > {r.max_digit_frac:.0%}"
    return None


def _language(text: str, tokens: list[str], r: Rules) -> Verdict | None:
    letters = [c for c in text if c.isalpha()]
    if letters:
        ascii_frac = sum(c.isascii() for c in letters) / len(letters)
        if ascii_frac < r.min_ascii_letters:
            return "language", f"{ascii_frac:.0%} of letters are ASCII: not English"
    ws = words(text)
    if len(ws) >= r.lang_min_words:
        frac = sum(w in STOPWORDS for w in ws) / len(ws)
        if frac < r.min_stopword_frac:
            return "language", f"{frac:.0%} English stopwords < {r.min_stopword_frac:.0%}"
    return None


_CHECKS: dict[str, Callable[[str, list[str], Rules], Verdict | None]] = {
    "length": _length,
    "repetition": _repetition,
    "characters": _characters,
    "language": _language,
}
