"""What can name a model in the store, and how user text is shown in one-line messages.

A store name becomes a file name (``manifests/<name>.json``), so anything else a user
types where a name goes (a path, 300 bytes, a NUL, a lone surrogate) must be refused
here, as a one-line error, before it reaches the file system.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from pocketlm.errors import UsageError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:-]{0,99}")
NAME_RULES = (  # a hint: how to write a name
    "use letters, digits and . _ + : - (at most 100 characters, not starting with a symbol)"
)
# The manifest's file name is the name percent-encoded (':' and '+' take 3 bytes each) and
# write_atomic adds 15 bytes around it; file names stop at 255 bytes.
MAX_ENCODED_NAME = 240


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a model in the store (a hint for the user), or None."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return NAME_RULES
    if len(quote(name, safe="")) > MAX_ENCODED_NAME:
        return "use fewer ':' and '+' (3 bytes each in a file name)"
    return None


def valid_name(name: object) -> bool:
    """Whether ``name`` can name a model in the store. Paths, over-long or odd text (NUL,
    lone surrogates) cannot: they are not looked up, they are refused."""
    return name_problem(name) is None


def check_name(name: str) -> str:
    """``name``, if it can name a model in the store; otherwise a one-line UsageError."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"invalid model name '{shown(name)}'", problem)
    return name


def shown(text: str, limit: int = 100) -> str:
    """``text`` as it may appear in a one-line message: control, non-ASCII and unencodable
    characters escaped, cut after ``limit`` characters (a valid name is never cut)."""
    safe = text if text.isascii() and text.isprintable() else ascii(text)[1:-1]
    return safe if len(safe) <= limit else f"{safe[:limit]}... ({len(text)} characters)"
