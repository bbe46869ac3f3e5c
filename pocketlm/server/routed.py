"""Chat requests answered through the tiers (``model: "auto"`` or a tier's name), in the
OpenAI and Ollama shapes. The tier that answered and why: the ``x-pocketlm-tier`` and
``x-pocketlm-route`` headers, and a ``route`` field (with cost and energy) in the response,
the last stream event included. A request tightens the privacy policy with the
``x-pocketlm-privacy: redact|block`` header (never loosens it)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from sse_starlette import EventSourceResponse

from pocketlm.errors import UsageError
from pocketlm.params import GenerationParams
from pocketlm.services.route.hybrid import Hybrid, Reply
from pocketlm.services.route.tiers import POLICIES

PRIVACY_HEADER = "x-pocketlm-privacy"


def hybrid_for(request: Request, model: str | None) -> Hybrid | None:
    """The tiers, when this request is routed through them (None: a plain model request)."""
    hybrid: Hybrid | None = request.app.state.hybrid
    if model == "auto":
        if hybrid is None:
            raise UsageError(
                "invalid value for 'model': 'auto' routes between tiers, and this server has none",
                "start it with pocketlm serve --tiers FILE (docs/hybrid.md), or name a model",
                param="model",
            )
        return hybrid
    if hybrid is not None and model and hybrid.tiers.get(model) is not None:
        return hybrid
    return None


def request_privacy(request: Request):
    value = request.headers.get(PRIVACY_HEADER)
    if value is None:
        return None
    value = value.strip().lower()
    if value not in POLICIES:
        raise UsageError(
            f"invalid {PRIVACY_HEADER} header '{value[:32]}'", "use allow, redact or block"
        )
    return value


def check_plain(n: int = 1, **features: Any) -> None:
    """Routed requests answer one choice of free text."""
    if n != 1:
        raise UsageError("invalid value for 'n': routed requests answer one choice", param="n")
    for name, value in features.items():
        if value:
            raise UsageError(
                f"'{name}' is not available when routing between tiers",
                "name a model instead of a tier or 'auto'",
                param=name,
            )


async def openai_chat(hybrid: Hybrid, request: Request, body, messages, params: GenerationParams):
    check_plain(body.n, logprobs=body.logprobs, response_format=_structured(body.response_format))
    reply = await hybrid.chat(messages, params, model=body.model, privacy=request_privacy(request))
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": rid, "created": created, "model": body.model}
    headers = reply.route.headers()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _openai_events(reply, head, include_usage)
        return EventSourceResponse(events, sep="\n", headers=headers)
    text = await reply.text()
    return JSONResponse(
        {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": _usage(reply),
            "route": reply.route.as_dict(),
        },
        headers=headers,
    )


def _structured(fmt) -> bool:
    return fmt is not None and fmt.type != "text"


def _usage(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.tokens_in,
        "completion_tokens": reply.tokens_out,
        "total_tokens": reply.tokens_in + reply.tokens_out,
    }


async def _openai_events(reply: Reply, head: dict, include_usage: bool):
    chunk = {**head, "object": "chat.completion.chunk"}
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    yield json.dumps({**chunk, "choices": [first]})
    try:
        async for text in reply.pieces:
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
            yield json.dumps({**chunk, "choices": [choice]})
    except Exception as e:  # the answer broke off after it started: say so in the stream
        error = {"message": str(e)[:300], "type": "server_error", "param": None, "code": None}
        yield json.dumps({"error": error})
        return
    last = {"index": 0, "delta": {}, "finish_reason": reply.finish_reason}
    yield json.dumps({**chunk, "choices": [last], "route": reply.route.as_dict()})
    if include_usage:
        yield json.dumps({**chunk, "choices": [], "usage": _usage(reply)})
    yield "[DONE]"


async def ollama_chat(hybrid: Hybrid, request: Request, body, params: GenerationParams):
    from pocketlm.server.ollama_api import _now  # (ollama_api imports this module)

    check_plain(format=body.format)
    messages = [m.model_dump() for m in body.messages]
    started = time.perf_counter()
    reply = await hybrid.chat(messages, params, model=body.model, privacy=request_privacy(request))

    def final() -> dict:
        return {
            "model": body.model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reply.finish_reason,
            "total_duration": int((time.perf_counter() - started) * 1e9),
            "prompt_eval_count": reply.tokens_in,
            "eval_count": reply.tokens_out,
            "route": reply.route.as_dict(),
        }

    if body.stream is False:
        text = await reply.text()
        out = final()
        out["message"]["content"] = text
        return JSONResponse(out, headers=reply.route.headers())

    async def lines():
        try:
            async for text in reply.pieces:
                piece = {"role": "assistant", "content": text}
                line = {"model": body.model, "created_at": _now(), "message": piece, "done": False}
                yield (json.dumps(line) + "\n").encode()
        except Exception as e:
            yield (json.dumps({"error": str(e)[:300]}) + "\n").encode()
            return
        yield (json.dumps(final()) + "\n").encode()

    return StreamingResponse(
        lines(), media_type="application/x-ndjson", headers=reply.route.headers()
    )
