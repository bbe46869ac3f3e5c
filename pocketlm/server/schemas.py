"""HTTP request bodies. Sampling fields reuse ``GenerationParams``' types and ranges, so the
API, the CLI and the Python API validate the same way; unset fields take its defaults."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from pocketlm.errors import UsageError
from pocketlm.params import GenerationParams, validate

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n", "seed")


def _optional(name: str) -> tuple[Any, Any]:
    f = GenerationParams.model_fields[name]
    return Annotated[f.annotation | None, *f.metadata], Field(None, description=f.description)


_Sampling = create_model(
    "Sampling", __config__=ConfigDict(extra="ignore"), **{n: _optional(n) for n in SAMPLING}
)


def generation_params(body: BaseModel, **extra: Any) -> GenerationParams:
    values = {n: getattr(body, n) for n in SAMPLING if getattr(body, n, None) is not None}
    values.update({k: v for k, v in extra.items() if v is not None})
    return validate(GenerationParams, values)


# -- OpenAI --------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class JSONSchemaSpec(BaseModel):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAIBase(_Sampling):
    model: str
    max_tokens: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatCompletionRequest(_OpenAIBase):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # 0 is for completions' echo (scoring) only
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None


class CompletionRequest(_OpenAIBase):
    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


# -- Ollama ---------------------------------------------------------------------------------


class OllamaOptions(_Sampling):
    num_predict: int | None = None
    stop: list[str] | str | None = None
    num_ctx: int | None = None


class _OllamaBase(BaseModel):
    model: str
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    keep_alive: str | float | int | None = None
    think: bool | None = None


class OllamaGenerateRequest(_OllamaBase):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    images: list[str] | None = None


class OllamaMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""


class OllamaChatRequest(_OllamaBase):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class OllamaEmbedRequest(BaseModel):
    model: str
    input: str | list[str]
    keep_alive: str | float | int | None = None
    truncate: bool = True


class OllamaModelRequest(BaseModel):
    model: str | None = None
    name: str | None = None  # older clients send "name"
    stream: bool = True
    insecure: bool = False

    def target(self) -> str:
        return self.model or self.name or ""


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: str | float | int | None) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a Go duration like "5m", "1h30m", "30s";
    negative keeps the model loaded; None or "" means the server's default."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        if not text:
            return None
        sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
        try:
            seconds = float(body)
        except ValueError:
            parts = _DURATION_PART.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise UsageError(
                    f"invalid keep_alive {value!r}: use seconds or a duration such "
                    'as "5m" or "1h30m" (negative: stay loaded)'
                ) from None
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        seconds *= sign
    if seconds != seconds:  # NaN
        raise UsageError(f"invalid keep_alive {value!r}: not a number")
    return float("inf") if seconds < 0 else seconds
