"""Rendering a model's own chat template (Jinja, from the GGUF) in a sandbox.

Templates come inside downloaded files, so they run in Jinja's immutable
sandbox: no attribute access to Python internals, no mutation of the
messages, no file or network access. The environment matches what Hugging
Face's ``apply_chat_template`` offers templates (``raise_exception``,
``strftime_now``, ``tojson``, loop controls, trimmed blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from pocketlm.errors import PocketError, UsageError

ROLES = ("system", "user", "assistant", "tool")


class TemplateError(PocketError):
    pass


def _raise(message: str) -> None:
    raise TemplateError(f"the model's chat template refused the conversation: {message}")


@lru_cache(maxsize=8)
def compile_template(source: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(
            f"the model's chat template is invalid ({e.message}, line {e.lineno})",
            "run with --raw to send the prompt without a template",
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
) -> str:
    template = compile_template(source)
    from jinja2 import TemplateError as JinjaError

    try:
        return template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except TemplateError:
        raise
    except (JinjaError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise TemplateError(
            f"the model's chat template failed ({e})",
            "run with --raw to send the prompt without a template",
        ) from None


def chat_tokens(model, template: str, messages: Sequence[dict[str, str]]) -> list[int]:
    """Render ``messages`` with ``template`` and tokenize the result for ``model`` (an engine
    Model): special tokens in the text are parsed, and BOS is added only if the model wants
    one and the template did not write it."""
    bos = model.token_text(model.bos) if model.bos >= 0 else ""
    eos = model.token_text(model.eos) if model.eos >= 0 else ""
    text = render(template, messages, bos_token=bos, eos_token=eos)
    add_bos = model.add_bos and not (bos and text.startswith(bos))
    return model.tokenize(text, add_special=add_bos, parse_special=True)
