"""`pocketlm task summarize`: one summary per document, whatever its length.

A document that fits the context (with the instructions and room for the answer) is
summarised in one go. A longer one is cut into parts at paragraph, line or sentence ends
(never mid-token), each part is summarised, and the parts' summaries are summarised as a
whole, again in parts if they are still too long (map-reduce). Nothing is dropped: the
record says how many parts its summary was built from.
"""

from __future__ import annotations

import re
from typing import Any

from pocketlm.errors import PocketError
from pocketlm.services.tasks.engine import GREEDY, TaskEngine
from pocketlm.services.tasks.job import RecordFailed
from pocketlm.services.tasks.records import Record

SYSTEM = "Summarise the text in {length}. Write only the summary."
PART = "This is part {i} of {n} of a longer document. " + SYSTEM
COMBINE = (
    "These are summaries of consecutive parts of one document. Write one summary of the "
    "whole document in {length}. Write only the summary."
)
_BREAKS = [re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"(?<=[.!?])\s+"), None]


class Summarizer:
    def __init__(self, engine: TaskEngine, *, length: str = "2-3 sentences", max_tokens=200):
        self.engine = engine
        self.length = length
        self.max_tokens = max_tokens
        overhead = len(self._prompt(PART.format(i=99, n=99, length=length), ""))
        self.room = engine.n_ctx_seq - overhead - max_tokens - 16  # text tokens per call
        if self.room < 64:
            raise PocketError(
                f"the model's context ({engine.n_ctx_seq} tokens) leaves no room for a text"
            )

    def _prompt(self, system: str, text: str) -> list[int]:
        return self.engine.prompt(
            [{"role": "system", "content": system}, {"role": "user", "content": text}]
        )

    def _ask(self, system: str, text: str) -> str:
        out = self.engine.generate(
            self._prompt(system, text), GREEDY.model_copy(update={"max_tokens": self.max_tokens})
        )
        if out.finish not in ("stop", "length"):
            raise RecordFailed(f"generation ended: {out.error or out.finish}")
        return out.text.strip()

    def summarize(self, text: str) -> tuple[str, int]:
        """(summary, number of parts the text was summarised in)."""
        if len(self.engine.tokenize(text)) <= self.room:
            return self._ask(SYSTEM.format(length=self.length), text), 1
        parts = split(text, self.room, self.engine.tokenize)
        n = len(parts)
        notes = [
            self._ask(PART.format(i=i, n=n, length=self.length), p) for i, p in enumerate(parts, 1)
        ]
        return self._combine(notes), n

    def _combine(self, notes: list[str]) -> str:
        joined = "\n\n".join(notes)
        if len(self.engine.tokenize(joined)) <= self.room:
            return self._ask(COMBINE.format(length=self.length), joined)
        groups = split(joined, self.room, self.engine.tokenize)
        if len(groups) >= len(notes):  # summaries longer than their parts: cannot shrink
            raise RecordFailed("the part summaries do not fit the context together")
        return self._combine([self._ask(COMBINE.format(length=self.length), g) for g in groups])

    def __call__(self, record: Record) -> dict[str, Any]:
        if not record.text.strip():
            raise RecordFailed("the document is empty")
        summary, parts = self.summarize(record.text)
        return {"summary": summary, "parts": parts}


def split(text: str, room: int, tokenize) -> list[str]:
    """``text`` in consecutive pieces of at most ``room`` tokens, cut at the largest break
    (paragraph, line, sentence) that allows it, else between tokens' characters."""
    if len(tokenize(text)) <= room:
        return [text]
    for pattern in _BREAKS:
        pieces = _pieces(text, pattern, room)
        if len(pieces) > 1:
            return _pack(pieces, room, tokenize)
    return [text]  # unreachable: character pieces always split


def _pieces(text: str, pattern, room: int) -> list[str]:
    if pattern is None:  # no break at all: runs of characters that fit (<= 4 tokens each)
        step = max(1, room // 4)
        return [text[i : i + step] for i in range(0, len(text), step)]
    out, start = [], 0
    for m in pattern.finditer(text):
        out.append(text[start : m.end()])
        start = m.end()
    out.append(text[start:])
    return [p for p in out if p]


def _pack(pieces: list[str], room: int, tokenize) -> list[str]:
    parts: list[str] = []
    current, size = "", 0
    for piece in pieces:
        n = len(tokenize(piece))
        if n > room:  # a paragraph too long on its own: split it at a smaller break
            if current:
                parts.append(current)
                current, size = "", 0
            parts += split(piece, room, tokenize)
            continue
        if size + n > room and current:
            parts.append(current)
            current, size = "", 0
        current, size = current + piece, size + n
    if current:
        parts.append(current)
    return parts
