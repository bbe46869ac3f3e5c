"""Realistic log lines with known templates: ground truth for the tests and the benchmark
of ``pocketlm task logs``.

Thirty-one templates from five systems (OpenSSH, an HDFS-like block store, a web server's
access and error logs, a Java service, systemd and the kernel), with Zipf-like counts: a
few templates make most of the lines, the rarest appear once or twice in 2,000. The truth
is written as Loghub-2.0 writes it: the template of the content (the header cut off), the
variable parts as ``<*>``. Some variables are plain words (user, customer, service names,
free-text reasons) that no regular expression can tell from constant text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_START = datetime(2024, 3, 6, 9, 58, 12)

_USERS = (
    "root", "admin", "ubuntu", "deploy", "git", "postgres", "oracle", "test", "guest",
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "mallory", "oscar",
)  # fmt: skip
_CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka")
_REASONS = (  # of 2, 3 and 5 words: Drain tells the lengths apart, the truth does not
    "payment declined",
    "inventory not available",
    "duplicate request",
    "address validation failed for postcode",
    "warehouse timeout",
)
_UNITS = ("Daily apt upgrade and clean activities", "Cleanup of Temporary Directories")
_SERVICES = ("nginx", "cron", "docker", "postgresql", "apt-daily", "logrotate", "fwupd")
_FILES = (
    "/var/www/html/favicon.ico",
    "/var/www/html/robots.txt",
    "/var/www/html/wp-login.php",
    "/var/www/html/.env",
    "/var/www/html/.git/config",
)
_PAGES = ("/index.html", "/login", "/health", "/metrics", "/about")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _ip(r: random.Random) -> str:
    first = r.choice((10, 172, 192, 203))
    return f"{first}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def _url(r: random.Random) -> str:
    kind = r.randrange(4)
    if kind == 0:
        return r.choice(_PAGES)
    if kind == 1:
        return f"/api/orders/{r.randint(1, 99999)}"
    if kind == 2:
        return f"/api/users/{r.randint(1, 9999)}/profile"
    return f"/static/app.{r.getrandbits(32):08x}.js"


_FILL: dict[str, Callable[[random.Random], str]] = {
    "user": lambda r: r.choice(_USERS),
    "ip": _ip,
    "port": lambda r: str(r.randint(1024, 65535)),
    "ipport": lambda r: f"{_ip(r)}:{r.choice((50010, r.randint(30000, 60000)))}",
    "blk": lambda r: str(r.randint(-(2**63), 2**63 - 1)),
    "blkpath": lambda r: f"/data/dfs/current/subdir{r.randint(0, 63)}/blk_{r.getrandbits(62)}",
    "n": lambda r: str(r.randint(0, 400)),
    "size": lambda r: str(r.randint(1000, 67108864)),
    "ms": lambda r: f"{r.randint(1, 30000)}ms",
    "url": _url,
    "status": lambda r: str(r.choice((200, 200, 200, 201, 204, 301, 304, 400, 404, 500, 503))),
    "bytes": lambda r: str(r.randint(0, 250000)),
    "file": lambda r: r.choice(_FILES),
    "order": lambda r: str(r.randint(10000, 99999)),
    "customer": lambda r: r.choice(_CUSTOMERS),
    "cache": lambda r: r.choice(("users", "products", "sessions", "prices")),
    "table": lambda r: r.choice(("orders", "customers", "invoices", "shipments")),
    "reason": lambda r: r.choice(_REASONS),
    "service": lambda r: r.choice(_SERVICES),
    "unit": lambda r: r.choice(_UNITS),
    "uid": lambda r: r.choice(("0", "1000", "1001")),
    "fingerprint": lambda r: "".join(r.choice(_B64) for _ in range(43)),
    "bus": lambda r: str(r.randint(1, 4)),
    "pid": lambda r: str(r.randint(300, 65000)),
    "proc": lambda r: r.choice(("java", "postgres", "node", "python3")),
    "kb": lambda r: f"{r.randint(0, 8000000)}kB",
}


@dataclass(frozen=True)
class _Source:
    count: int  # lines of it in 2,000
    system: str  # which header: sshd, systemd, kernel, hdfs, java, access, apache
    text: str  # the content, variables as {field}
    level: str = "INFO"
    component: str = ""  # the HDFS component or Java logger

    @property
    def template(self) -> str:
        return re.sub(r"\{\w+\}", "<*>", self.text)

    def content(self, r: random.Random) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: _FILL[m[1]](r), self.text)


_DN, _PR = "dfs.DataNode$DataXceiver", "dfs.DataNode$PacketResponder"
_ORDERS = "c.e.orders.OrderService"
_SOURCES = (  # most frequent first; the counts make 2,000
    _Source(319, "access", '"GET {url} HTTP/1.1" {status} {bytes}'),
    _Source(250, "hdfs", "Receiving block blk_{blk} src: /{ipport} dest: /{ipport}", "INFO", _DN),
    _Source(210, "hdfs", "PacketResponder {n} for block blk_{blk} terminating", "INFO", _PR),
    _Source(180, "hdfs", "Received block blk_{blk} of size {size} from /{ip}", "INFO", _PR),
    _Source(150, "sshd", "Failed password for {user} from {ip} port {port} ssh2"),
    _Source(
        130,
        "hdfs",
        "BLOCK* NameSystem.addStoredBlock: blockMap updated: {ipport} is added to blk_{blk} "
        "size {size}",
        "INFO",
        "dfs.FSNamesystem",
    ),
    _Source(110, "java", "Processing order {order} for customer {customer}", "INFO", _ORDERS),
    _Source(95, "sshd", "Invalid user {user} from {ip} port {port}"),
    _Source(80, "access", '"POST {url} HTTP/1.1" {status} {bytes}'),
    _Source(70, "java", "Order {order} completed in {ms}", "INFO", _ORDERS),
    _Source(60, "sshd", "Connection closed by {ip} port {port} [preauth]"),
    _Source(50, "sshd", "pam_unix(sshd:session): session opened for user {user} by (uid={uid})"),
    _Source(45, "sshd", "pam_unix(sshd:session): session closed for user {user}"),
    _Source(40, "sshd", "Accepted password for {user} from {ip} port {port} ssh2"),
    _Source(35, "hdfs", "Deleting block blk_{blk} file {blkpath}", "INFO", "dfs.FSDataset"),
    _Source(30, "systemd", "{service}.service: Deactivated successfully."),
    _Source(28, "systemd", "Started Session {n} of user {user}."),
    _Source(
        24, "java", "Cache {cache} refreshed with {n} entries", "INFO", "c.e.cache.CacheManager"
    ),
    _Source(20, "sshd", "Failed password for invalid user {user} from {ip} port {port} ssh2"),
    _Source(16, "apache", "[client {ip}] File does not exist: {file}", "error"),
    _Source(13, "java", "Slow query on table {table} took {ms}", "WARN", "c.e.db.QueryLogger"),
    _Source(
        11,
        "sshd",
        "Accepted publickey for {user} from {ip} port {port} ssh2: RSA SHA256:{fingerprint}",
    ),
    _Source(
        9,
        "java",
        "Failed to process order {order}: java.lang.IllegalStateException: {reason}",
        "ERROR",
        _ORDERS,
    ),
    _Source(7, "kernel", "usb {bus}-{bus}: new high-speed USB device number {n} using xhci_hcd"),
    _Source(
        5,
        "apache",
        "[client {ipport}] AH01630: client denied by server configuration: {file}",
        "error",
    ),
    _Source(
        4,
        "hdfs",
        "{ipport}:Got exception while serving blk_{blk} to /{ip}:",
        "WARN",
        "dfs.DataNode",
    ),
    _Source(3, "systemd", "Starting {unit}..."),
    _Source(
        2,
        "java",
        "HikariPool-{bus} - Connection is not available, request timed out after {ms}.",
        "ERROR",
        "com.zaxxer.hikari.pool.HikariPool",
    ),
    _Source(
        2,
        "sshd",
        "error: maximum authentication attempts exceeded for {user} from {ip} port {port} ssh2 "
        "[preauth]",
    ),
    _Source(
        1,
        "kernel",
        "Out of memory: Killed process {pid} ({proc}) total-vm:{kb}, anon-rss:{kb}, "
        "file-rss:{kb}, shmem-rss:{kb}",
    ),
    _Source(1, "apache", "Apache/2.4.57 (Unix) configured -- resuming normal operations", "notice"),
)


def templates() -> list[str]:
    """The ground-truth templates, most frequent first."""
    return [s.template for s in _SOURCES]


def generate(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (log line, true template of its content) pairs, the same for the same seed.
    Each template's count is its share of 2,000 scaled to ``n`` (largest remainders)."""
    if n < 0:
        raise ValueError(f"n must be at least 0, not {n}")
    r = random.Random(seed)
    order = [s for s, count in zip(_SOURCES, _counts(n)) for _ in range(count)]
    r.shuffle(order)
    when, out = _START, []
    for source in order:
        when += timedelta(milliseconds=r.randint(0, 2500))
        out.append((_header(source, when, r) + source.content(r), source.template))
    return out


def write(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write ``generate(n, seed)``'s lines to ``path``, one a line."""
    path = Path(path)
    path.write_text("".join(line + "\n" for line, _ in generate(n, seed)), encoding="utf-8")
    return path


def _counts(n: int) -> list[int]:
    total = sum(s.count for s in _SOURCES)
    exact = [n * s.count / total for s in _SOURCES]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _header(source: _Source, when: datetime, r: random.Random) -> str:
    syslog = f"{_MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S}"
    millis = when.microsecond // 1000
    if source.system == "sshd":
        return f"{syslog} bastion sshd[{r.randint(1000, 65000)}]: "
    if source.system == "systemd":
        return f"{syslog} web01 systemd[1]: "
    if source.system == "kernel":
        uptime = (when - _START).total_seconds() + 86400
        return f"{syslog} web01 kernel: [{uptime:12.6f}] "
    if source.system == "hdfs":
        return f"{when:%y%m%d %H%M%S} {r.randint(10, 9999)} {source.level} {source.component}: "
    if source.system == "java":
        thread = f"http-nio-8080-exec-{r.randint(1, 10)}"
        stamp = f"{when:%Y-%m-%d %H:%M:%S},{millis:03d}"
        return f"{stamp} {source.level:<5} [{thread}] {source.component}: "
    if source.system == "access":
        stamp = f"{when.day:02d}/{_MONTHS[when.month - 1]}/{when:%Y:%H:%M:%S} +0000"
        return f"{_ip(r)} - - [{stamp}] "
    day = _DAYS[when.weekday()]
    stamp = f"{day} {_MONTHS[when.month - 1]} {when.day:02d} {when:%H:%M:%S} {when.year}"
    return f"[{stamp}] [{source.level}] "
