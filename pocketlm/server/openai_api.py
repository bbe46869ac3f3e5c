"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from pocketlm.errors import EngineError
from pocketlm.server import routed
from pocketlm.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponseFormat,
    generation_params,
)
from pocketlm.services.grammar import json_grammar
from pocketlm.services.serving import Piece, ServedModel, merge

router = APIRouter(prefix="/v1")


def _pool(request: Request):
    return request.app.state.pool


def _stops(stop: str | list[str] | None) -> tuple[str, ...] | None:
    if stop is None:
        return None
    return (stop,) if isinstance(stop, str) else tuple(stop)


def response_grammar(fmt: ResponseFormat | None, served: ServedModel, field: str):
    """The grammar a response format asks for (None: free text). Blocking: a new schema is
    checked in a process of its own (pocketlm.services.grammar); call it off the loop."""
    if fmt is None or fmt.type == "text":
        return None
    schema = None
    if fmt.type == "json_schema" and fmt.json_schema and fmt.json_schema.schema_:
        schema = fmt.json_schema.schema_
    return json_grammar(schema, str(served.path), field=field)


@router.get("/models")
async def list_models(request: Request) -> dict:
    pool = _pool(request)
    data = [
        {"id": m.name, "object": "model", "created": _created(m.created_at), "owned_by": "pocketlm"}
        for m in pool.store.list()
    ]
    listed = {d["id"] for d in data}
    data += [
        {"id": n, "object": "model", "created": int(s.loaded_at), "owned_by": "pocketlm"}
        for n, s in pool.models.items()
        if n not in listed
    ]
    hybrid = request.app.state.hybrid
    if hybrid is not None:  # the router and every tier, by name
        names = ["auto", *(t.name for t in hybrid.tiers.tiers)]
        data += [{"id": n, "object": "model", "created": 0, "owned_by": "tier"} for n in names]
    return {"object": "list", "data": data}


def _created(iso: str) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return 0


class GenerationFailed(EngineError):
    """The engine failed a sequence (after its response had started, if streamed)."""

    def __init__(self, error: str):
        super().__init__(f"generation failed: {error}")


def _finish_reason(piece: Piece) -> str:
    if piece.done.error:
        raise GenerationFailed(piece.done.error)
    return "length" if piece.done.reason == "length" else "stop"


def _error_event(e: Exception) -> str:
    return json.dumps(
        {"error": {"message": str(e), "type": "server_error", "param": None, "code": None}}
    )


def _sse(events) -> EventSourceResponse:
    # "\n\n" between events, as OpenAI sends them (sse-starlette defaults to "\r\n")
    return EventSourceResponse(events, sep="\n")


class _Tally:
    """Completion tokens of a request's choices, and what speculative decoding did for them."""

    def __init__(self) -> None:
        self.tokens = self.drafted = self.accepted = 0
        self.mode = "off"

    def add(self, done) -> None:
        self.tokens += done.completion_tokens
        self.drafted += done.drafted_tokens
        self.accepted += done.accepted_tokens
        self.mode = done.speculative


def _usage(prompt_tokens: int, completion: _Tally) -> dict:
    """OpenAI's usage; drafts as its predicted outputs count them (accepted and rejected
    prediction tokens), and the speculative decoding mode."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion.tokens,
        "total_tokens": prompt_tokens + completion.tokens,
        "completion_tokens_details": {
            "accepted_prediction_tokens": completion.accepted,
            "rejected_prediction_tokens": completion.drafted - completion.accepted,
        },
        "speculative": completion.mode,
    }


def _token_logprob(served: ServedModel, tok: int, lp: float, top) -> dict:
    text = served.token_text(tok)
    return {
        "token": text,
        "logprob": lp,
        "bytes": list(served.model.piece(tok)),
        "top_logprobs": [
            {"token": served.token_text(t), "logprob": v, "bytes": list(served.model.piece(t))}
            for t, v in (top or [])
        ],
    }


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    max_tokens = body.max_completion_tokens or body.max_tokens  # None: until the context ends
    hybrid = routed.hybrid_for(request, body.model)
    if hybrid is not None:  # model "auto" or a tier's name
        params = generation_params(body, stop=_stops(body.stop), max_tokens=max_tokens)
        return await routed.openai_chat(hybrid, request, body, messages, params)
    pool = _pool(request)
    served = await pool.acquire(body.model)
    # off the event loop: a template runs for up to its time budget, a long text tokenizes
    tokens = await asyncio.to_thread(served.chat_tokens, messages)
    params = generation_params(body, stop=_stops(body.stop), max_tokens=max_tokens)
    n_lp = (body.top_logprobs or 0) if body.logprobs else None
    served.check_fits(len(tokens), params.max_tokens, "messages")  # before a grammar is built
    grammar = await asyncio.to_thread(
        response_grammar, body.response_format, served, "response_format"
    )
    streams = served.start([tokens], params, n=body.n, grammar=grammar, n_logprobs=n_lp)
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": rid, "created": created, "model": body.model}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(_chat_events(served, streams, head, len(tokens), n_lp, include_usage))
    texts, reasons = [""] * body.n, ["stop"] * body.n
    lps: list[list] = [[] for _ in range(body.n)]
    completion = _Tally()
    async for i, piece in merge(streams):
        texts[i] += piece.text
        if piece.event is not None and n_lp is not None:
            e = piece.event
            lps[i].append(_token_logprob(served, e.token, e.logprob, e.top))
        if piece.done is not None:
            reasons[i] = _finish_reason(piece)
            completion.add(piece.done)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": texts[i]},
            "logprobs": {"content": lps[i]} if n_lp is not None else None,
            "finish_reason": reasons[i],
        }
        for i in range(body.n)
    ]
    return {
        **head,
        "object": "chat.completion",
        "choices": choices,
        "usage": _usage(len(tokens), completion),
    }


async def _chat_events(served, streams, head, prompt_tokens, n_lp, include_usage):
    chunk = {**head, "object": "chat.completion.chunk"}
    for i in range(len(streams)):
        first = {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield json.dumps({**chunk, "choices": [first]})
    completion = _Tally()
    async for i, piece in merge(streams):
        choice: dict[str, Any] = {"index": i, "delta": {}, "finish_reason": None}
        if piece.text:
            choice["delta"] = {"content": piece.text}
        if piece.event is not None and n_lp is not None:
            e = piece.event
            choice["logprobs"] = {"content": [_token_logprob(served, e.token, e.logprob, e.top)]}
        if piece.done is not None:
            try:
                choice["finish_reason"] = _finish_reason(piece)
            except GenerationFailed as e:
                yield _error_event(e)
                return
            completion.add(piece.done)
        if piece.text or piece.done is not None or "logprobs" in choice:
            yield json.dumps({**chunk, "choices": [choice]})
    if include_usage:
        yield json.dumps({**chunk, "choices": [], "usage": _usage(prompt_tokens, completion)})
    yield "[DONE]"


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    pool = _pool(request)
    served = await pool.acquire(body.model)
    if isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], int):
        prompts = [list(body.prompt)]
    else:
        texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        prompts = await asyncio.to_thread(lambda: [served.text_tokens(t) for t in texts])
    n_lp = body.logprobs
    max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
    score_only = max_tokens == 0 and body.echo  # the prompt's logprobs only
    params = generation_params(body, stop=_stops(body.stop), max_tokens=max(max_tokens, 1))
    streams = served.start(
        prompts,
        params,
        n=body.n,
        n_logprobs=n_lp,
        prompt_logprobs=body.echo and n_lp is not None,
        score_only=score_only,
    )
    plan = [tokens for tokens in prompts for _ in range(body.n)]
    rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": body.model}
    prompt_total = sum(len(t) for t in prompts)
    if body.stream:
        return _sse(_completion_events(served, streams, plan, head, body.echo, n_lp))
    texts = ["" for _ in streams]
    toks: list[list] = [[] for _ in streams]
    reasons, prompt_lps = ["stop"] * len(streams), [None] * len(streams)
    completion = _Tally()
    async for i, piece in merge(streams):
        texts[i] += piece.text
        if piece.event is not None:
            toks[i].append(piece.event)
        if piece.done is not None:
            reasons[i] = _finish_reason(piece)
            prompt_lps[i] = piece.done.prompt_logprobs
            completion.add(piece.done)
    choices = []
    for i in range(len(streams)):
        text = (served.model.detokenize(plan[i]) if body.echo else "") + texts[i]
        lp = None
        if n_lp is not None:
            lp = _completion_logprobs(served, plan[i] if body.echo else [], prompt_lps[i], toks[i])
        choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": reasons[i]})
    return {**head, "choices": choices, "usage": _usage(prompt_total, completion)}


def _completion_logprobs(served, prompt: list[int], prompt_lps, events) -> dict:
    tokens, token_lps, tops, offsets, at = [], [], [], [], 0
    for j, tok in enumerate(prompt):
        text = served.token_text(tok)
        entry = prompt_lps[j] if prompt_lps and j < len(prompt_lps) else None
        tokens.append(text)
        token_lps.append(entry[0] if entry else None)
        tops.append({served.token_text(t): v for t, v in entry[1]} if entry else None)
        offsets.append(at)
        at += len(text)
    for e in events:
        text = served.token_text(e.token)
        tokens.append(text)
        token_lps.append(e.logprob)
        tops.append({served.token_text(t): v for t, v in (e.top or [])})
        offsets.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_lps,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


async def _completion_events(served, streams, plan, head, echo, n_lp):
    if echo:
        for i, tokens in enumerate(plan):
            choice = {
                "index": i,
                "text": served.model.detokenize(tokens),
                "logprobs": None,
                "finish_reason": None,
            }
            yield json.dumps({**head, "choices": [choice]})
    async for i, piece in merge(streams):
        choice = {"index": i, "text": piece.text, "logprobs": None, "finish_reason": None}
        if piece.event is not None and n_lp is not None:
            choice["logprobs"] = _completion_logprobs(served, [], None, [piece.event])
        if piece.done is not None:
            try:
                choice["finish_reason"] = _finish_reason(piece)
            except GenerationFailed as e:
                yield _error_event(e)
                return
        if piece.text or piece.done is not None or choice["logprobs"]:
            yield json.dumps({**head, "choices": [choice]})
    yield "[DONE]"


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    served = await _pool(request).acquire(body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors, used = await served.embed(texts)
    if body.encoding_format == "base64":  # little-endian float32, what the openai client asks
        import base64

        import numpy as np

        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    return {
        "object": "list",
        "model": body.model,
        "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
