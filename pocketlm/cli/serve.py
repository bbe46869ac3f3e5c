"""pocketlm serve: OpenAI- and Ollama-compatible HTTP API, and a web chat page."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

from pocketlm.cli.flags import add_flags, collect
from pocketlm.errors import UsageError
from pocketlm.params import LoadParams, ServeParams, validate

HELP = "serve models over HTTP (OpenAI and Ollama APIs, web chat page at /)"
DEFAULT_PORT = 11434  # Ollama's: its clients find pocketlm with no configuration
API_KEY_ENV = "POCKETLM_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}, Ollama's)"
    )
    p.add_argument(
        "--api-key",
        help=f"require this Bearer token (or set {API_KEY_ENV}); "
        "mandatory when binding a non-loopback address",
    )
    add_flags(p, ServeParams)
    add_flags(p, LoadParams)
    p.add_argument(
        "--preload",
        metavar="MODEL",
        help="load this model at start (a store name, or a GGUF file's path: "
        "served under its file name without .gguf)",
    )
    p.add_argument(
        "--tiers",
        metavar="FILE",
        help="route between local models and remote OpenAI-compatible tiers: requests may "
        "name a tier, or model 'auto' (docs/hybrid.md)",
    )
    p.add_argument(
        "--router",
        metavar="FILE",
        help="the trained router (default: the tiers file's, else the store's router.json)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name this server may be reached by besides its address and "
        "localhost (repeatable; '*': any). Other Host headers are refused: a web "
        "page cannot rebind its own name to this server",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://app.example) whose pages may call the API "
        "(repeatable; CORS). Pages of other origins are refused",
    )


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {port} on {host} is already in use (Ollama, or another pocketlm?)",
                    "stop it, or choose another port with --port",
                ) from None
            raise UsageError(f"cannot bind {host}:{port} ({e.strerror})") from None


def guard_egress(hybrid) -> None:
    """Nothing leaves the process but loopback and the configured remote tiers (the egress
    guard, docs/hybrid.md); said once when remote tiers are allowed."""
    from pocketlm.services.privacy import egress

    allowed = hybrid.tiers.allowed_hosts() if hybrid is not None else []
    if allowed and egress.offline_requested():  # POCKETLM_OFFLINE=1: not even the tiers
        print("network: POCKETLM_OFFLINE=1, remote tiers refused (local fallback)", file=sys.stderr)
        allowed = []
    egress.install(allowed)
    if allowed:
        print(f"network: only loopback and {', '.join(allowed)}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    from pocketlm.server.app import is_loopback

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and not api_key:
        raise UsageError(
            f"binding {args.host} exposes the server to the network without authentication",
            f"pass --api-key KEY (or set {API_KEY_ENV}); clients send 'Authorization: Bearer KEY'",
        )
    serve = validate(ServeParams, collect(args, ServeParams))
    load = validate(LoadParams, collect(args, LoadParams))
    if not 0 < args.port < 65536:
        raise UsageError(f"invalid --port {args.port}: must be 1-65535")
    check_port(args.host, args.port)

    import asyncio

    import uvicorn

    from pocketlm.cli.run import default_model
    from pocketlm.server.app import HostCheck, Limits, create_app
    from pocketlm.server.http import guarded_protocol
    from pocketlm.services.serving import ModelPool, ServeConfig
    from pocketlm.store.pull import looks_like_path

    cfg = ServeConfig(load=load, serve=serve)
    pool = ModelPool(cfg=cfg, default=None if args.preload else default_model())
    if args.preload:
        name = pool.add_file(args.preload) if looks_like_path(args.preload) else args.preload
        asyncio.run(pool.acquire(name, float("inf")))
        if name != args.preload:
            print(f"serving {args.preload} as '{name}'", file=sys.stderr)
        pool.default = name
    hybrid = None
    if args.tiers:
        from pocketlm.services.route.hybrid import Hybrid

        hybrid = Hybrid.from_file(args.tiers, pool, router_path=args.router)
        print(hybrid.describe(), file=sys.stderr)
    guard_egress(hybrid)
    app = create_app(
        pool,
        hybrid=hybrid,
        api_key=api_key,
        hosts=HostCheck(args.host, args.allowed_host),
        origins=args.allowed_origin,
        limits=Limits.of(serve),
    )
    print(
        f"pocketlm {args.host}:{args.port}: OpenAI API at /v1, Ollama API at /api, "
        f"chat page at http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        # the standard loop, not uvloop: uvloop opens connections in libuv, where the egress
        # guard's audit hook never sees them (remote tiers' httpx calls run on this loop)
        loop="asyncio",
        http=guarded_protocol(serve.header_timeout),
    )
    return 0
