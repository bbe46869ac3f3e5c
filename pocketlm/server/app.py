"""The FastAPI application: routes, errors in each API's own shape, auth, metrics, web page."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocketlm import __version__
from pocketlm.engine.batch import Overloaded
from pocketlm.errors import PocketError
from pocketlm.server import ollama_api, openai_api
from pocketlm.services.serving import ModelPool

PROTECTED = ("/v1", "/api", "/metrics")


def _error(
    request: Request,
    status: int,
    message: str,
    param: str | None = None,
    kind: str = "invalid_request_error",
    headers: dict | None = None,
) -> JSONResponse:
    """OpenAI's error object under /v1, Ollama's {"error": ...} elsewhere."""
    if request.url.path.startswith("/v1"):
        body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


class Metrics:
    def __init__(self, pool: ModelPool):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("pocketlm_requests", "HTTP requests", ["path", "status"],
                                registry=r)  # fmt: skip
        self.prompt_tokens = Gauge("pocketlm_prompt_tokens_total", "prompt tokens evaluated",
                                   registry=r)  # fmt: skip
        self.generated = Gauge("pocketlm_generated_tokens_total", "tokens generated", registry=r)
        self.restored = Gauge("pocketlm_prompt_tokens_restored_total",
                              "prompt tokens copied back from the prefix cache's RAM tier "
                              "instead of evaluated", registry=r)  # fmt: skip
        self.cache_ram = Gauge("pocketlm_prompt_cache_ram_bytes",
                               "bytes the prefix cache's RAM tier holds", registry=r)  # fmt: skip
        self.queue = Gauge("pocketlm_queue_depth", "requests waiting for a sequence", registry=r)
        self.active = Gauge("pocketlm_active_sequences", "sequences being generated", registry=r)
        self.loaded = Gauge("pocketlm_loaded_models", "models in memory", registry=r)
        self.tps = Gauge("pocketlm_generated_tokens_per_second",
                         "generation rate over the last scrape interval", registry=r)  # fmt: skip
        self.pool = pool
        self._last = (time.monotonic(), 0)

    def render(self) -> bytes:
        engines = [m.engine for m in self.pool.models.values()]
        generated = sum(e.tokens_generated for e in engines)
        self.prompt_tokens.set(sum(e.tokens_evaluated for e in engines))
        self.generated.set(generated)
        self.restored.set(sum(e.tokens_restored for e in engines))
        self.cache_ram.set(sum(e.cache_ram_used for e in engines))
        self.queue.set(sum(e.queued for e in engines))
        self.active.set(sum(e.active for e in engines))
        self.loaded.set(len(engines))
        now = time.monotonic()
        then, before = self._last
        if now > then and generated >= before:
            self.tps.set((generated - before) / (now - then))
        self._last = (now, generated)
        return generate_latest(self.registry)


class Guard:
    """The API key (Bearer token) on the API paths, JSON bodies for Ollama's clients (they
    send no content type), and the request counter. Plain ASGI: Starlette's
    BaseHTTPMiddleware (``@app.middleware``) passes every chunk of a streamed answer through
    a task and a memory stream of its own, about a third of the event loop's work per token
    with 8 streams."""

    def __init__(self, app, *, api_key: str | None, metrics: Metrics):
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = scope["headers"]
        if self.api_key and path.startswith(PROTECTED) and path != "/api/version":
            given = next((v for k, v in headers if k == b"authorization"), b"")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                response = _error(
                    Request(scope),
                    401,
                    "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
                    kind="authentication_error",
                )
                await response(scope, receive, send)
                return
        if path.startswith("/api"):
            kind = next((v for k, v in headers if k == b"content-type"), b"")
            if b"json" not in kind:
                # Ollama reads every body as JSON (its docs use `curl -d '{...}'`, no header)
                scope["headers"] = [(k, v) for k, v in headers if k != b"content-type"] + [
                    (b"content-type", b"application/json")
                ]
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(route, str(status)).inc()


def create_app(pool: ModelPool | None = None, *, api_key: str | None = None) -> FastAPI:
    pool = pool or ModelPool()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = asyncio.create_task(pool.reap())
        try:
            yield
        finally:
            reaper.cancel()
            await pool.close()

    app = FastAPI(title="pocketlm", version=__version__, lifespan=lifespan)
    app.state.pool = pool
    metrics = app.state.metrics = Metrics(pool)

    app.add_middleware(Guard, api_key=api_key, metrics=metrics)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, e: Overloaded):
        return _error(request, 503, str(e), kind="server_overloaded", headers={"Retry-After": "1"})

    @app.exception_handler(PocketError)
    async def pocket_error(request: Request, e: PocketError):
        kind = "not_found_error" if e.http_status == 404 else "invalid_request_error"
        param = "messages" if "context window" in e.message else None
        return _error(request, e.http_status, str(e), param=param, kind=kind)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        # e.g. a body that is not JSON, or an unknown route: still in the API's own shape
        return _error(request, e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        err = e.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        return _error(request, 400, f"invalid value for '{field}': {err.get('msg', '')}",
                      param=field)  # fmt: skip

    app.include_router(openai_api.router)
    app.include_router(ollama_api.router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    static = resources.files("pocketlm.server") / "static"
    app.mount("/", StaticFiles(directory=str(static), html=True), name="static")
    return app
