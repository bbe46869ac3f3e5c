"""Consistent placeholders for one conversation, and the way back.

``Pseudonymizer(detector)`` replaces every value the detector finds by ``<TYPE_N>``: the
same value always gets the same placeholder, numbered per type in order of first
appearance, so a conversation sent again with one more turn gets the same placeholders.
``restore`` puts the values back into an answer (also placeholders a model wrote without
their angle brackets); ``Restorer`` does it for a stream of chunks.

A user's text may itself contain something that looks like a placeholder ("<PERSON_1>" in
a bug report). Such strings are noted first and their numbers are never handed out, so
they stay the user's text: ``restore`` leaves them alone.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

_LOOKALIKE = re.compile(r"\b([A-Z][A-Z0-9_]{0,40}_\d{1,9})\b")
_HOLD = re.compile(r"(?:<[A-Z0-9_]{0,60}|(?<!\w)[A-Z][A-Z0-9_]{0,60})$")  # a placeholder's start


@dataclass(frozen=True)
class Replacement:
    """One value replaced: where it was in the original text, and by what (not the value)."""

    entity_type: str
    start: int
    end: int
    placeholder: str


class Pseudonymizer:
    """One conversation's mapping between values and placeholders."""

    def __init__(self, detector):
        self.detector = detector
        self._placeholders: dict[tuple[str, str], str] = {}  # (type, value) -> placeholder
        self._values: dict[str, str] = {}  # placeholder name without brackets -> value
        self._next: Counter[str] = Counter()
        self._taken: set[str] = set()  # placeholder-like names the user wrote
        self._counts: Counter[str] = Counter()

    def redact(self, text: str) -> tuple[str, list[Replacement]]:
        """``text`` with its values replaced, and the replacements (offsets into ``text``)."""
        self._taken.update(_LOOKALIKE.findall(text))
        parts, replacements, pos = [], [], 0
        for span in self.detector.find(text):
            placeholder = self._placeholder(span.entity_type, span.text)
            parts += [text[pos : span.start], placeholder]
            replacements.append(Replacement(span.entity_type, span.start, span.end, placeholder))
            self._counts[span.entity_type] += 1
            pos = span.end
        parts.append(text[pos:])
        return "".join(parts), replacements

    def redact_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chat messages (``role``, ``content``) with their text redacted; one mapping for all.
        Content given as parts (``[{"type": "text", "text": ...}]``) has its text parts done."""
        for message in messages:  # note look-alikes in all turns before numbering any value
            for text in _texts(message.get("content")):
                self._taken.update(_LOOKALIKE.findall(text))
        return [{**m, "content": self._redact_content(m.get("content"))} for m in messages]

    def _redact_content(self, content: Any) -> Any:
        if isinstance(content, str):
            return self.redact(content)[0]
        if isinstance(content, list):
            return [
                {**part, "text": self.redact(part["text"])[0]}
                if isinstance(part, dict) and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
        return content

    def _placeholder(self, entity_type: str, value: str) -> str:
        key = (entity_type, value)
        if key not in self._placeholders:
            name = self._new_name(entity_type)
            self._placeholders[key] = f"<{name}>"
            self._values[name] = value
        return self._placeholders[key]

    def _new_name(self, entity_type: str) -> str:
        while True:
            self._next[entity_type] += 1
            name = f"{entity_type}_{self._next[entity_type]}"
            if name not in self._taken:
                return name

    def counts(self) -> dict[str, int]:
        """Values replaced so far per entity type (occurrences, not the values)."""
        return dict(self._counts)

    def restore(self, text: str) -> str:
        """``text`` with the placeholders this conversation handed out replaced by their
        values, with or without angle brackets; anything else is left as it is."""

        def put_back(m: re.Match) -> str:
            value = self._values.get(m.group(1))
            return m.group(0) if value is None else value

        return _PLACEHOLDER.sub(put_back, text) if self._values else text


# "<PERSON_1>" or "PERSON_1" at word boundaries; brackets are part of the match when there
_PLACEHOLDER = re.compile(r"<?\b([A-Z][A-Z0-9_]{0,40}_\d{1,9})\b>?")


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return []


class Restorer:
    """Restores a streamed answer: ``feed`` returns what can be shown now, holding back a
    placeholder cut by the chunk's end ("<PERS"); ``flush`` returns the rest."""

    def __init__(self, pseudonymizer: Pseudonymizer):
        self.pseudonymizer = pseudonymizer
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        m = _HOLD.search(text)
        cut = m.start() if m else len(text)
        self._held = text[cut:]
        return self.pseudonymizer.restore(text[:cut])

    def flush(self) -> str:
        text, self._held = self._held, ""
        return self.pseudonymizer.restore(text)
