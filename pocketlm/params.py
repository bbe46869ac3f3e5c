"""The one typed definition of generation and load parameters.

CLI flags (``pocketlm.cli.flags``), the Python API and, later, HTTP request
schemas are all derived from these models, so names, ranges and defaults cannot
drift apart. Each field's ``description`` is its help text; ``cli`` in
``json_schema_extra`` gives the flag name where it differs from the field name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pocketlm.errors import UsageError

M = TypeVar("M", bound=BaseModel)


class GenerationParams(BaseModel):
    """How to sample one answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int | None = Field(
        None,
        ge=1,
        description="most tokens to generate (default: until the model stops "
        "or the context is full)",
    )
    temperature: float = Field(
        0.8, ge=0.0, le=5.0, description="sampling temperature; 0 picks the likeliest token"
    )
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling: keep this mass")
    top_k: int = Field(40, ge=0, le=1 << 20, description="keep the k likeliest tokens (0: all)")
    min_p: float = Field(
        0.05, ge=0.0, le=1.0, description="drop tokens below this fraction of the top one"
    )
    repeat_penalty: float = Field(
        1.1, gt=0.0, le=10.0, description="penalise recently seen tokens (1: off)"
    )
    repeat_last_n: int = Field(
        64, ge=0, le=1 << 20, description="how many recent tokens the penalty sees"
    )
    seed: int | None = Field(
        None, ge=0, le=2**32 - 2, description="random seed (same seed, same output)"
    )
    stop: tuple[str, ...] = Field(
        (),
        description="stop when this text appears (repeatable)",
        json_schema_extra={"cli_repeat": True},
    )
    truncate: bool = Field(
        False,
        description="when the prompt does not fit, drop the oldest messages (or the "
        "start of a raw prompt) and say what was dropped, instead of failing",
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return (v,)
        return v

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(s == "" for s in v):
            raise ValueError("stop sequences must not be empty")
        return v


class LoadParams(BaseModel):
    """How to load a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ctx: int | None = Field(
        None,
        ge=16,
        le=1 << 20,
        description="context window in tokens (default: the model's, at most 4096)",
    )
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads (default: physical cores)"
    )
    batch: int = Field(512, ge=1, le=1 << 16, description="prompt tokens evaluated per step")
    flash_attn: bool = Field(
        False,
        description="use flash attention (off by default: on CPUs it made decoding "
        "up to 2x slower in benchmarks/run_overhead.py)",
    )
    speculate: Literal["auto", "off"] | None = Field(
        None,
        description="speculative decoding: auto (prompt lookup, and the --draft model if "
        "given, each only while it pays on this machine; the default) or off",
    )
    lookup: bool = Field(
        False,
        description="draft by prompt lookup at every step it has a guess (n-grams of the "
        "prompt and the answer so far; the output is the same)",
    )
    draft: str | None = Field(
        None,
        description="a smaller model with the same vocabulary that drafts tokens for this one "
        "(the output is the same)",
        json_schema_extra={"metavar": "MODEL"},
    )


class ServeParams(BaseModel):
    """How to serve models (pocketlm serve)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parallel: int = Field(8, ge=1, le=256, description="sequences decoded together per model")
    queue: int = Field(16, ge=1, le=4096, description="requests that may wait (more: 503)")
    cache_ram: int = Field(
        1024,
        ge=0,
        description="MiB per model for the KV of prompts whose sequence went to another "
        "request, copied back when they return (0: off)",
        json_schema_extra={"metavar": "MIB"},
    )
    keep_alive: float = Field(
        300, description="seconds an idle model stays loaded (negative: forever)"
    )
    memory_budget: float | None = Field(
        None, gt=0, description="GB the loaded models may use (default: 90% of available RAM)"
    )
    max_body: int = Field(
        8,
        ge=1,
        le=1024,
        description="largest request body in MiB (more: 413)",
        json_schema_extra={"metavar": "MIB"},
    )
    header_timeout: float = Field(
        10,
        gt=0,
        description="seconds a connection may take to send a request's headers (then it is closed)",
        json_schema_extra={"metavar": "S"},
    )
    body_timeout: float = Field(
        10,
        gt=0,
        description="seconds to wait for the next piece of a request body (then 408)",
        json_schema_extra={"metavar": "S"},
    )


class GenerationOverrides(TypedDict, total=False):
    """GenerationParams' fields as keyword arguments (``generate(prompt, temperature=0)``),
    for editors and type checkers; tests/test_params.py checks it matches the model."""

    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    seed: int | None
    stop: str | Sequence[str]
    truncate: bool


class LoadOverrides(TypedDict, total=False):
    """LoadParams' fields as keyword arguments (``load(model, ctx=4096)``)."""

    ctx: int | None
    threads: int | None
    batch: int
    flash_attn: bool
    speculate: Literal["auto", "off"] | None
    lookup: bool
    draft: str | None


def with_overrides(model: type[M], base: M | None, overrides: Mapping[str, Any]) -> M:
    """``base`` (or the defaults) with ``overrides`` applied, validated (one-line errors)."""
    values = base.model_dump(exclude_unset=True) if base is not None else {}
    return validate(model, {**values, **overrides})


DEFAULT_CTX_CAP = 4096


def context_size(ctx: int | None, trained: int | None) -> int:
    """The context window a model gets: ``ctx`` if asked for, else the length it was trained
    for, at most DEFAULT_CTX_CAP (a 128k-token window would take gigabytes of KV cache)."""
    return ctx or min(trained or DEFAULT_CTX_CAP, DEFAULT_CTX_CAP)


def validate(model: type[BaseModel], values: dict[str, Any], flag_names: bool = False):
    """Build ``model`` from ``values``; errors become one-line ``UsageError``s naming the field."""
    try:
        return model(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "value"
        if flag_names:
            field = "--" + field.replace("_", "-")
        if err["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            raise UsageError(f"unknown parameter '{field}'", f"known: {known}") from None
        got = err.get("input")
        raise UsageError(f"invalid {field} {got!r}: {err['msg'].lower()}") from None
