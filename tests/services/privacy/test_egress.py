"""The egress guard. Every attempt to reach a destination that is not loopback runs in a child
process inside a fresh network namespace (``unshare -n``): nothing can leave this machine even
if the guard failed. In the namespace, traps (listeners on the "remote" addresses, put on its
own loopback device, and a DNS server that resolv.conf points to) see whatever the child
sends, so a test also fails if a packet was sent and then an error raised. The decisions
themselves are checked in this process, on a ``Guard`` that is not installed."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from pocketlm.errors import PocketError, UsageError
from pocketlm.services.privacy import egress

TRAP_V4, TRAP_V6, ALLOWED_V4 = "192.0.2.1", "2001:db8::1", "192.0.2.10"

# Runs first in every child: helpers to listen, to try something, and to keep the log.
PRELUDE = """
import json, logging, socket, sys, threading, time
LOG = []
class Keep(logging.Handler):
    def emit(self, record):
        LOG.append(record.getMessage())
logging.getLogger("pocketlm.egress").addHandler(Keep())

def causes(e):  # the types of e and of what it was raised from, inside groups too
    found = []
    while e is not None:
        found.append(type(e).__name__)
        found += [t for sub in getattr(e, "exceptions", ()) for t in causes(sub)]
        e = e.__cause__ or e.__context__
    return found

def attempt(f):
    try:
        f()
        return {"ok": True}
    except Exception as e:
        return {"ok": False, "type": type(e).__name__, "errno": getattr(e, "errno", None),
                "message": str(e), "causes": causes(e)}

def listen(host, port, udp=False):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    hits = []
    def serve():
        while True:
            if udp:
                hits.append(s.recvfrom(2048)[0].hex())
            else:
                conn, _ = s.accept()
                hits.append("connection")
                conn.sendall(b"hello")
                conn.close()
    if not udp:
        s.listen()
    threading.Thread(target=serve, daemon=True).start()
    return s.getsockname()[1], hits

def tcp(host, port):
    with socket.create_connection((host, port), timeout=5) as c:
        return c.recv(5)

def udp(host, port):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (host, port))

def done(**result):
    time.sleep(0.3)  # let the traps' threads take what arrived
    print(json.dumps(dict(result, log=LOG)))
"""

# The traps: the remote addresses on the namespace's loopback, listeners on them, and a DNS
# server at 127.0.0.1 (resolv.conf points there; an unanswered query times out in 1 s).
TRAPS = f"""
_, tcp4_hits = listen("{TRAP_V4}", 80)
_, tcp6_hits = listen("{TRAP_V6}", 443)
_, udp_hits = listen("{TRAP_V4}", 53, udp=True)
_, dns_hits = listen("127.0.0.1", 53, udp=True)
def traps():
    return {{"tcp4": tcp4_hits, "tcp6": tcp6_hits, "udp": udp_hits, "dns": dns_hits}}
"""

ATTEMPTS = f"""
tried = {{
    "connect_v4": attempt(lambda: tcp("{TRAP_V4}", 80)),
    "connect_v6": attempt(lambda: tcp("{TRAP_V6}", 443)),
    "resolve": attempt(lambda: socket.getaddrinfo("example.com", 80)),
    "connect_by_name": attempt(lambda: socket.socket().connect(("example.com", 80))),
    "sendto": attempt(lambda: udp("{TRAP_V4}", 53)),
}}
"""


def _unshare_prefix() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.fail("the egress tests need `unshare` (util-linux) to run in a network namespace")
    # root makes the namespaces itself; anyone else needs a user namespace (-r) for it
    prefix = ["unshare", "-n", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-n", "-m"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"`{' '.join(prefix)} true` failed: {probe.stderr.strip()}")
    return prefix


def in_namespace(tmp_path, *snippets: str, traps: bool = False, hosts: str = "") -> dict:
    """Run PRELUDE + ``snippets`` in a fresh network (and mount) namespace; the last line the
    child prints is JSON. ``traps``: loopback up with the trap addresses and TRAPS running;
    ``hosts``: lines for /etc/hosts there."""
    setup = []
    if traps or hosts:
        (tmp_path / "resolv.conf").write_text(
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
        )
        (tmp_path / "hosts").write_text(f"127.0.0.1 localhost\n{hosts}\n")
        setup = [
            "ip link set lo up",
            f"ip addr add {TRAP_V4}/32 dev lo",
            f"ip addr add {ALLOWED_V4}/32 dev lo",
            f"ip -6 addr add {TRAP_V6}/128 dev lo",
            f"mount --bind {tmp_path / 'resolv.conf'} /etc/resolv.conf",
            f"mount --bind {tmp_path / 'hosts'} /etc/hosts",
        ]
    script = " && ".join([*setup, 'exec "$0" -c "$1"'])
    source = PRELUDE + (TRAPS if traps else "") + "".join(map(textwrap.dedent, snippets))
    proc = subprocess.run(
        [*_unshare_prefix(), "sh", "-c", script, sys.executable, source],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_namespace_has_no_way_out(tmp_path):
    out = in_namespace(
        tmp_path,
        f"""
        done(connect=attempt(lambda: tcp("{TRAP_V4}", 80)),
             resolve=attempt(lambda: socket.getaddrinfo("example.com", 80)))
        """,
    )
    assert out["connect"]["type"] == "OSError"
    assert out["connect"]["errno"] == errno.ENETUNREACH
    assert out["resolve"]["type"] == "gaierror"


def test_the_traps_see_what_is_sent_without_the_guard(tmp_path):
    out = in_namespace(tmp_path, ATTEMPTS, "done(tried=tried, traps=traps())", traps=True)
    tried, traps = out["tried"], out["traps"]
    assert tried["connect_v4"]["ok"] and tried["connect_v6"]["ok"] and tried["sendto"]["ok"]
    assert traps["tcp4"] and traps["tcp6"] and traps["udp"]
    assert traps["dns"]  # the lookup of example.com went to the DNS trap
    assert b"example".hex() in traps["dns"][0]


def test_the_guard_refuses_before_anything_is_sent(tmp_path):
    out = in_namespace(
        tmp_path,
        "from pocketlm.services.privacy import egress\negress.install()\n",
        ATTEMPTS,
        "done(tried=tried, traps=traps(), refused=egress.refused().count)",
        traps=True,
    )
    for what, result in out["tried"].items():
        assert result["type"] == "EgressRefused", (what, result)
        assert "configure it as a tier" in result["message"] and "\n" not in result["message"]
    assert out["traps"] == {"tcp4": [], "tcp6": [], "udp": [], "dns": []}
    assert out["refused"] == len(out["tried"])
    assert out["tried"]["connect_v6"]["message"].startswith(
        f"egress refused: connection to [{TRAP_V6}]:443 "
    )
    for destination in (f"{TRAP_V4}:80", f"[{TRAP_V6}]:443", "example.com", f"{TRAP_V4}:53"):
        assert any(destination in line for line in out["log"]), (destination, out["log"])


def test_loopback_still_works_under_the_guard(tmp_path):
    out = in_namespace(
        tmp_path,
        """
        port4, _ = listen("127.0.0.1", 0)
        port6, _ = listen("::1", 0)
        a, b = socket.socketpair()  # AF_UNIX
        from pocketlm.services.privacy import egress
        egress.install()
        done(v4=tcp("127.0.0.1", port4).decode(), v6=tcp("::1", port6).decode(),
             by_name=tcp("localhost", port4).decode(), unix=attempt(lambda: a.sendall(b"x")),
             refused=egress.refused().count)
        """,
        traps=True,
    )
    assert out["v4"] == out["v6"] == out["by_name"] == "hello"
    assert out["unix"]["ok"] and out["refused"] == 0 and out["log"] == []


def test_an_allowed_destination_goes_through_and_no_other(tmp_path):
    out = in_namespace(
        tmp_path,
        f"""
        port, hits = listen("{ALLOWED_V4}", 0)
        other, other_hits = listen("{ALLOWED_V4}", 0)
        from pocketlm.services.privacy import egress
        egress.install()
        before = attempt(lambda: tcp("{ALLOWED_V4}", port))
        egress.install(allow=[f"{ALLOWED_V4}:{{port}}"])  # later calls extend the allowlist
        by_address = attempt(lambda: tcp("{ALLOWED_V4}", port))
        other_before = attempt(lambda: tcp("{ALLOWED_V4}", other))
        egress.install(allow=[f"http://remote.test:{{other}}/v1"])  # a tier's URL
        done(before=before, by_address=by_address, other_before=other_before,
             by_name=attempt(lambda: tcp("remote.test", other)),
             other_name=attempt(lambda: socket.getaddrinfo("elsewhere.test", other)),
             hits=hits, other_hits=other_hits, enabled=egress.enabled())
        """,
        hosts=f"{ALLOWED_V4} remote.test\n{ALLOWED_V4} elsewhere.test",
    )
    assert out["by_address"]["ok"] and out["by_name"]["ok"], out
    refused = ("before", "other_before", "other_name")
    assert [out[k]["type"] for k in refused] == ["EgressRefused"] * 3, out
    assert out["hits"] == out["other_hits"] == ["connection"]  # one each: the allowed ones
    assert out["enabled"]


def test_httpx_gets_the_refusal_as_an_error_not_a_hang(tmp_path):
    out = in_namespace(
        tmp_path,
        f"""
        import asyncio, httpx
        from pocketlm.services.privacy import egress
        egress.install()
        async def fetch():
            async with httpx.AsyncClient(timeout=30) as client:
                await client.get("http://{TRAP_V4}/")
        start = time.monotonic()
        tried = {{
            "sync": attempt(lambda: httpx.get("http://example.com/", timeout=30)),
            "async": attempt(lambda: asyncio.run(fetch())),
        }}
        done(tried=tried, seconds=time.monotonic() - start, traps=traps())
        """,
        traps=True,
    )
    for result in out["tried"].values():
        assert result["type"] == "ConnectError" and "EgressRefused" in result["causes"], result
    assert "egress refused" in out["tried"]["sync"]["message"]
    assert out["seconds"] < 5
    assert out["traps"] == {"tcp4": [], "tcp6": [], "udp": [], "dns": []}


# The decisions, in this process (the guard is not installed here).


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("api.example.com", ("api.example.com", None)),
        ("API.Example.com.:8443", ("api.example.com", 8443)),
        ("https://api.example.com/v1", ("api.example.com", 443)),
        ("http://10.0.0.5:8000/v1", ("10.0.0.5", 8000)),
        ("[2001:DB8::5]:443", ("2001:db8::5", 443)),
        ("2001:db8::5", ("2001:db8::5", None)),
    ],
)
def test_allowlist_entries(entry, expected):
    assert egress.parse_destination(entry) == expected


@pytest.mark.parametrize("entry", ["", "host:port", "http://", "host:99999"])
def test_a_bad_allowlist_entry_is_a_usage_error(entry):
    with pytest.raises(UsageError, match="invalid egress destination"):
        egress.parse_destination(entry)


@pytest.mark.parametrize(
    "host, local",
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", True),
        ("192.168.1.1", False),
        ("::ffff:192.0.2.1", False),
        ("fe80::1%eth0", False),
        ("localhost.example.com", False),
        ("evil.localhost", False),
    ],
)
def test_what_counts_as_loopback(host, local):
    assert egress.is_loopback(host) is local


def test_decisions_follow_the_allowlist():
    guard = egress.Guard(["api.example.com:443", "10.0.0.5"])
    assert guard.permits("api.example.com", 443) and not guard.permits("api.example.com", 80)
    assert guard.permits("10.0.0.5", 1234) and not guard.permits("10.0.0.6", 1234)
    assert guard.permits_lookup("API.example.com") and not guard.permits_lookup("example.com")
    guard.extend(["[2001:db8::5]:8000"])
    assert guard.permits("2001:DB8:0::5", 8000)
    with pytest.raises(UsageError):
        guard.extend(["ok.example.com", "bad:port"])
    assert not guard.permits("ok.example.com", 80)  # a bad entry adds none


def test_check_refuses_with_a_one_line_permission_error():
    guard = egress.Guard()
    sock = socket.socket()  # only asked for its family: nothing is sent
    try:
        with pytest.raises(egress.EgressRefused) as info:
            guard.check("socket.connect", (sock, ("192.0.2.1", 80)))
        guard.check("socket.connect", (sock, ("127.0.0.1", 80)))
        guard.check("socket.sendto", (sock, None))  # a connected socket's send
    finally:
        sock.close()
    error = info.value
    assert isinstance(error, PermissionError) and isinstance(error, PocketError)
    assert error.errno == errno.EACCES and error.destination == "192.0.2.1:80"
    assert "\n" not in str(error) and "unset POCKETLM_OFFLINE" in str(error)
    assert guard.refused() == egress.Refusals(1, ("192.0.2.1:80",))


def test_lookups_of_addresses_are_free_reverse_lookups_are_not():
    guard = egress.Guard()
    guard.check("socket.getaddrinfo", ("0.0.0.0", 8000, 0, 0, 0))  # a server binding
    guard.check("socket.getaddrinfo", (None, 8000, 0, 0, 0))
    guard.check("socket.gethostbyaddr", ("127.0.0.1",))
    for event, args in [
        ("socket.gethostbyaddr", ("192.0.2.1",)),  # a PTR query
        ("socket.getnameinfo", (("192.0.2.1", 80),)),
        ("socket.gethostbyname", ("example.com",)),
        ("socket.getaddrinfo", (b"example.com", 80, 0, 0, 0)),
    ]:
        with pytest.raises(egress.EgressRefused):
            guard.check(event, args)
    assert guard.refused().count == 4


def test_a_looked_up_allowed_name_lets_its_addresses_through():
    calls = []

    def resolve(host, port):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.7", 0))]

    guard = egress.Guard(["remote.example:8443"], resolve=resolve)
    assert not guard.permits("203.0.113.7", 8443)
    guard.check("socket.getaddrinfo", ("remote.example", 8443, 0, 0, 0))
    assert calls == ["remote.example"]
    assert guard.permits("203.0.113.7", 8443) and not guard.permits("203.0.113.7", 80)


def test_other_socket_families_are_refused():
    guard = egress.Guard()
    fake = type("Sock", (), {"family": getattr(socket, "AF_PACKET", 17)})()
    with pytest.raises(egress.EgressRefused):
        guard.check("socket.sendto", (fake, ("eth0", 0x0800)))
    unix = type("Sock", (), {"family": socket.AF_UNIX})()
    guard.check("socket.connect", (unix, "/run/some.sock"))


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("0", False), ("", False)])
def test_offline_requested(monkeypatch, value, offline):
    monkeypatch.setenv(egress.OFFLINE_ENV, value)
    assert egress.offline_requested() is offline


def test_not_installed_here():
    assert not egress.enabled() and egress.refused() == egress.Refusals(0, ())


def test_covers_standard_asyncio_loops_not_uvloop():
    loop = asyncio.new_event_loop()
    try:
        assert egress.covers_loop(loop)
    finally:
        loop.close()
    import uvloop  # a dependency: uvicorn picks it up by itself

    loop = uvloop.new_event_loop()
    try:
        assert not egress.covers_loop(loop)
    finally:
        loop.close()
