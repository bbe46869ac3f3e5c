"""The tiers file: the local models and remote endpoints a request can be routed to.

One ``[[tier]]`` table per tier, in the order a person would climb them (local tiers from the
smallest up, then remote ones)::

    router = "router.json"      # optional: the trained router (pocketlm route train)
    cascade = true              # optional: answer locally first and escalate when unsure

    [[tier]]
    name = "local"
    model = "qwen2.5-coder-0.5b-instruct"    # a store model

    [[tier]]
    name = "cloud"
    url = "https://api.example.com/v1"       # any OpenAI-compatible endpoint
    model = "gpt-4o-mini"
    api_key_env = "CLOUD_API_KEY"            # the key's environment variable (never the key)
    price_in = 0.15                          # currency per million tokens
    price_out = 0.60
    privacy = "redact"                       # allow | redact (default) | block

Every error names the file, the line and the field, and says what to write instead.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pocketlm.errors import UsageError

Privacy = Literal["allow", "redact", "block"]
POLICIES: tuple[Privacy, ...] = ("allow", "redact", "block")  # from loosest to tightest
MAX_BYTES = 1 << 20
_TIER_KEYS = {
    "name",
    "model",
    "url",
    "api_key_env",
    "price_in",
    "price_out",
    "currency",
    "privacy",
    "timeout_s",
    "retries",
}
_TOP_KEYS = {"tier", "router", "cascade", "cascade_threshold", "currency", "audit_log"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def tighter(a: Privacy, b: Privacy) -> Privacy:
    """The tighter of two policies (a request may tighten a tier's policy, never loosen it)."""
    return max(a, b, key=POLICIES.index)


@dataclass(frozen=True)
class Tier:
    name: str
    model: str
    url: str | None = None  # None: a local store model
    api_key_env: str | None = None
    price_in: float = 0.0  # per million input tokens
    price_out: float = 0.0
    currency: str = "USD"
    privacy: Privacy = "allow"
    timeout_s: float = 60.0
    retries: int = 2

    @property
    def local(self) -> bool:
        return self.url is None

    @property
    def host(self) -> str | None:
        return urlsplit(self.url).hostname if self.url else None

    @property
    def port(self) -> int | None:
        if not self.url:
            return None
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6


@dataclass(frozen=True)
class Tiers:
    tiers: tuple[Tier, ...]
    path: Path | None = None
    router: Path | None = None
    cascade: bool = True
    cascade_threshold: float | None = None  # mean token logprob; None: the router's (or -0.5)
    audit_log: Path | None = None
    by_name: dict[str, Tier] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {t.name: t for t in self.tiers})

    @property
    def local(self) -> list[Tier]:
        return [t for t in self.tiers if t.local]

    @property
    def remote(self) -> list[Tier]:
        return [t for t in self.tiers if not t.local]

    @property
    def best_local(self) -> Tier | None:
        """The fallback when a remote tier fails: the last (largest) local tier."""
        return self.local[-1] if self.local else None

    def get(self, name: str) -> Tier | None:
        return self.by_name.get(name)

    def allowed_hosts(self) -> list[str]:
        """host:port of every remote tier (what the egress guard lets through)."""
        return [f"{t.host}:{t.port}" for t in self.remote if t.host]


def load(path: str | Path) -> Tiers:
    """Read and check a tiers file; errors name the file, line and field."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UsageError(f"tiers file '{path}' is over 1 MiB", "is it the right file?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"tiers file '{path}' not found", "check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read tiers file '{path}': {e}", "check the file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}", "fix the syntax at that line") from None
    return _parse(data, text, path)


def _parse(data: dict, text: str, path: Path) -> Tiers:
    where = _Where(text, path)
    for key in data:
        if key not in _TOP_KEYS:
            raise where.error(None, key, f"unknown setting '{key}'", f"use: {_list(_TOP_KEYS)}")
    tables = data.get("tier")
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{path}: no [[tier]] table", "add one [[tier]] table per tier")
    tiers: list[Tier] = []
    for i, table in enumerate(tables):
        tier = _tier(table, i, where)
        if any(t.name == tier.name for t in tiers):
            raise where.error(i, "name", f"tier name '{tier.name}' is used twice", "rename one")
        tiers.append(tier)
    base = path.parent
    router = data.get("router")
    audit = data.get("audit_log")
    for key, value in (("router", router), ("audit_log", audit)):
        if value is not None and not isinstance(value, str):
            raise where.error(None, key, f"'{key}' must be a path (a string)", f'{key} = "..."')
    cascade = data.get("cascade", True)
    if not isinstance(cascade, bool):
        raise where.error(None, "cascade", "'cascade' must be true or false", "cascade = true")
    threshold = data.get("cascade_threshold")
    if threshold is not None and not (_number(threshold) and -50 <= threshold <= 0):
        raise where.error(
            None,
            "cascade_threshold",
            "'cascade_threshold' must be a mean token log-probability between -50 and 0",
            "for example -0.5",
        )
    return Tiers(
        tuple(tiers),
        path=path,
        router=(base / router).expanduser() if router else None,
        cascade=cascade,
        cascade_threshold=threshold,
        audit_log=(base / audit).expanduser() if audit else None,
    )


def _tier(table: object, i: int, where: _Where) -> Tier:
    if not isinstance(table, dict):
        raise where.error(i, None, "a tier must be a table", "write it as [[tier]]")
    for key in table:
        if key not in _TIER_KEYS:
            raise where.error(i, key, f"unknown field '{key}'", f"tier fields: {_list(_TIER_KEYS)}")
    for key in ("name", "model"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise where.error(i, key, f"'{key}' is missing or not a string", f'{key} = "..."')
    name = table["name"]
    if not _NAME.match(name) or name == "auto":
        raise where.error(
            i, "name", f"invalid tier name '{name[:64]}'", "letters, digits, . _ : - (not 'auto')"
        )
    url = table.get("url")
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise where.error(i, "url", "'url' must be an http(s) URL", "https://host/v1")
        if parts.username or parts.password:
            raise where.error(
                i, "url", "'url' must not hold credentials", "put the key in api_key_env"
            )
    env = table.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not _ENV.match(env)):
        raise where.error(
            i, "api_key_env", "'api_key_env' must name an environment variable", "MY_API_KEY"
        )
    if url is None and env is not None:
        raise where.error(i, "api_key_env", "a local tier has no API key", "remove the line")
    numbers = {}
    for key, low, high, default in (
        ("price_in", 0, 1e6, 0.0),
        ("price_out", 0, 1e6, 0.0),
        ("timeout_s", 0.1, 3600, 60.0),
        ("retries", 0, 10, 2),
    ):
        value = table.get(key, default)
        if not _number(value) or not low <= value <= high:
            raise where.error(
                i, key, f"'{key}' must be a number from {low} to {high:g}", f"{key} = {default}"
            )
        numbers[key] = value
    if not isinstance(numbers["retries"], int):
        raise where.error(i, "retries", "'retries' must be a whole number", "retries = 2")
    privacy = table.get("privacy", "allow" if url is None else "redact")
    if privacy not in POLICIES:
        raise where.error(
            i, "privacy", f"invalid privacy '{str(privacy)[:32]}'", "allow, redact or block"
        )
    currency = table.get("currency", "USD")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Za-z]{1,8}", currency):
        raise where.error(i, "currency", "'currency' must be a code like USD", 'currency = "EUR"')
    return Tier(
        name=name,
        model=table["model"],
        url=url.rstrip("/") if url else None,
        api_key_env=env,
        currency=currency.upper(),
        privacy=privacy,
        **numbers,
    )


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v


def _list(keys: set[str]) -> str:
    return ", ".join(sorted(keys))


@dataclass
class _Where:
    """Finds the line of a field (tomllib keeps no positions): the i-th ``[[tier]]`` header,
    then the key's line up to the next table header."""

    text: str
    path: Path

    def line(self, i: int | None, key: str | None) -> int:
        lines = self.text.splitlines()
        start, end = 0, len(lines)
        headers = [n for n, ln in enumerate(lines) if re.match(r"\s*\[\[\s*tier\s*\]\]", ln)]
        tables = [n for n, ln in enumerate(lines) if re.match(r"\s*\[", ln)]
        if i is not None and i < len(headers):
            start = headers[i]
            end = next((n for n in tables if n > start), len(lines))
        elif i is None and tables:
            end = tables[0]
        if key:
            pattern = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=")
            for n in range(start, end):
                if pattern.match(lines[n]):
                    return n + 1
        return start + 1

    def error(self, i: int | None, key: str | None, message: str, hint: str) -> UsageError:
        where = f"{self.path}:{self.line(i, key)}"
        table = f"tier {i + 1}" if i is not None else "top level"
        field_ = f", field '{key}'" if key else ""
        return UsageError(f"{where} ({table}{field_}): {message}", hint)
