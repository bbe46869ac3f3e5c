"""argparse flags derived from the typed parameter models (``pocketlm.params``).

A flag exists for every field, named after it (``max_tokens`` -> ``--max-tokens``),
with the field's description and default as help. Flags default to "unset"
so that the model's own default applies, and values are range-checked by the
model, with errors naming the flag.
"""

from __future__ import annotations

import argparse
import sys
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from pocketlm.params import validate


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _base_type(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return annotation


def add_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], only: tuple[str, ...] | None = None
) -> None:
    """A flag for each of ``model``'s fields (or those named in ``only``)."""
    group = parser.add_argument_group(model.__doc__.strip().rstrip(".").lower())
    for name, f in model.model_fields.items():
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        unset = f.default is None or f.default is False or f.default == ()
        default = "" if unset else f" (default: {f.default})"
        help_text = ((f.description or "") + default).replace("%", "%%")  # argparse formats it
        kind = _base_type(f.annotation)
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if kind is bool:  # --flash-attn / --no-flash-attn
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif get_origin(kind) is Literal:
            choices = get_args(kind)
            group.add_argument(flag, dest=name, choices=choices, help=help_text)
        elif get_origin(kind) is tuple:
            group.add_argument(flag, dest=name, action="append", metavar="TEXT", help=help_text)
        else:
            metavar = extra.get("metavar", kind.__name__.upper())
            group.add_argument(flag, dest=name, type=kind, metavar=metavar, help=help_text)


def collect(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The flags the user set, as a dict of field values (validated against ``model``)."""
    values = {k: getattr(args, k) for k in model.model_fields if getattr(args, k, None) is not None}
    validate(model, values, flag_names=True)
    return values
