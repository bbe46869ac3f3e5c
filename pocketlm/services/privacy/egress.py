"""The egress guard: offline, this process talks to loopback and configured tiers only.

``install(allow)`` adds a PEP 578 audit hook (``sys.addaudithook``) that sees every
``socket.connect``/``connect_ex``, ``sendto`` and ``sendmsg``, and every name lookup
(``getaddrinfo``, ``gethostbyname[_ex]``, ``gethostbyaddr``, ``getnameinfo``: DNS is traffic
too), before CPython makes the system call, and refuses with ``EgressRefused`` each one whose
destination is neither loopback nor on the allowlist. Loopback is 127.0.0.0/8, ::1 (and
IPv4-mapped forms), ``localhost``, the unspecified address (Linux delivers a connection to
0.0.0.0 locally), and AF_UNIX and netlink sockets. A refused call sends nothing; it is logged
on the ``pocketlm.egress`` logger and counted (``refused()``).

CPython resolves a host *name* given to ``connect``/``sendto``/``sendmsg`` before it raises
the audit event, so ``install`` also wraps those methods of ``socket.socket`` to check the
destination before the name is looked up.

Why one process-wide guard is acceptable: an audit hook cannot be removed, by design (code
that could remove it could switch the guard off), so the guard is one object per process,
installed once; later ``install`` calls extend its allowlist, none narrows or disables it. A
process that must talk freely is one that never installed it; tests install it in
subprocesses.

Limits, what it does not see:
- other processes: subprocesses (an engine child, ``curl``) are not covered; only an OS
  boundary (a network namespace, a firewall) covers them;
- sockets opened without Python's ``socket`` module: C extensions (libcurl bindings, native
  clients) and event loops written in C. uvloop, which uvicorn picks when it is installed,
  resolves and connects inside libuv: run servers with ``loop="asyncio"`` while the guard is
  on (``covers_loop`` says whether a loop is seen);
- a raw ``_socket.socket`` given a host name: the name is looked up before the hook runs (the
  connection itself is still refused).
A host *name* on the allowlist is resolved once more by the guard when the process looks it
up, so that the addresses the process connects to next are let through; an answer that
changes between the two lookups can get a connection to a new address refused.
"""

from __future__ import annotations

import collections
import errno
import functools
import ipaddress
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pocketlm.errors import PocketError, UsageError

OFFLINE_ENV = "POCKETLM_OFFLINE"
RECENT = 50  # refused destinations that refused() keeps

log = logging.getLogger("pocketlm.egress")

# audited events that send to an address -> how a refusal names them
_SENDS = {
    "socket.connect": "connection to",
    "socket.sendto": "datagram to",
    "socket.sendmsg": "message to",
}
_FORWARD = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex")
_REVERSE = ("socket.gethostbyaddr", "socket.getnameinfo")
_WATCHED = frozenset((*_SENDS, *_FORWARD, *_REVERSE))
_INET = frozenset((socket.AF_INET, socket.AF_INET6))
_LOCAL_FAMILIES = frozenset(
    getattr(socket, name) for name in ("AF_UNIX", "AF_NETLINK") if hasattr(socket, name)
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HINT = "to allow it, configure it as a tier in the tiers file, or unset " + OFFLINE_ENV


class EgressRefused(PocketError, PermissionError):
    """A connection or lookup the guard refused; nothing was sent."""

    http_status = 403

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)  # not OSError's: it would read (action, dest) as errno

    def __init__(self, action: str, destination: str):
        self.action, self.destination = action, destination
        super().__init__(
            f"egress refused: {action} {destination} (not loopback or a configured tier)", _HINT
        )
        self.errno = errno.EACCES


@dataclass(frozen=True)
class Refusals:
    count: int  # refusals since install
    recent: tuple[str, ...]  # the last RECENT destinations refused, oldest first


def offline_requested() -> bool:
    """Whether ``POCKETLM_OFFLINE`` asks for offline mode (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # without an IPv6 zone (%eth0)
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


def normalize(host: str | bytes) -> str:
    """``host`` as the guard compares it: an address in canonical form, a name lower case."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = host.strip().strip("[]").rstrip(".").lower()
    ip = _ip(host)
    return str(ip) if ip else host


def is_loopback(host: str | bytes) -> bool:
    """Whether a connection to ``host`` stays on this machine."""
    host = normalize(host)
    if host in ("", "localhost"):
        return True
    ip = _ip(host)
    return ip is not None and (ip.is_loopback or ip.is_unspecified)


def parse_destination(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, a bare IPv6 address or a URL -> (host, port);
    port None allows every port."""
    text = entry.strip()
    try:
        if "://" in text:
            url = urlsplit(text)
            host, port = url.hostname, url.port or _DEFAULT_PORTS.get(url.scheme)
        elif text.count(":") > 1 and not text.startswith("["):
            host, port = text, None  # a bare IPv6 address
        else:
            url = urlsplit("//" + text)
            host, port = url.hostname, url.port
    except ValueError:
        host = None
    if not host:
        raise UsageError(
            f"invalid egress destination {entry!r}", "write HOST, HOST:PORT, [IPv6]:PORT or a URL"
        )
    return normalize(host), port


def _show(host: str, port: object) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Guard:
    """The allowlist and the decisions; ``hook`` is what ``install`` adds to ``sys``."""

    def __init__(self, allow: Iterable[str] = (), resolve: Callable = socket.getaddrinfo):
        self._allowed: set[tuple[str, int | None]] = set()
        self._learned: set[tuple[str, int | None]] = set()  # addresses of allowed names
        self._lock = threading.Lock()
        self._local = threading.local()  # the guard's own lookup and logging, per thread
        self._recent: collections.deque[str] = collections.deque(maxlen=RECENT)
        self._count = 0
        self._resolve = resolve
        self.extend(allow)

    def extend(self, allow: Iterable[str]) -> None:
        """Allow more destinations (a bad entry raises UsageError and adds none)."""
        entries = [parse_destination(entry) for entry in allow]
        with self._lock:
            self._allowed.update(entries)

    def permits(self, host: str | bytes, port: int | None = None) -> bool:
        """Whether a connection to ``host``:``port`` may go."""
        host = normalize(host)
        if is_loopback(host):
            return True
        pairs = self._pairs()
        return (host, None) in pairs or (port is not None and (host, port) in pairs)

    def permits_lookup(self, host: str | bytes) -> bool:
        """Whether a name lookup of ``host`` may go (it is loopback or allowed on some port)."""
        host = normalize(host)
        return is_loopback(host) or any(h == host for h, _ in self._pairs())

    def _pairs(self) -> set[tuple[str, int | None]]:
        with self._lock:  # extend() and _learn() may be adding to them in another thread
            return self._allowed | self._learned

    def hook(self, event: str, args: tuple) -> None:
        if event in _WATCHED:
            self.check(event, args)

    def check(self, event: str, args: tuple) -> None:
        """Raise EgressRefused if the audited ``event`` would reach a destination not allowed."""
        if event in _SENDS:
            self._check_send(event, args[0], args[1])
        elif event in _FORWARD or event in _REVERSE:
            self._check_lookup(event, args[0])

    def refused(self) -> Refusals:
        with self._lock:
            return Refusals(self._count, tuple(self._recent))

    def _check_send(self, event: str, sock: socket.socket, address: object) -> None:
        if address is None or sock.family in _LOCAL_FAMILIES:
            return  # a connected socket's send, or a local socket
        if sock.family not in _INET:  # packet, vsock, bluetooth, CAN...: none is loopback
            raise self._refuse(_SENDS[event], repr(address))
        if not isinstance(address, tuple) or len(address) < 2:
            return  # CPython rejects it before any system call (and before this event)
        host, port = normalize(address[0]), address[1]
        if not self.permits(host, port):
            raise self._refuse(_SENDS[event], _show(host, port))

    def _check_lookup(self, event: str, target: object) -> None:
        if event == "socket.getnameinfo":
            target = target[0] if isinstance(target, tuple) and target else None
        if target is None:
            return  # getaddrinfo(None, port): the local wildcard or loopback
        host = normalize(target)
        if getattr(self._local, "resolving", None) == host:
            return  # the guard's own lookup of an allowed name (_learn)
        if event in _FORWARD and _ip(host) is not None:
            return  # an address: nothing to look up
        if not self.permits_lookup(host):
            raise self._refuse("lookup of", host)
        if event in _FORWARD and not is_loopback(host):
            self._learn(host)

    def _learn(self, host: str) -> None:
        """Allow the addresses ``host`` resolves to, on the ports ``host`` is allowed on."""
        with self._lock:
            ports = {p for h, p in self._allowed if h == host}
        self._local.resolving = host
        try:
            infos = self._resolve(host, None)
        except OSError:
            return  # the caller's own lookup fails the same way
        finally:
            self._local.resolving = None
        addresses = {normalize(info[4][0]) for info in infos}
        with self._lock:
            self._learned.update((a, p) for a in addresses for p in ports)

    def _refuse(self, action: str, destination: str) -> EgressRefused:
        with self._lock:
            self._count += 1
            self._recent.append(destination)
        if not getattr(self._local, "logging", False):  # a handler that itself sends: no loop
            self._local.logging = True
            try:
                log.warning("refused %s %s: not loopback or a configured tier", action, destination)
            finally:
                self._local.logging = False
        return EgressRefused(action, destination)


def _address_of(args: tuple, kwargs: dict, index: int) -> object:
    if kwargs.get("address") is not None:
        return kwargs["address"]
    if index < 0:  # sendto(data, address) or sendto(data, flags, address)
        return args[-1] if len(args) >= 2 else None
    return args[index] if len(args) > index else None


def _guarded(method: Callable, event: str, index: int, guard: Guard) -> Callable:
    @functools.wraps(method)
    def guarded(sock, *args, **kwargs):
        guard.check(event, (sock, _address_of(args, kwargs, index)))
        return method(sock, *args, **kwargs)

    return guarded


def _wrap_socket_methods(guard: Guard) -> None:
    """Check a destination before CPython looks up a host name it contains."""
    for name, event, index in (
        ("connect", "socket.connect", 0),
        ("connect_ex", "socket.connect", 0),
        ("sendto", "socket.sendto", -1),
        ("sendmsg", "socket.sendmsg", 3),
    ):
        setattr(socket.socket, name, _guarded(getattr(socket.socket, name), event, index, guard))


_guard: Guard | None = None  # one per process: an audit hook cannot be removed (see above)
_install_lock = threading.Lock()


def install(allow: Iterable[str] = ()) -> Guard:
    """Turn the guard on (once per process); a later call only extends the allowlist with
    ``allow``: ``host``, ``host:port``, ``[v6]:port`` or a tier's URL."""
    global _guard
    with _install_lock:
        if _guard is None:
            guard = Guard(allow)
            _wrap_socket_methods(guard)
            sys.addaudithook(guard.hook)
            _guard = guard
        else:
            _guard.extend(allow)
        return _guard


def enabled() -> bool:
    """Whether this process has the guard on."""
    return _guard is not None


def refused() -> Refusals:
    """How many connections and lookups the guard refused, and the latest destinations."""
    return _guard.refused() if _guard else Refusals(0, ())


def covers_loop(loop: object) -> bool:
    """Whether the guard sees the connections of an asyncio ``loop``: the standard loops make
    them through Python's socket module, uvloop's inside libuv."""
    import asyncio

    return isinstance(loop, asyncio.BaseEventLoop)
