"""Errors that reach the user.

Every error pocketlm raises on purpose is a ``PocketError``: its message is one
line that says what is wrong and, where there is one, the command that fixes
it. Interfaces print it without a traceback (the CLI exits with ``exit_code``,
the server maps ``http_status``).
"""

from __future__ import annotations

import re

# An option named in a message: each interface spells it its own way (``render``)
_OPEN, _SEP, _CLOSE = "\ue000", "\ue001", "\ue002"
_OPTION = re.compile(f"{_OPEN}([a-z_]+)(?:{_SEP}([^{_CLOSE}]*))?{_CLOSE}")
INTERFACES = ("python", "cli", "http")


def option(name: str, value: object = None) -> str:
    """``name`` (a parameter, e.g. ``ctx``), with ``value``, as it goes in a message. The CLI
    shows ``--ctx 4096``, the Python API ``ctx=4096``, the HTTP API ``'ctx': 4096``: a
    service says which setting fixes a problem without knowing who asked."""
    return f"{_OPEN}{name}{_SEP}{value}{_CLOSE}" if value is not None else f"{_OPEN}{name}{_CLOSE}"


def render(text: str, interface: str = "python") -> str:
    """``text`` with its options spelled for ``interface`` (one of INTERFACES)."""

    def spell(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if interface == "cli":  # a switch (True) is the flag alone
            flag = "--" + name.replace("_", "-")
            return flag if value in (None, "True") else f"{flag} {value}"
        if interface == "http":
            value = "true" if value == "True" else value
            return f"'{name}'" if value is None else f"'{name}': {value}"
        return f"{name}=..." if value is None else f"{name}={value}"

    return _OPTION.sub(spell, text)


class PocketError(Exception):
    """Base class: a one-line message for the user."""

    exit_code = 1
    http_status = 400

    def __init__(self, message: str, hint: str | None = None, *, param: str | None = None):
        self.message = message
        self.hint = hint
        self.param = param  # the request field at fault, where there is one (HTTP errors)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return self.render("python")

    def render(self, interface: str) -> str:
        """The message and hint, with the options they name spelled for ``interface``."""
        text = f"{self.message}; {self.hint}" if self.hint else self.message
        return render(text, interface)


class UsageError(PocketError):
    """Invalid option value or argument."""

    exit_code = 2


class ModelNotFoundError(PocketError):
    """No model of that name in the store or the catalog."""

    http_status = 404


class InvalidModelError(PocketError):
    """A file that is not a usable GGUF model (rejected before llama.cpp reads it)."""

    http_status = 422


class PullError(PocketError):
    """A pull that could not finish; nothing was left in the store."""

    http_status = 502


class ContextOverflowError(PocketError):
    """Prompt plus requested tokens do not fit in the context window."""

    def __init__(
        self,
        prompt_tokens: int,
        max_tokens: int,
        n_ctx: int,
        hint: str | None = None,
        *,
        param: str | None = None,
    ):
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        need = prompt_tokens + max_tokens
        super().__init__(
            f"prompt ({prompt_tokens} tokens) + max tokens ({max_tokens}) = {need} "
            f"exceeds the context window ({n_ctx} tokens)",
            hint,
            param=param,
        )


class EngineError(PocketError):
    """llama.cpp could not load or run a model."""

    http_status = 500
