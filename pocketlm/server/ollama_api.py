"""Ollama-compatible routes (/api/*): NDJSON streaming, options, format, keep_alive, timings."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pocketlm import __version__
from pocketlm.errors import ContextOverflowError, EngineError, PocketError, UsageError
from pocketlm.server import routed
from pocketlm.server.openai_api import response_grammar
from pocketlm.server.schemas import (
    JSONSchemaSpec,
    OllamaChatRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaModelRequest,
    ResponseFormat,
    generation_params,
    parse_keep_alive,
)
from pocketlm.services.serving import ServedModel
from pocketlm.store.names import shown, valid_name

router = APIRouter(prefix="/api")
OLLAMA_COMPAT_VERSION = "0.12.0"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


def _details(m) -> dict:
    return {
        "parent_model": m.parent or "",
        "format": "gguf",
        "family": m.architecture,
        "families": [m.architecture],
        "parameter_size": f"{m.parameter_count / 1e6:.0f}M",
        "quantization_level": m.quantization,
    }


@router.get("/version")
async def version() -> dict:
    return {"version": f"{OLLAMA_COMPAT_VERSION}-pocketlm.{__version__}"}


@router.get("/tags")
async def tags(request: Request) -> dict:
    store = request.app.state.pool.store
    return {
        "models": [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": m.created_at,
                "size": m.size_bytes,
                "digest": m.sha256,
                "details": _details(m),
            }
            for m in store.list()
        ]
    }


@router.post("/show")
async def show(body: OllamaModelRequest, request: Request) -> dict:
    m = request.app.state.pool.store.get(body.target())
    arch = m.architecture
    return {
        "license": m.license or "",
        "modelfile": f"FROM {m.path}\n",
        "parameters": "",
        "template": m.chat_template or "",
        "details": _details(m),
        "model_info": {
            "general.architecture": arch,
            "general.parameter_count": m.parameter_count,
            f"{arch}.context_length": m.context_length,
        },
        "capabilities": ["completion", "embedding"],
        "modified_at": m.created_at,
    }


@router.get("/ps")
async def ps(request: Request) -> dict:
    pool = request.app.state.pool
    models = []
    for name, s in pool.models.items():
        expires = datetime.fromtimestamp(min(s.expires_at, 4102444800), UTC).isoformat()
        entry = {
            "name": name,
            "model": name,
            "size": s.size_bytes,
            "size_vram": 0,
            "digest": s.manifest.sha256 if s.manifest else "",
            "expires_at": expires,
            "context_length": s.n_ctx_seq,
            "active": s.active,
        }
        if s.manifest:
            entry["details"] = _details(s.manifest)
        models.append(entry)
    return {"models": models}


def _format(fmt: str | dict | None) -> ResponseFormat | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return ResponseFormat(type="json_object")
    if isinstance(fmt, dict):
        return ResponseFormat(type="json_schema", json_schema=JSONSchemaSpec(schema=fmt))
    raise UsageError(f'invalid format {fmt!r}: use "json" or a JSON schema object')


def _params(body, served: ServedModel):
    """The body's options as GenerationParams. num_predict: > 0 a limit, else (Ollama's -1
    and -2) until the context ends. num_ctx cannot resize a running server's sequences: a
    smaller one limits this request, a larger one is refused."""
    o = body.options
    if o is not None and o.num_ctx is not None and o.num_ctx > served.n_ctx_seq:
        raise UsageError(
            f"invalid value for 'options.num_ctx': {o.num_ctx} is more than the "
            f"{served.n_ctx_seq} tokens each sequence of this server holds",
            f"leave it out, or start the server with --ctx {o.num_ctx}",
            param="options.num_ctx",
        )
    return _options(body)


def _options(body):
    """The body's options as GenerationParams (num_predict <= 0: no limit)."""
    o = body.options
    if o is None:
        return generation_params(body)
    stop = (o.stop,) if isinstance(o.stop, str) else o.stop
    limit = o.num_predict if o.num_predict and o.num_predict > 0 else None
    return generation_params(o, stop=stop, max_tokens=limit)


async def _run(request: Request, body, served: ServedModel, tokens, started, load_s, wrap):
    params = _params(body, served)
    o = body.options
    if o and o.num_ctx is not None:  # the request's own, smaller window
        need = len(tokens) + (params.max_tokens or 1)
        if need > o.num_ctx:
            raise ContextOverflowError(
                len(tokens),
                params.max_tokens or 0,
                o.num_ctx,
                "shorten the prompt, or raise options.num_ctx",
            )
        room = o.num_ctx - len(tokens)
        params = params.model_copy(update={"max_tokens": min(params.max_tokens or room, room)})
    served.check_fits(len(tokens), params.max_tokens)
    grammar = await asyncio.to_thread(response_grammar, _format(body.format), served, "format")
    stream = served.stream(tokens, params, grammar=grammar)
    keep_alive = parse_keep_alive(body.keep_alive)
    pool = request.app.state.pool

    def final(done, text_all: str) -> dict:
        t_first = done.t_first or done.t_end
        return {
            "model": body.model,
            "created_at": _now(),
            "done": True,
            "done_reason": "length" if done.reason == "length" else "stop",
            "total_duration": _ns(time.perf_counter() - started),
            "load_duration": _ns(load_s),
            "prompt_eval_count": done.prompt_tokens - done.cached_tokens,
            "prompt_eval_duration": _ns(t_first - done.t_started),
            "eval_count": done.completion_tokens,
            "eval_duration": _ns(done.t_end - t_first),
            # pocketlm's own: what speculative decoding did (Ollama has no such fields)
            "speculative": done.speculative,
            "drafted_count": done.drafted_tokens,
            "accepted_draft_count": done.accepted_tokens,
            **wrap("", final=True),
        }

    async def after() -> None:
        if keep_alive == 0:
            await pool.unload(served.name)
        elif keep_alive is not None:
            served.touch(keep_alive)

    if body.stream:

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for piece in stream:
                    if piece.done is not None:
                        if piece.text:
                            yield _line(
                                {
                                    "model": body.model,
                                    "created_at": _now(),
                                    **wrap(piece.text),
                                    "done": False,
                                }
                            )
                        if piece.done.error:
                            yield _line({"error": piece.done.error})
                            return
                        yield _line(final(piece.done, ""))
                    elif piece.text:
                        yield _line(
                            {
                                "model": body.model,
                                "created_at": _now(),
                                **wrap(piece.text),
                                "done": False,
                            }
                        )
            finally:
                await stream.aclose()
                await after()

        return StreamingResponse(lines(), media_type="application/x-ndjson")
    text = ""
    async for piece in stream:
        text += piece.text
        if piece.done is not None:
            if piece.done.error:
                raise EngineError(f"generation failed: {piece.done.error}")
            out = final(piece.done, text)
            out.update(wrap(text))
    await after()
    return out


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


async def _acquire(request: Request, body) -> tuple[ServedModel, float]:
    pool = request.app.state.pool
    loaded = body.model in pool.models
    t = time.perf_counter()
    served = await pool.acquire(body.model, parse_keep_alive(body.keep_alive))
    return served, 0.0 if loaded else time.perf_counter() - t


async def _load_only(request: Request, body, done_field: dict) -> dict:
    """An empty prompt loads (or, with keep_alive 0, unloads) the model, as in Ollama."""
    pool = request.app.state.pool
    if parse_keep_alive(body.keep_alive) == 0:
        await pool.unload(body.model)
        return {
            "model": body.model,
            "created_at": _now(),
            "done": True,
            "done_reason": "unload",
            **done_field,
        }
    await pool.acquire(body.model, parse_keep_alive(body.keep_alive))
    return {
        "model": body.model,
        "created_at": _now(),
        "done": True,
        "done_reason": "load",
        **done_field,
    }


@router.post("/generate")
async def generate(body: OllamaGenerateRequest, request: Request):
    started = time.perf_counter()
    if not body.prompt and not body.system:
        return await _load_only(request, body, {"response": ""})
    served, load_s = await _acquire(request, body)
    # off the event loop: a template runs for up to its time budget, a long text tokenizes
    if body.raw or not served.template:
        prompt = f"{body.system}\n\n{body.prompt}" if body.system else body.prompt
        tokens = await asyncio.to_thread(served.text_tokens, prompt)
    else:
        msgs = ([{"role": "system", "content": body.system}] if body.system else []) + [
            {"role": "user", "content": body.prompt}
        ]
        tokens = await asyncio.to_thread(served.chat_tokens, msgs)

    def wrap(text: str, final: bool = False) -> dict[str, Any]:
        return {"response": text} if not final else {"response": ""}

    return await _run(request, body, served, tokens, started, load_s, wrap)


@router.post("/chat")
async def chat(body: OllamaChatRequest, request: Request):
    started = time.perf_counter()
    hybrid = routed.hybrid_for(request, body.model)
    if hybrid is not None:  # model "auto" or a tier's name
        return await routed.ollama_chat(hybrid, request, body, _options(body))
    if not body.messages:
        return await _load_only(request, body, {"message": {"role": "assistant", "content": ""}})
    served, load_s = await _acquire(request, body)
    tokens = await asyncio.to_thread(served.chat_tokens, [m.model_dump() for m in body.messages])

    def wrap(text: str, final: bool = False) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}

    return await _run(request, body, served, tokens, started, load_s, wrap)


@router.post("/embed")
async def embed(body: OllamaEmbedRequest, request: Request) -> dict:
    started = time.perf_counter()
    served, load_s = await _acquire(request, body)
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors, used = await served.embed(texts)
    return {
        "model": body.model,
        "embeddings": vectors,
        "total_duration": _ns(time.perf_counter() - started),
        "load_duration": _ns(load_s),
        "prompt_eval_count": used,
    }


@router.post("/pull")
async def pull(body: OllamaModelRequest, request: Request):
    from pocketlm.store.pull import pull as do_pull

    name = body.target()
    if not valid_name(name):  # a path would register any file on the server's disk
        raise UsageError(
            f"invalid value for 'model': '{shown(name)}' is not a model name",
            "pull takes catalog names; a local file is imported on the server's "
            "machine: pocketlm import PATH",
        )
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    progress = _QueueProgress(loop, queue)
    store = request.app.state.pool.store

    async def work() -> None:
        try:
            await asyncio.to_thread(do_pull, name, store, progress)
            await queue.put({"status": "success"})
        except PocketError as e:
            await queue.put({"error": e.render("http"), "_http": e.http_status})
        except Exception as e:
            await queue.put({"error": str(e), "_http": 500})
        await queue.put(None)

    task = asyncio.create_task(work())
    if not body.stream:
        await task
        items = []
        while (item := queue.get_nowait()) is not None:
            items.append(item)
        last = items[-1]
        status = last.pop("_http", 200)
        return JSONResponse(last, status_code=status)

    async def lines() -> AsyncIterator[bytes]:
        yield _line({"status": "pulling manifest"})
        while (item := await queue.get()) is not None:
            item.pop("_http", None)  # a stream has already answered 200
            yield _line(item)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


class _QueueProgress:
    """pull's progress reports, as Ollama's NDJSON status objects."""

    def __init__(self, loop, queue):
        self.loop, self.queue = loop, queue

    def _put(self, item: dict) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def task(self, description: str, total: int | None, unit: str = "bytes"):
        progress = self

        class _Task:
            done = 0

            def advance(self, n: int) -> None:
                self.update(self.done + n)

            def update(self, completed: int, t: int | None = None) -> None:
                self.done = completed
                progress._put({"status": description, "total": t or total, "completed": completed})

        self._put({"status": description, "total": total, "completed": 0})
        return _Task()

    def note(self, message: str) -> None:
        self._put({"status": message})

    def close(self) -> None:
        pass


@router.delete("/delete")
async def delete(body: OllamaModelRequest, request: Request):
    pool = request.app.state.pool
    name = body.target()
    pool.store.get(name)  # 404 if unknown
    await pool.unload(name)
    pool.store.remove(name)
    return JSONResponse({}, status_code=200)
