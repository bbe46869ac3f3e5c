"""The FastAPI application: routes, errors in each API's own shape, auth, metrics, web page."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocketlm import __version__
from pocketlm.engine.batch import Overloaded
from pocketlm.errors import PocketError
from pocketlm.params import ServeParams
from pocketlm.server import ollama_api, openai_api
from pocketlm.services.route.hybrid import Hybrid
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
    def __init__(self, pool: ModelPool, hybrid: Hybrid | None = None):
        r = self.registry = CollectorRegistry()
        self.hybrid = hybrid
        tier = ["tier"]
        self.tier_gauges = {
            "requests": Gauge(
                "pocketlm_tier_requests_total", "requests answered", tier, registry=r
            ),
            "tokens_in": Gauge(
                "pocketlm_tier_prompt_tokens_total", "prompt tokens", tier, registry=r
            ),
            "tokens_out": Gauge(
                "pocketlm_tier_completion_tokens_total", "completion tokens", tier, registry=r
            ),
            "cost": Gauge(
                "pocketlm_tier_cost_total",
                "price of the tokens (the tier's currency)",
                tier,
                registry=r,
            ),
            "energy_j": Gauge(
                "pocketlm_tier_energy_joules_total",
                "energy of local answers (RAPL, else CPU time x watts per core: an estimate)",
                tier,
                registry=r,
            ),
            "cost_if_remote": Gauge(
                "pocketlm_tier_cost_if_remote_total",
                "what the same tokens would have cost on the first remote tier",
                tier,
                registry=r,
            ),
            "fallbacks": Gauge(
                "pocketlm_tier_fallbacks_total",
                "remote failures answered locally",
                tier,
                registry=r,
            ),
        }
        self.requests = Counter(
            "pocketlm_requests", "HTTP requests", ["path", "status"], registry=r
        )
        self.prompt_tokens = Gauge(
            "pocketlm_prompt_tokens_total", "prompt tokens evaluated", registry=r
        )
        self.generated = Gauge("pocketlm_generated_tokens_total", "tokens generated", registry=r)
        self.restored = Gauge(
            "pocketlm_prompt_tokens_restored_total",
            "prompt tokens copied back from the prefix cache's RAM tier instead of evaluated",
            registry=r,
        )
        self.drafted = Gauge(
            "pocketlm_drafted_tokens_total",
            "tokens drafted by speculative decoding (prompt lookup or a draft model) and verified",
            registry=r,
        )
        self.accepted = Gauge(
            "pocketlm_accepted_draft_tokens_total",
            "drafted tokens the model kept (each saved a decode step)",
            registry=r,
        )
        self.cache_ram = Gauge(
            "pocketlm_prompt_cache_ram_bytes", "bytes the prefix cache's RAM tier holds", registry=r
        )
        self.queue = Gauge("pocketlm_queue_depth", "requests waiting for a sequence", registry=r)
        self.active = Gauge("pocketlm_active_sequences", "sequences being generated", registry=r)
        self.loaded = Gauge("pocketlm_loaded_models", "models in memory", registry=r)
        self.tps = Gauge(
            "pocketlm_generated_tokens_per_second",
            "generation rate over the last scrape interval",
            registry=r,
        )
        self.pool = pool
        self._last = (time.monotonic(), 0)

    def render(self) -> bytes:
        if self.hybrid is not None:
            for name, stats in self.hybrid.stats.items():
                for key, gauge in self.tier_gauges.items():
                    gauge.labels(name).set(getattr(stats, key))
        engines = [m.engine for m in self.pool.models.values()]
        generated = sum(e.tokens_generated for e in engines)
        self.prompt_tokens.set(sum(e.tokens_evaluated for e in engines))
        self.generated.set(generated)
        self.restored.set(sum(e.tokens_restored for e in engines))
        self.drafted.set(sum(e.tokens_drafted for e in engines))
        self.accepted.set(sum(e.tokens_accepted for e in engines))
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


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The web page loads nothing from elsewhere and is never framed (clickjacking)
PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


@dataclass
class Limits:
    """What one HTTP request may cost before any route sees it, in bytes and seconds; the
    defaults are ServeParams' (`serve --max-body`, `--body-timeout`)."""

    max_body_bytes: int = ServeParams().max_body << 20  # 32k tokens of text are ~128 kB
    body_idle_s: float = ServeParams().body_timeout  # the longest wait for a body's next piece
    body_total_s: float = 60.0  # the longest a whole body may take to arrive

    @classmethod
    def of(cls, serve: ServeParams) -> Limits:
        return cls(max_body_bytes=serve.max_body << 20, body_idle_s=serve.body_timeout)


class _Refused(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        self.status, self.message, self.kind = status, message, kind


class Guard:
    """Everything checked before a route runs, in plain ASGI (Starlette's BaseHTTPMiddleware
    passes every chunk of a streamed answer through a task and a memory stream of its own,
    about a third of the event loop's work per token with 8 streams):

    - the ``Host`` header names this server (a web page that rebinds its own DNS name to
      127.0.0.1 cannot reach it), and a state-changing request from a web page of another
      origin is refused unless that origin is allowed (a page can POST ``text/plain``
      without a CORS preflight);
    - the API key (Bearer token) on the API paths and the OpenAPI document;
    - the body's size and the time between its pieces;
    - JSON bodies for Ollama's clients (they send no content type);
    - a client that hangs up: its request is cancelled at once, queued or running, which
      frees its sequence;
    - the request counter, and restrictive headers on the web page."""

    def __init__(
        self,
        app,
        *,
        api_key: str | None,
        metrics: Metrics,
        hosts: HostCheck,
        origins: Sequence[str] = (),
        limits: Limits | None = None,
    ):
        self.app, self.api_key, self.metrics = app, api_key, metrics
        self.hosts, self.origins = hosts, frozenset(o.rstrip("/") for o in origins)
        self.limits = limits or Limits()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check(scope)
        except _Refused as e:
            response = _error(Request(scope), e.status, e.message, kind=e.kind)
            await response(scope, receive, send)
            return
        path, headers = scope["path"], scope["headers"]
        if path.startswith("/api"):
            kind = next((v for k, v in headers if k == b"content-type"), b"")
            if b"json" not in kind:
                # Ollama reads every body as JSON (its docs use `curl -d '{...}'`, no header)
                scope["headers"] = [(k, v) for k, v in headers if k != b"content-type"] + [
                    (b"content-type", b"application/json")
                ]
        await _Exchange(self, scope, receive, send).run()

    def _check(self, scope) -> None:
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.hosts.allows(host):
            raise _Refused(
                403,
                f"refused: Host {host[:100]!r} is not this server's name "
                "(start it with --allowed-host NAME to serve it under that name)",
                "permission_error",
            )
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
        if origin and scope["method"] in STATE_CHANGING and not self._same_origin(origin, host):
            raise _Refused(
                403,
                f"refused: a web page of {origin[:100]!r} may not call this "
                "server (start it with --allowed-origin ORIGIN to allow one)",
                "permission_error",
            )
        path = scope["path"]
        protected = path.startswith(PROTECTED) and path != "/api/version"
        if self.api_key and (protected or path == "/openapi.json"):
            given = headers.get(b"authorization", b"")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                raise _Refused(
                    401,
                    "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
                    "authentication_error",
                )
        size = headers.get(b"content-length", b"")
        if size.isdigit() and int(size) > self.limits.max_body_bytes:
            raise _Refused(413, _too_large(self.limits.max_body_bytes))

    def _same_origin(self, origin: str, host: str) -> bool:
        return (
            origin in self.origins
            or "*" in self.origins
            or origin in (f"http://{host}", f"https://{host}")
        )


def _too_large(limit: int) -> str:
    return (
        f"the request body is larger than the server's limit of {limit >> 20} MiB "
        "(start it with a larger --max-body)"
    )


class _Exchange:
    """One request through the Guard: its body read under the limits, its response watched
    for the status (metrics), and the client watched for hanging up once the body is in."""

    def __init__(self, guard: Guard, scope, receive, send):
        self.guard, self.scope, self._receive, self._send = guard, scope, receive, send
        self.status = 500
        self.received = 0
        self.body_deadline = time.monotonic() + guard.limits.body_total_s
        self.body_done = False
        self.response_done = False
        self.task: asyncio.Task | None = None
        self.watcher: asyncio.Task | None = None

    async def run(self) -> None:
        self.task = asyncio.create_task(self.guard.app(self.scope, self.receive, self.send))
        try:
            await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if not self.task.done():  # the server is shutting down: pass it on
                self.task.cancel()
                raise
            if not self.task.cancelled():
                raise
        finally:
            if self.watcher is not None:
                self.watcher.cancel()
            route = getattr(self.scope.get("route"), "path", "other")
            status = self.status if not self.task.cancelled() else 499  # client closed
            self.guard.metrics.requests.labels(route, str(status)).inc()

    async def receive(self):
        if self.body_done:
            return await self._receive()
        limits = self.guard.limits
        wait = min(limits.body_idle_s, self.body_deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(self._receive(), max(wait, 0))
        except TimeoutError:
            raise StarletteHTTPException(
                408,
                f"the request body did not arrive in time (at most {limits.body_idle_s:g} "
                f"s between its pieces, {limits.body_total_s:g} s in all)",
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.guard.limits.max_body_bytes:
                raise StarletteHTTPException(413, _too_large(self.guard.limits.max_body_bytes))
            if not message.get("more_body", False):
                self.body_done = True
                self.watcher = asyncio.create_task(self._watch())
        return message

    async def _watch(self) -> None:
        """Wait for the client to hang up; then cancel the request, unless it is answered."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if not self.response_done and self.task is not None:
            self.task.cancel()

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.scope["path"] in PAGES:
                message["headers"] = [*message.get("headers", []), *PAGE_HEADERS]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_done = True
        await self._send(message)


class HostCheck:
    """Which ``Host`` headers name this server: loopback names and addresses, the address it
    is bound to, and the names given with --allowed-host ("*": any). Bound to every address
    (0.0.0.0, ::), any IP literal is this server."""

    LOOPBACK = ("localhost", "127.0.0.1", "::1")

    def __init__(self, bound: str = "127.0.0.1", allowed: Sequence[str] = ()):
        self.any = "*" in allowed
        self.names = {n.lower().strip("[]") for n in (*self.LOOPBACK, bound, *allowed)}
        self.wildcard = bound in ("0.0.0.0", "::", "")

    def allows(self, header: str) -> bool:
        if self.any:
            return True
        name = _host_name(header)
        if name is None:
            return False
        if name in self.names or name.endswith(".localhost") or is_loopback(name):
            return True
        return self.wildcard and _is_ip(name)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _host_name(header: str) -> str | None:
    """The name in a Host header, without its port; None if it is not one."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8080
        end = header.find("]")
        return header[1:end] if end > 0 else None
    name, _, port = header.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


IO_THREADS = 8  # asyncio.to_thread work: tokenizing, grammar compiling, an Ollama pull


def _started_pool(n: int) -> ThreadPoolExecutor:
    """The event loop's executor with all n threads started now, not one by one as requests
    overlap: the server's threads are fixed from the start, so none appears mid-request
    next to ggml's spinning OpenMP team, and the count a test or an operator sees is stable."""
    io = ThreadPoolExecutor(max_workers=n, thread_name_prefix="pocketlm-io")
    barrier = threading.Barrier(n)  # every task waits for all n: n threads must exist
    for done in [io.submit(barrier.wait) for _ in range(n)]:
        done.result()
    return io


def create_app(
    pool: ModelPool | None = None,
    *,
    api_key: str | None = None,
    hosts: HostCheck | None = None,
    origins: Sequence[str] = (),
    limits: Limits | None = None,
    hybrid: Hybrid | None = None,
) -> FastAPI:
    pool = pool or ModelPool()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        io = _started_pool(IO_THREADS)
        asyncio.get_running_loop().set_default_executor(io)
        reaper = asyncio.create_task(pool.reap())
        try:
            yield
        finally:
            reaper.cancel()
            if hybrid is not None:
                await hybrid.aclose()
            await pool.close()
            io.shutdown(wait=False, cancel_futures=True)

    # No /docs or /redoc: their pages load scripts from a CDN (never, offline); the OpenAPI
    # document itself is served (behind the key, when one is set)
    app = FastAPI(
        title="pocketlm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.pool = pool
    app.state.hybrid = hybrid  # the tiers (serve --tiers), for model "auto" and tier names
    metrics = app.state.metrics = Metrics(pool, hybrid)
    if origins:  # pages of these origins may call the API from a browser
        app.add_middleware(
            CORSMiddleware, allow_origins=list(origins), allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(
        Guard,
        api_key=api_key,
        metrics=metrics,
        hosts=hosts or HostCheck(),
        origins=origins,
        limits=limits,
    )

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, e: Overloaded):
        return _error(request, 503, str(e), kind="server_overloaded", headers={"Retry-After": "1"})

    @app.exception_handler(PocketError)
    async def pocket_error(request: Request, e: PocketError):
        kinds = {404: "not_found_error", 413: "invalid_request_error"}
        kind = kinds.get(e.http_status, "invalid_request_error")
        if e.http_status >= 500:
            kind = "server_error"
        return _error(request, e.http_status, e.render("http"), param=e.param, kind=kind)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        # a bug: still an answer in the API's shape (the traceback goes to the server's log)
        return _error(request, 500, f"internal error ({type(e).__name__})", kind="server_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        # e.g. an unknown route, or a method the route does not take: in the API's own shape
        return _error(request, e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        err = e.errors()[0]
        if err.get("type") == "json_invalid":
            return _error(
                request,
                400,
                "the request body is not valid JSON "
                f"({err.get('ctx', {}).get('error', 'cannot parse it')})",
            )
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        return _error(
            request, 400, f"invalid value for '{field}': {err.get('msg', '')}", param=field
        )

    app.include_router(openai_api.router)
    app.include_router(ollama_api.router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    for path, file in PAGES.items():
        app.add_api_route(path, _page(file), methods=["GET", "HEAD"], include_in_schema=False)
    return app


STATIC = resources.files("pocketlm.server") / "static"
PAGES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/app.js": "app.js",
    "/style.css": "style.css",
}
_MEDIA = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


def _page(file: str):
    """The web page's files as routes of their own (not a mount at "/", which would answer
    every unknown path and method with its own 404): GET on a POST route is then a 405."""
    body = (STATIC / file).read_bytes()
    media = _MEDIA[file[file.rindex(".") :]]

    async def page() -> Response:
        return Response(body, media_type=media)

    return page
