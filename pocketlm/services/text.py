"""Token bytes to text: whole UTF-8 characters, stop strings cut off (shared by CLI and server)."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextAssembler:
    """Bytes of tokens in, text out: whole UTF-8 characters only, stop strings cut off.

    Text that could be the start of a stop string is held back until it is not.
    """

    def __init__(self, stop: Sequence[str]):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stop = tuple(stop)
        self._pending = ""
        self.text = ""

    def push(self, data: bytes) -> tuple[str, bool]:
        self._pending += self._decoder.decode(data)
        if not self._stop:
            out, self._pending = self._pending, ""
            self.text += out
            return out, False
        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending = self._pending[:cut], ""
            self.text += out
            return out, True
        hold = max((_overlap(self._pending, s) for s in self._stop), default=0)
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out) :]
        self.text += out
        return out, False

    def flush(self) -> str:
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        self.text += out
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
