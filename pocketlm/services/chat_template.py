"""Rendering a model's own chat template (Jinja, from the GGUF) in a sandbox.

Templates come inside downloaded files, so they run in Jinja's immutable
sandbox: no attribute access to Python internals, no mutation of the
messages, no file or network access. The environment matches what Hugging
Face's ``apply_chat_template`` offers templates (``raise_exception``,
``strftime_now``, ``tojson``, loop controls, trimmed blocks; not ``lipsum``).

A sandbox does not stop a template from running forever or filling memory, so
rendering also has budgets. Time: ``TIME_BUDGET_S`` seconds, checked at the
start of every block the template runs (each loop iteration, macro call and
``if`` branch), so a loop that outputs nothing stops too. Size: ``char_limit``
characters, for the output and for every value the template builds with its
operators, literals, calls and filters, checked before the value is built
where its size can be known in advance. Any failure is a one-line
``TemplateError``. What the budgets leave open: a single library call on
values within the limit (``replace`` with an empty pattern, ``sum`` of lists)
can take time or memory up to about the limit squared before the next check;
closing that would take a separate process with resource limits.

Message contents are never read as special tokens: a user who writes
``<|im_start|>system`` gets that text, not a forged system turn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import re
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from pocketlm.errors import PocketError, UsageError, option

ROLES = ("system", "user", "assistant", "tool")

TIME_BUDGET_S = 1.0  # real templates render in well under a millisecond
OUTPUT_ALLOWANCE = 1 << 20  # characters of markup a template may add to the messages...
OUTPUT_PER_INPUT = 4  # ...plus this many times the messages' own characters
MAX_INT_BITS = 1 << 16  # numbers a template may compute (printing one stops at 4300 digits)

_HINT = f"send the prompt without a template: {option('raw', True)}"


class TemplateError(PocketError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class _Budget:
    chars: int
    seconds: float
    deadline: float  # time.monotonic()
    # Sizes by id, with the objects (so that their ids stay theirs): the messages (counted
    # when first needed), and the last few lists and dicts checked. A template that collects
    # messages in a list one at a time would otherwise recount the whole list at each step.
    known: dict[int, tuple[Any, int | None]] = dataclasses.field(default_factory=dict)
    recent: dict[int, tuple[Any, int]] = dataclasses.field(default_factory=dict)

    def size(self, value: Any) -> int | None:
        hit = self.known.get(id(value)) or self.recent.get(id(value))
        return hit[1] if hit else None

    def remember(self, value: Any, size: int) -> None:
        self.recent[id(value)] = (value, size)
        if len(self.recent) > 8:
            del self.recent[next(iter(self.recent))]


# The budget of the render running in this thread (or asyncio task): the sandbox's hooks
# are shared by all renders, budgets are per render.
_budget: ContextVar[_Budget] = ContextVar(
    "pocketlm_template_budget", default=_Budget(OUTPUT_ALLOWANCE, TIME_BUDGET_S, math.inf)
)


def _one_line(text: object, width: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _raise(message: str) -> None:
    raise TemplateError(
        f"the model's chat template refused the conversation: {_one_line(message)}", _HINT
    )


# -- budgets --------------------------------------------------------------------------


def char_limit(messages: Sequence[dict[str, str]]) -> int:
    """The most characters a template may output (or build in one value) for ``messages``:
    a fixed allowance for markup, plus a few times the messages themselves, since a
    template may repeat a message (a system prompt in every turn) or serialise it."""
    return OUTPUT_ALLOWANCE + OUTPUT_PER_INPUT * sum(len(m["content"]) for m in messages)


def _tick() -> None:
    """Compiled into the start of every block of template code: the time budget."""
    budget = _budget.get()
    if time.monotonic() > budget.deadline:
        raise TemplateError(f"the model's chat template ran longer than {budget.seconds} s", _HINT)


def _size(value: Any, budget: _Budget, limit: int) -> int:
    """Characters of a string, or items of a container counted with their contents, up to
    just past ``limit``: a list may hold one big string many times over."""
    if isinstance(value, str):
        return len(value)
    if (size := budget.size(value)) is not None:
        return size
    if isinstance(value, dict):
        items = itertools.chain.from_iterable(value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return 1
    total = len(value)
    for item in items:
        total += len(item) if type(item) is str else _size(item, budget, limit - total)
        if total > limit:
            return total  # not all of it: past the limit is all the caller needs to know
    if id(value) in budget.known:
        budget.known[id(value)] = (value, total)
    return total


def _checked(value: Any, size: int | None = None) -> Any:
    """``value``, if it is within the size budget of the running render (``size``: its size,
    where the caller knows it)."""
    budget = _budget.get()
    if type(value) is str:  # the common case, kept fast
        size = len(value)
    elif size is None:
        size = _size(value, budget, budget.chars)
    if size > budget.chars:
        raise _too_big("built a value of")
    if type(value) in (list, tuple, dict):  # immutable in the sandbox: the size stays
        budget.remember(value, size)
    return value


def _too_big(what: str) -> TemplateError:
    chars = _budget.get().chars
    return TemplateError(f"the model's chat template {what} more than {chars} characters", _HINT)


def _check_numbers(args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Refuse numbers past the size budget as arguments: widths and counts (``center``,
    ``indent``) that would allocate before any result can be checked."""
    chars = _budget.get().chars
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and v > chars:
            raise TemplateError(
                f"the model's chat template asked for a size or count of {v} (at most {chars})",
                _HINT,
            )


# Widths and precisions in %-formats ("%9999d") and in {}-fields ("{:>9999}").
_FORMAT_SPEC = re.compile(r"%[-+ #0]*\d*(?:\.\d*)?|\{[^{}]*\}")


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str):
        for spec in _FORMAT_SPEC.findall(fmt):
            _check_numbers([int(n) for n in re.findall(r"\d+", spec)], {})


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``*``, ``**`` and ``%`` whose result would be too big, before computing it."""
    if isinstance(left, int) and isinstance(right, int):
        if operator == "**" and right > 0:
            bits = abs(left).bit_length() * right
        elif operator == "*":
            bits = left.bit_length() + right.bit_length()
        else:
            return
        if bits > MAX_INT_BITS:
            raise TemplateError(
                f"the model's chat template computed a number of more than {MAX_INT_BITS} bits",
                _HINT,
            )
    elif operator == "*":
        seq, times = (left, right) if isinstance(right, int) else (right, left)
        budget = _budget.get()
        if isinstance(times, int) and times > 0:
            if _size(seq, budget, budget.chars) * times > budget.chars:
                raise _too_big("built a value of")
    elif operator == "%" and isinstance(left, str):
        _check_format(left)


@contextlib.contextmanager
def _within(messages: list[dict[str, str]], seconds: float) -> Iterator[int]:
    """Run the block within ``seconds`` and the size budget for ``messages`` (yielded), and
    turn whatever goes wrong in it into a one-line TemplateError."""
    chars = char_limit(messages)
    budget = _Budget(chars, seconds, time.monotonic() + seconds)
    budget.known.update({id(m): (m, None) for m in (messages, *messages)})
    token = _budget.set(budget)
    try:
        yield chars
    except TemplateError:
        raise
    except RecursionError:
        raise TemplateError("the model's chat template recursed too deeply", _HINT) from None
    except MemoryError:
        raise TemplateError("the model's chat template ran out of memory", _HINT) from None
    except Exception as e:  # anything a downloaded template can provoke, range() included
        raise TemplateError(f"the model's chat template failed ({_one_line(e)})", _HINT) from None
    finally:
        _budget.reset(token)


# -- the sandbox ----------------------------------------------------------------------


def _guard_filter(f, check_value=None):
    """``f`` (a Jinja filter) with its arguments and result held to the size limit."""
    first = 2 if getattr(f, "jinja_pass_arg", None) else 1  # after any context, the value

    @functools.wraps(f)  # keeps jinja_pass_arg
    def guarded(*args, **kwargs):
        _check_numbers(args[first:], kwargs)
        if check_value is not None and len(args) >= first:
            check_value(args[first - 1])
        return _checked(f(*args, **kwargs))

    return guarded


@functools.cache
def _environment():
    """The sandbox all templates compile in (Jinja is imported here: it is slow to import)."""
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class Generator(CodeGenerator):
        """Compiles a time check into every block, and ``~`` and list, tuple and dict
        literals through size checks (a literal can nest one big value many times). Every
        value a template builds is then within the budget, so its text (``str()``, which
        ``~`` and output apply) is too, but for a constant factor."""

        def blockvisit(self, nodes, frame):
            self.writeline("environment.tick()")
            super().blockvisit(nodes, frame)

        def visit_Concat(self, node, frame):
            self._sized(super().visit_Concat, node, frame)

        def visit_List(self, node, frame):
            self._sized(super().visit_List, node, frame)

        def visit_Dict(self, node, frame):
            self._sized(super().visit_Dict, node, frame)

        def visit_Tuple(self, node, frame):
            if node.ctx != "load":  # a loop or assignment target
                return super().visit_Tuple(node, frame)
            self._sized(super().visit_Tuple, node, frame)

        def _sized(self, visit, node, frame):
            self.write("environment.sized(")
            visit(node, frame)
            self.write(")")

    class Environment(ImmutableSandboxedEnvironment):
        code_generator_class = Generator
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator, left, right):
            if operator == "+":  # at most twice its checked operands: checked after
                value = left + right
                if type(value) is str and len(value) <= _budget.get().chars:
                    return value  # the common case, kept fast
                if isinstance(value, list | tuple):  # sized as its operands, likely known
                    budget = _budget.get()
                    size = _size(left, budget, budget.chars) + _size(right, budget, budget.chars)
                    return _checked(value, size)
                return _checked(value)
            _check_binop(operator, left, right)
            return _checked(self.binop_table[operator](left, right))

        def call(__self, __context, __obj, *args, **kwargs):  # (named as Jinja names them)
            _check_numbers(args, kwargs)
            return _checked(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value):
            wrapper = super().wrap_str_format(value)
            if wrapper is not None:
                _check_format(value.__self__)
            return wrapper

        def concat(self, parts):
            """Joins the buffers of macros, ``set`` and ``filter`` blocks."""
            parts = parts if isinstance(parts, list) else list(parts)
            if sum(map(len, parts)) > _budget.get().chars:
                raise _too_big("built a value of")
            return "".join(parts)

        sized = staticmethod(_checked)
        tick = staticmethod(_tick)

    class OpaqueNamespace(Namespace):
        """A ``namespace()`` that prints short. ``{% set ns.x = ... %}`` fills it after it
        was checked, so what it holds may only come out through template code, one checked
        value at a time, never all at once through the text of a list that holds it."""

        def __repr__(self):
            return "<Namespace>"

    env = Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters = {name: _guard_filter(f) for name, f in env.filters.items()}
    env.filters["format"] = _guard_filter(env.filters["format"], _check_format)
    del env.globals["lipsum"]  # a loop in Python the time budget cannot stop; unused by models
    env.globals["namespace"] = OpaqueNamespace
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@functools.lru_cache(maxsize=8)
def compile_template(source: str):
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(
            f"the model's chat template is invalid ({_one_line(e.message)}, line {e.lineno})",
            _HINT,
        ) from None


def check_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """Validate chat messages: a list of {"role", "content"} with known roles and text."""
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UsageError(f"message {i} must be a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise UsageError(f"message {i} has unknown role {m['role']!r}; use one of {ROLES}")
        if not isinstance(m["content"], str):
            raise UsageError(f"message {i} content must be a string")
        checked.append({"role": m["role"], "content": m["content"]})
    if not checked:
        raise UsageError("no messages to send")
    return checked


def render(
    source: str,
    messages: Sequence[dict[str, str]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    time_budget_s: float = TIME_BUDGET_S,
) -> str:
    """Render ``messages`` with the template ``source``, within ``time_budget_s`` seconds and
    ``char_limit(messages)`` characters; any failure is a TemplateError. Blocking, and safe
    to call from any thread (a server calls it off its event loop)."""
    messages = list(messages)
    with _within(messages, time_budget_s) as limit:
        chunks = compile_template(source).generate(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
        return _collect(chunks, limit)


def _collect(chunks: Iterator[str], limit: int) -> str:
    """Join the template's output, stopping as soon as it passes ``limit`` characters."""
    out, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_big("produced")
        out.append(chunk)
    return "".join(out)


# -- tokens ---------------------------------------------------------------------------

# A placeholder for special-token text in a message: private-use characters, which no
# tokenizer's special tokens contain, around an index into a table of the texts.
_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d{{1,9}}){_CLOSE}")


def chat_tokens(model, template: str, messages: Sequence[dict[str, str]]) -> list[int]:
    """Render ``messages`` with ``template`` and tokenize the result for ``model`` (an engine
    Model). Special tokens are parsed in the template's own text only: special-token text in
    a message stays text. BOS is added only if the model wants one and the template did not
    write it. Blocking (the template renders within its time budget)."""
    bos = model.token_text(model.bos) if model.bos >= 0 else ""
    eos = model.token_text(model.eos) if model.eos >= 0 else ""
    table: list[str] = []
    safe = [{**m, "content": _neutralise(model, m["content"], table)} for m in messages]
    text = render(template, safe, bos_token=bos, eos_token=eos)
    add_bos = model.add_bos and not (bos and text.startswith(bos))
    if not table:  # the common case: tokenized exactly as the whole text always was
        return model.tokenize(text, add_special=add_bos, parse_special=True)
    # Tokenized in pieces: a tokenizer that starts each text with a space (SentencePiece's)
    # adds one at each cut, only in messages that held special-token text.
    tokens = [model.bos] if add_bos else []
    for i, part in enumerate(_PLACEHOLDER.split(text)):
        if i % 2 == 0:  # the template's text, message text between placeholders
            tokens += model.tokenize(part, add_special=False, parse_special=True)
        else:
            tokens += model.tokenize(_placeheld(part, table), add_special=False)
    return tokens


def _neutralise(model, content: str, table: list[str]) -> str:
    """``content`` with each special-token text in it (as the model's tokenizer would parse
    it) swapped for a placeholder that indexes ``table``."""
    original = content
    if _OPEN in content:  # the user's own private-use characters are not placeholders
        content = content.replace(_OPEN, _placeholder(_OPEN, table))
    for _ in range(3):  # one pass does it, unless a vocabulary's special texts overlap
        specials = _special_texts(model, content)
        if not specials:
            return content
        pattern = "|".join(map(re.escape, sorted(specials, key=len, reverse=True)))
        content = re.sub(pattern, lambda m: _placeholder(m.group(), table), content)
    return _placeholder(original, table)  # special texts we cannot cut out: all plain text


def _special_texts(model, text: str) -> set[str]:
    """The texts of the special tokens (``<|im_start|>``, ``</s>``) the model's tokenizer
    finds in ``text``: tokens that print nothing unless asked for special tokens."""
    if not text:
        return set()
    ids = set(model.tokenize(text, add_special=False, parse_special=True))
    return {
        model.piece(t, special=True).decode("utf-8", "replace")
        for t in ids
        if not model.piece(t) and model.piece(t, special=True)
    }


def _placeholder(text: str, table: list[str]) -> str:
    table.append(text)
    return f"{_OPEN}{len(table) - 1}{_CLOSE}"


def _placeheld(index: str, table: list[str]) -> str:
    """The text behind a placeholder (one the template wrote itself stays as written)."""
    i = int(index)
    return table[i] if i < len(table) else f"{_OPEN}{index}{_CLOSE}"
