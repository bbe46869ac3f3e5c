"""The audit log: an append-only, hash-chained JSONL file of every escalation to a remote tier.

Each line is one record in canonical JSON (sorted keys, no spaces, ASCII): the fields of
FIELDS the caller gives, plus ``seq`` (1, 2, ...: its line number), ``time`` (UTC, ISO 8601,
unless given), ``prev`` (the previous line's ``hash``; "0" * 64 for the first) and ``hash``
(sha256 of the canonical JSON of the record without ``hash``). A sidecar file ``PATH.head``
holds the last ``seq`` and ``hash``, so that ``verify`` detects lines removed at the end as
well as a line edited, removed, inserted or moved anywhere, and a torn last line.

No private values: ``append`` takes only the keys of FIELDS, each of its type, strings of at
most MAX_TEXT characters, and ``replaced`` as {entity type: count}. The text sent, and the
values replaced in it, have no field to go in.

What the chain proves: that the lines are the ones appended, in order, unless someone
rewrote the chain and the head together (whoever can write both files can). To detect that
too, keep the head hash that ``pocketlm audit --verify`` prints somewhere else.

Writers: an append takes a lock (threads) and an exclusive flock on the log (other
processes), checks that the log ends where the head says, writes its line with one write()
on an O_APPEND descriptor, then replaces the head (temp file + rename). A crash between
those two writes leaves a line the head does not cover: ``verify`` reports it, and
``append`` refuses to go on until someone has looked (evidence does not repair itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pocketlm import config
from pocketlm.errors import PocketError

AUDIT_LOG_ENV = "POCKETLM_AUDIT_LOG"
GENESIS = "0" * 64  # the ``prev`` of the first record
MAX_TEXT = 120  # longest string value: room for a reason, not for a prompt's worth of text
MAX_KINDS = 64  # entity types in ``replaced``

_NUMBER = (int, float)
FIELDS: dict[str, tuple[type, ...]] = {
    "time": (str,),  # set by append unless given
    "request_id": (str,),
    "tier": (str,),
    "decision": (str,),  # how the tier was chosen (router, rule, cascade, explicit...)
    "reason": (str,),
    "score": _NUMBER,  # the router's score
    "replaced": (dict,),  # {entity type: count} pseudonymised before sending
    "tokens_in": (int,),
    "tokens_out": (int,),
    "cost": _NUMBER,
    "currency": (str,),
    "energy_j": _NUMBER,
    "energy_estimated": (bool,),
    "cost_if_remote": _NUMBER,  # the same tokens on the remote reference tier
    "fallback": (bool,),
    "status": (str, int),
    "latency_s": _NUMBER,
}
CHAIN = ("seq", "prev", "hash")  # set by append, never by the caller
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,39}")


class AuditLogError(PocketError):
    """An audit log that cannot be read or appended to as it stands."""

    http_status = 500


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # lines that check out (all of them when ok)
    line: int | None = None  # the first bad line, 1-based
    problem: str = ""
    head: str = GENESIS  # the hash of the last good record: keep it elsewhere to anchor

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.records} records, chain intact"
        return f"line {self.line}: {self.problem}"

    def to_dict(self) -> dict:
        return asdict(self)


def default_path() -> Path:
    """``$POCKETLM_AUDIT_LOG``, or ``audit.jsonl`` in the store."""
    value = os.environ.get(AUDIT_LOG_ENV)
    return Path(value).expanduser() if value else config.home() / "audit.jsonl"


def head_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".head")


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(record: dict) -> str:
    """The hash of a record: sha256 of its canonical JSON without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def check_record(record: dict) -> None:
    """Raise ValueError naming the first key that may not go in the audit log as given."""
    for key, value in record.items():
        if key in CHAIN:
            raise ValueError(f"audit record field {key!r} is set by append, not by the caller")
        kinds = FIELDS.get(key)
        if kinds is None:
            raise ValueError(f"audit record field {key!r} is not allowed (allowed: {_allowed()})")
        if value is None:
            continue
        if key == "replaced":
            _check_replaced(value)
        elif not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"audit record field {key!r} must be {names}, not {value!r:.40}")
        elif isinstance(value, str) and len(value) > MAX_TEXT:
            raise ValueError(
                f"audit record field {key!r} is longer than {MAX_TEXT} characters "
                "(text must not go in the audit log)"
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"audit record field {key!r} must be a finite number")


def _allowed() -> str:
    return ", ".join(FIELDS)


def _check_replaced(value: object) -> None:
    ok = isinstance(value, dict) and len(value) <= MAX_KINDS
    for kind, count in value.items() if ok else ():
        ok = ok and isinstance(kind, str) and bool(_KIND.fullmatch(kind))
        ok = ok and isinstance(count, int) and not isinstance(count, bool) and count >= 0
    if not ok:
        raise ValueError(
            "audit record field 'replaced' must be {entity type: count}, entity types being "
            f"names such as EMAIL_ADDRESS (at most {MAX_KINDS})"
        )


class AuditLog:
    """Appends records to the log at ``path``; ``fsync``: each record reaches the disk before
    ``append`` returns."""

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.head_path = head_path(self.path)
        self.fsync = fsync
        self._lock = threading.Lock()

    def append(self, record: dict) -> dict:
        """Add ``record`` (keys of FIELDS only; ValueError names a key that is not) with its
        ``seq``, ``time``, ``prev`` and ``hash``; returns the record as written."""
        check_record(record)
        entry = dict(record)
        entry.setdefault("time", datetime.now(UTC).isoformat(timespec="milliseconds"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, _locked(self.path, fcntl.LOCK_EX) as fd:
            seq, prev = self._tail(fd)
            entry.update(seq=seq + 1, prev=prev)
            entry["hash"] = digest(entry)
            line = (canonical(entry) + "\n").encode()
            if os.write(fd, line) != len(line):
                raise AuditLogError(f"audit log {self.path}: short write (is the disk full?)")
            if self.fsync:
                os.fsync(fd)
            _write_head(self.head_path, entry["seq"], entry["hash"], self.fsync)
        return entry

    def _tail(self, fd: int) -> tuple[int, str]:
        """(seq, hash) of the last record, checked against the head."""
        last = _last_line(fd)
        try:
            head = _read_head(self.head_path)
        except ValueError:
            head = "unreadable"
        if last is None and head is None:
            return 0, GENESIS
        try:
            record = json.loads(last) if last and last.endswith(b"\n") else {}
        except ValueError:
            record = {}
        if head is None or head != (record.get("seq"), record.get("hash")):
            raise AuditLogError(
                f"audit log {self.path} does not end where its head file says",
                f"nothing was appended; see what changed with: pocketlm audit --verify "
                f"--file {self.path}",
            )
        return head


@contextlib.contextmanager
def _locked(path: Path, mode: int, flags: int = os.O_RDWR | os.O_APPEND | os.O_CREAT):
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _last_line(fd: int) -> bytes | None:
    size = os.fstat(fd).st_size
    chunk = 4096
    while size:
        start = max(0, size - chunk)
        data = os.pread(fd, size - start, start)
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut >= 0 or start == 0:
            return data[cut + 1 :]
        chunk *= 2
    return None


def _read_head(path: Path) -> tuple[int, str] | None:
    """(seq, hash) from the head file, None if there is none; ValueError if unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("seq"), int):
        raise ValueError(f"{path} is not a head file")
    return data["seq"], data.get("hash")


def _write_head(path: Path, seq: int, hash_: str, fsync: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the flock keeps others out
    with open(tmp, "w") as f:
        f.write(json.dumps({"seq": seq, "hash": hash_}) + "\n")
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _snapshot(path: Path) -> tuple[int, tuple[int, str] | None | str]:
    """The log's size and head at one moment (no append half done): lines up to that size
    are complete, whatever is appended while they are read."""
    with _locked(path, fcntl.LOCK_SH, os.O_RDONLY) as fd:
        try:
            head = _read_head(head_path(path))
        except (ValueError, OSError):
            head = "unreadable"
        return os.fstat(fd).st_size, head


def _lines(path: Path, size: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for raw in f:
            if size <= 0:
                return
            yield raw[:size]
            size -= len(raw)


def read(path: str | Path) -> Iterator[dict]:
    """The records of the log at ``path``, in order."""
    path = Path(path)
    if not path.exists():
        raise AuditLogError(f"no audit log at {path}")
    size, _ = _snapshot(path)
    for number, raw in enumerate(_lines(path, size), 1):
        try:
            record = json.loads(raw)
        except ValueError:
            raise AuditLogError(
                f"audit log {path}: line {number} is not valid JSON",
                f"check it with: pocketlm audit --verify --file {path}",
            ) from None
        yield record


def verify(path: str | Path) -> VerifyResult:
    """Check the chain and the head: the first bad line, by number, or ok."""
    path = Path(path)
    if not path.exists():
        head = _read_head(head_path(path)) if head_path(path).exists() else None
        if head is None:
            raise AuditLogError(f"no audit log at {path}")
        return _check_head(path, 0, GENESIS, head)
    size, head = _snapshot(path)
    prev, count = GENESIS, 0
    for number, raw in enumerate(_lines(path, size), 1):
        problem = _line_problem(raw, number, prev)
        if problem:
            return VerifyResult(False, count, number, problem, prev)
        prev, count = json.loads(raw)["hash"], number
    return _check_head(path, count, prev, head)


def _line_problem(raw: bytes, number: int, prev: str) -> str:
    if not raw.endswith(b"\n"):
        return "incomplete: the file ends inside it (truncated)"
    try:
        record = json.loads(raw)
    except ValueError:
        return "not valid JSON"
    if not isinstance(record, dict) or not all(k in record for k in CHAIN):
        return "not an audit record (no seq, prev and hash)"
    if digest(record) != record["hash"]:
        return "edited: its hash does not match its content"
    if record["seq"] != number:
        return (
            f"holds record {record['seq']} where record {number} belongs "
            "(a line was removed, inserted or moved)"
        )
    if record["prev"] != prev:
        previous = f"line {number - 1}" if number > 1 else "the start of the log"
        return f"does not follow {previous} (a line was removed, inserted or moved)"
    return ""


def _check_head(path: Path, count: int, last: str, head) -> VerifyResult:
    """Whether the head file agrees that the log ends after ``count`` records with ``last``."""
    name = head_path(path).name
    if head is None or head == "unreadable":
        if count == 0:
            return VerifyResult(True, 0, head=last)
        state = "missing" if head is None else "unreadable"
        problem = f"the head file {name} is {state}: lines removed at the end would go unseen"
        return VerifyResult(False, count, count, problem, last)
    seq, hash_ = head
    if seq > count:
        problem = f"missing: {name} records {seq} records, the log ends after {count}"
        return VerifyResult(False, count, count + 1, problem + " (lines removed at the end)", last)
    if seq < count:
        problem = f"not covered by {name}, which ends at record {seq} (appended by another writer)"
        return VerifyResult(False, seq, seq + 1, problem, last)
    if hash_ != last:
        problem = f"does not match {name} (the last record was replaced)"
        return VerifyResult(False, count - 1, count, problem, last)
    return VerifyResult(True, count, head=last)


def summary(records: Iterable[dict]) -> dict[str, dict]:
    """Per tier: requests, tokens in and out, cost, energy, what the same traffic would have
    cost on the remote tier alone (``cost_if_remote``) and the ``saving``."""
    tiers: dict[str, dict] = {}
    for record in records:
        totals = tiers.setdefault(str(record.get("tier") or "?"), _zero())
        totals["requests"] += 1
        for key in ("tokens_in", "tokens_out", "cost", "energy_j", "cost_if_remote"):
            totals[key] += record.get(key) or 0
        if record.get("energy_j") is not None and record.get("energy_estimated"):
            totals["energy_estimated"] = True
        totals["currency"] = _currency(totals["currency"], record.get("currency"))
    for totals in tiers.values():
        totals["saving"] = totals["cost_if_remote"] - totals["cost"]
    return tiers


def _zero() -> dict:
    return {
        "requests": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
        "currency": None,
        "energy_j": 0.0,
        "energy_estimated": False,
        "cost_if_remote": 0.0,
    }


def _currency(seen: str | None, new: str | None) -> str | None:
    if new is None or seen == new:
        return seen
    return new if seen is None else "mixed"
