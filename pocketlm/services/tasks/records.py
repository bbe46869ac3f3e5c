"""Input readers for ``pocketlm task``: a user's file or folder as a stream of records.

One reader per format (JSONL, CSV, plain text lines, a folder of files, mbox, Maildir,
one .eml message, syslog lines), all behind ``read_records``. The input may be large and
hostile, so cost is bounded: files are read line by line, no record is held past
``MAX_RECORD_BYTES``, and a record that cannot be read becomes a ``Record`` with an
``error`` (the job reports it as failed) instead of stopping the job or vanishing.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import mailbox
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from pocketlm.errors import UsageError, option
from pocketlm.services.tasks.mail import Email, parse_email

FORMATS = ("jsonl", "csv", "text", "dir", "mbox", "maildir", "eml", "syslog")
MAX_RECORD_BYTES = 8 * 1024 * 1024
SNIFF_BYTES = 64 * 1024  # what detect_format reads of a file
BINARY_SNIFF_BYTES = 8 * 1024  # a NUL byte in this much of a file: binary
_SKIP_CHUNK = 1024 * 1024  # the rest of an oversize line is skipped this much at a time

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".eml": "eml",
    ".mbox": "mbox",
    ".log": "syslog",
    ".txt": "text",
}
_CSV_DELIMITERS = ",;\t|"
_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
# "program[pid]: " after the host; both optional ("last message repeated 3 times")
_PROGRAM = r"(?:(?P<program>[^\s\[\]:]+)(?:\[(?P<pid>[^\]\s]*)\])?: ?)?(?P<message>.*)"
_SYSLOG = (
    # RFC 3164, as in /var/log/syslog and auth.log: "May  1 12:00:00 host sshd[42]: ..."
    re.compile(
        rf"(?:<\d{{1,3}}>)?(?P<timestamp>(?:{_MONTHS}) +\d{{1,2}} [\d:.]{{8,}}) "
        rf"(?P<host>\S+) {_PROGRAM}"
    ),
    # ISO timestamps (rsyslog's file format): "2024-05-01T12:00:00+00:00 host sshd[42]: ..."
    re.compile(
        r"(?:<\d{1,3}>)?(?P<timestamp>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d[\d.,]*"
        rf"(?:Z|[+-]\d\d:?\d\d)?) (?P<host>\S+) {_PROGRAM}"
    ),
    # RFC 5424 as sent: "<34>1 2024-05-01T12:00:00Z host sshd 42 ID47 [sd] message"
    re.compile(
        r"<\d{1,3}>1 (?P<timestamp>\S+) (?P<host>\S+) (?P<program>\S+) (?P<pid>\S+) "
        r"\S+ (?:-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (?P<message>.*))?"
    ),
)
_MBOX_FROM = re.compile(rb"From \S+ +\S.*\d{1,2}:\d\d")


@dataclass
class Record:
    """One unit of work: what the task reads (``text``) and where it came from."""

    id: str | int  # its own "id" when it has one, else where it is in the input
    text: str
    fields: dict[str, Any]  # the original fields, or metadata (path, mail headers, log parts)
    error: str | None = None  # why it could not be read (one line); text is then ""
    line: int | None = None  # 1-based line in the file where it starts


T = TypeVar("T")


def started(items: Iterator[T]) -> Iterator[T]:
    """``items`` with its first one read now: a missing, binary or empty input fails here,
    with its one-line error, before a model loads or a results file is opened."""
    first = list(itertools.islice(items, 1))
    return itertools.chain(first, items)


def count_lines(path: Path) -> int:
    """Newlines in ``path``, read in 1 MiB blocks (a progress bar's total, cheaply)."""
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def read_records(
    path: Path, *, fmt: str = "auto", field: str | None = None, email: bool = False
) -> Iterator[Record]:
    """The records of ``path``, one at a time, read as ``fmt`` (``auto``: ``detect_format``).

    ``field`` names the text field (JSONL) or column (CSV); ``email`` says records are raw
    mail messages. Bad options and unreadable inputs raise ``UsageError`` here, before
    iterating; an input without a record raises it at the end of iteration.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(
            f"unknown input format {fmt!r}", f"choose one of: auto, {', '.join(FORMATS)}"
        )
    path = Path(path)
    check_readable(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "text" and email:
        fmt = "eml"  # a plain file of mail: one message
    _check_options(path, fmt, field, email)
    reader = _READERS[fmt]
    return _non_empty(reader(path, field, email), path)


def detect_format(path: Path) -> str:
    """The format of ``path`` (one of FORMATS), from its name or else its first bytes."""
    path = Path(path)
    if stat.S_ISDIR(_mode(path)):
        return "maildir" if _is_maildir(path) else "dir"
    if fmt := _EXTENSIONS.get(path.suffix.lower()):
        return fmt
    return _sniff(_head(path, SNIFF_BYTES))


def _mode(path: Path) -> int:
    """The file mode of ``path``, or ``UsageError`` if there is none to read."""
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}", "check the path") from None
    except OSError as e:  # e.g. a folder on the way that cannot be searched
        raise UsageError(f"cannot read {path}: {e.strerror}", "check its permissions") from None


def _is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def _sniff(head: bytes) -> str:
    """The format of a file that starts with ``head``."""
    lines = head.splitlines(keepends=True)
    first = next((line for line in lines if line.strip()), b"")
    if _MBOX_FROM.match(first):
        return "mbox"
    cut = not first.endswith(b"\n") and len(head) == SNIFF_BYTES  # longer than what was read
    if (cut and first.lstrip().startswith(b"{")) or isinstance(_json(first), dict):
        return "jsonl"
    if parse_syslog_line(_text(first)):
        return "syslog"
    return "text"


def _json(line: bytes) -> Any:
    """``line`` parsed as JSON, or None if it is not JSON."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of ``path``."""
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}", "check its permissions") from None


def check_readable(path: Path) -> None:
    """Raise ``UsageError`` unless ``path`` is a readable text file or folder."""
    mode = _mode(path)
    if stat.S_ISDIR(mode):
        try:
            with os.scandir(path):
                return
        except OSError as e:
            raise UsageError(
                f"cannot read folder {path}: {e.strerror}", "check its permissions"
            ) from None
    if not stat.S_ISREG(mode):  # a pipe or device: sniffing it would eat its input
        raise UsageError(f"{path} is not a regular file or folder", "save the input to a file")
    if b"\0" in _head(path, BINARY_SNIFF_BYTES):
        raise UsageError(
            f"{path} is a binary file, not text", "give a text, JSONL, CSV, mail or log file"
        )


def _check_options(path: Path, fmt: str, field: str | None, email: bool) -> None:
    """Raise ``UsageError`` for a format that does not fit ``path``, or options that mean
    nothing for ``fmt``."""
    is_dir, wants_dir = path.is_dir(), fmt in ("dir", "maildir")
    if is_dir != wants_dir:
        kind = "a folder" if is_dir else "a file"
        raise UsageError(f"{path} is {kind}, not {fmt} input", "choose another input format")
    if fmt == "maildir" and not _is_maildir(path):
        raise UsageError(f"{path} is not a Maildir: it has no cur/, new/ and tmp/ folders")
    if field is not None and fmt not in ("jsonl", "csv"):
        raise UsageError(f"{option('field')} applies to JSONL and CSV input, not {fmt}")
    if email and fmt == "syslog":
        raise UsageError(f"{option('email')} does not apply to log files")


def _non_empty(records: Iterator[Record], path: Path) -> Iterator[Record]:
    """``records``, then ``UsageError`` if there were none."""
    empty = True
    for record in records:
        empty = False
        yield record
    if empty:
        raise UsageError(f"{path} has no records", "give an input with at least one record")


# --- lines, bounded ----------------------------------------------------------------------


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}", "check its permissions") from None


def _lines(f: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its end) for each line of ``f``; the line is None when it
    is longer than MAX_RECORD_BYTES, and its rest is skipped without being held."""
    number = 0
    while chunk := f.readline(MAX_RECORD_BYTES + 1):
        number += 1
        if len(chunk) > MAX_RECORD_BYTES and not chunk.endswith(b"\n"):
            while (rest := f.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                pass
            yield number, None
        else:
            yield number, chunk.rstrip(b"\r\n")


def decoded_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """The lines of ``path`` as text (see ``_lines``); bad UTF-8 is replaced, not fatal."""
    with _open(path) as f:
        for number, line in _lines(f):
            text = None if line is None else _text(line)
            if number == 1 and text:
                text = text.removeprefix("\ufeff")  # the byte order mark some editors write
            yield number, text


def _text_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """The non-blank lines of ``path`` (see ``decoded_lines``)."""
    for number, text in decoded_lines(path):
        if text is None or text.strip():
            yield number, text


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _valid(text: str) -> str:
    """``text`` with lone surrogates (JSON allows "\\ud800") replaced: they cannot be
    encoded, so the tokenizer or the output file would fail on them later."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()


def _too_large(number: int | None = None) -> str:
    where = f"line {number}: " if number is not None else ""
    return f"{where}record is larger than {MAX_RECORD_BYTES // 2**20} MiB"


def _listed(names: Iterable[str], most: int = 20) -> str:
    """``names`` for a one-line message: at most ``most``, each cut to 40 characters (a
    hostile header may hold a million names, or names with newlines)."""
    first = list(itertools.islice(names, most + 1))
    shown = [" ".join(name.split())[:40] for name in first[:most]]
    return (", ".join(shown) + (", ..." if len(first) > most else "")) or "none"


def _failed(id: str | int, error: str, line: int | None = None) -> Record:
    return Record(id=id, text="", fields={}, error=error, line=line)


# --- JSONL, CSV ----------------------------------------------------------------------


def _read_jsonl(path: Path, field: str | None, email: bool) -> Iterator[Record]:
    """One record per JSON object line."""
    for position, (number, line) in enumerate(_text_lines(path), start=1):
        if line is None:
            yield _failed(position, _too_large(number), number)
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested too deep
            yield _failed(position, f"line {number}: not a JSON object: {e}", number)
            continue
        if not isinstance(obj, dict):
            kind = type(obj).__name__
            yield _failed(position, f"line {number}: not a JSON object: got a {kind}", number)
            continue
        yield _from_fields(obj, position, number, field, email)


def _from_fields(
    fields: dict[str, Any], position: int, number: int, field: str | None, email: bool
) -> Record:
    """A record from a JSONL object or CSV row: its text is ``field`` (or the default)."""
    own_id = _own_id(fields.get("id"))
    record_id = own_id if own_id is not None else position
    name, problem = _text_field(fields, field, email)
    if problem:
        return _failed(record_id, f"line {number}: {problem}", number)
    value = fields[name]
    text = _valid(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    if email:
        rest = {k: v for k, v in fields.items() if k != name}
        return _email_record(text.encode(), record_id, number, rest)
    return Record(id=record_id, text=text, fields=fields, line=number)


def _own_id(value: Any) -> str | int | None:
    """A record's own "id" field, if it is one: a non-empty string or an integer."""
    if isinstance(value, bool):  # a bool is an int to Python, not an id to anyone
        return None
    return value if isinstance(value, int) or (isinstance(value, str) and value) else None


def _text_field(fields: dict[str, Any], field: str | None, email: bool) -> tuple[str, str | None]:
    """(the field that holds the text, or why there is none)."""
    names = _listed(fields)
    if field is not None:
        ok = field in fields and fields[field] is not None
        return field, None if ok else f"no field {field!r} (fields: {names})"
    for default in ("raw", "text") if email else ("text",):
        if fields.get(default) is not None:
            return default, None
    strings = [k for k, v in fields.items() if isinstance(v, str) and k != "id"]
    if len(strings) == 1 and not email:
        return strings[0], None
    wanted = "'raw' or 'text' field" if email else "'text' field"
    return "", f"no {wanted} (fields: {names}); name the field that holds the text"


def _read_csv(path: Path, field: str | None, email: bool) -> Iterator[Record]:
    """One record per row under a header row; the delimiter is sniffed from the header."""
    # csv refuses fields over 128 KiB by default; a record may be up to MAX_RECORD_BYTES
    csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_BYTES))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else _delimiter(_head(path, SNIFF_BYTES))
    rows = _csv_rows(path, delimiter)
    columns = _csv_header(path, rows, delimiter)
    if columns is None:
        return
    column = _csv_column(path, columns, field, email)
    for position, (number, row_text) in enumerate(rows, start=1):
        values = None if row_text is None else _parse_row(row_text, delimiter)
        if row_text is None:
            error = _too_large(number)
        elif values is None:
            error = f"line {number}: not a CSV row"
        elif len(values) != len(columns):
            error = f"line {number}: {len(values)} values for {len(columns)} columns"
        else:
            row = dict(zip(columns, values, strict=True))
            yield _from_fields(row, position, number, column, email)
            continue
        yield _failed(position, error, number)


def _csv_header(
    path: Path, rows: Iterator[tuple[int, str | None]], delimiter: str
) -> list[str] | None:
    """The column names (the first row), None for a file without rows."""
    _, text = next(rows, (0, ""))
    if text == "":
        return None
    if text is None:
        size = MAX_RECORD_BYTES // 2**20
        raise UsageError(f"{path}: the header row is larger than {size} MiB", "check it is CSV")
    columns = _parse_row(text, delimiter)
    if columns is None:
        raise UsageError(f"{path}: the header row is not CSV", "check it is CSV")
    return columns


def _csv_column(path: Path, columns: list[str], field: str | None, email: bool) -> str:
    """The column that holds the text, or ``UsageError`` naming the columns there are."""
    wanted = [field] if field is not None else (["raw", "text"] if email else ["text"])
    for name in wanted:
        if name in columns:
            return name
    names = _listed(columns)
    missing = " or ".join(repr(n) for n in wanted)
    raise UsageError(
        f"{path} has no {missing} column (columns: {names})", f"choose one with {option('field')}"
    )


def _delimiter(head: bytes) -> str:
    """The delimiter of the header row (the first line in ``head``): the most frequent of
    , ; tab |, else a comma."""
    header = next((line for line in _text(head).splitlines() if line.strip()), "")
    counts = {d: header.count(d) for d in _CSV_DELIMITERS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _parse_row(text: str, delimiter: str) -> list[str] | None:
    """The values of one CSV row, or None if csv cannot read it (a stray carriage return)."""
    try:
        return next(csv.reader(io.StringIO(text), delimiter=delimiter, strict=False), [])
    except csv.Error:
        return None


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, str | None]]:
    """(starting line, text) of each CSV row; a row spans lines while a quoted field is open.
    The text is None for a row over MAX_RECORD_BYTES, which is skipped up to its end."""
    start, parts, size, in_quotes = 0, [], 0, False
    for number, line in decoded_lines(path):
        if not start and line is not None and not line.strip():
            continue  # a blank line between rows (inside a quoted field, it is kept)
        start = start or number
        size += MAX_RECORD_BYTES + 1 if line is None else len(line) + 1
        if size <= MAX_RECORD_BYTES:
            parts.append(line)
        else:
            parts = []  # over the cap: stop holding it, keep reading to the row's end
        in_quotes = _quote_open(line or "", delimiter, in_quotes)
        if not in_quotes:
            yield start, "\n".join(parts) if size <= MAX_RECORD_BYTES else None
            start, parts, size = 0, [], 0
    if start:
        yield start, "\n".join(parts) if size <= MAX_RECORD_BYTES else None


# The rest of a quoted field up to its closing quote ("" is a quote); possessive, so a field
# left open is found in one pass, without backtracking into a "" pair
_QUOTED_REST = re.compile(r'(?:[^"]++|"")*+"')


def _quote_open(line: str, delimiter: str, in_quotes: bool) -> bool:
    """Whether a quoted field is open at the end of ``line``, by csv's rule: a quote opens a
    field only at its start (``5" screen`` is text), and a field may span lines."""
    pos = 0
    while True:
        if in_quotes:
            if not (m := _QUOTED_REST.match(line, pos)):
                return True
            pos, in_quotes = m.end(), False
        elif pos == 0 and line.startswith('"'):
            pos, in_quotes = 1, True
            continue
        cut = line.find(delimiter, pos)
        if cut < 0:
            return False
        pos = cut + 1
        in_quotes = line.startswith('"', pos)
        pos += in_quotes


# --- plain text, logs ------------------------------------------------------------------


def _read_text(path: Path, field: str | None, email: bool) -> Iterator[Record]:
    """One record per non-blank line."""
    for position, (number, line) in enumerate(_text_lines(path), start=1):
        if line is None:
            yield _failed(position, _too_large(number), number)
        else:
            yield Record(id=position, text=line, fields={}, line=number)


def _read_syslog(path: Path, field: str | None, email: bool) -> Iterator[Record]:
    """One record per log line; its parts in ``fields`` (empty for a line that does not parse)."""
    for position, (number, line) in enumerate(_text_lines(path), start=1):
        if line is None:
            yield _failed(position, _too_large(number), number)
        else:
            yield Record(id=position, text=line, fields=parse_syslog_line(line), line=number)


def parse_syslog_line(line: str) -> dict[str, Any]:
    """timestamp, host, program, pid and message of a syslog line; {} if it is not one."""
    for pattern in _SYSLOG:
        if m := pattern.fullmatch(line.strip()):
            parts = {k: m.group(k) for k in ("timestamp", "host", "program", "pid", "message")}
            parts = {k: None if v == "-" else v for k, v in parts.items()}  # RFC 5424 nil
            pid = parts["pid"]
            parts["pid"] = int(pid) if pid and pid.isdigit() else pid or None
            parts["message"] = parts["message"] or ""
            return parts
    return {}


# --- files and folders -----------------------------------------------------------------


def _read_dir(path: Path, field: str | None, email: bool) -> Iterator[Record]:
    """One record per regular file under ``path`` (recursive, sorted, hidden ones skipped)."""
    for file, problem in _walk(path):
        name = file.relative_to(path).as_posix()
        if problem:
            yield _failed(name, problem)
            continue
        data, problem = _read_file(file)
        if problem:
            yield _failed(name, problem)
        elif email or file.suffix.lower() == ".eml":
            yield _email_record(data, name, None, {"path": name})
        else:
            yield Record(id=name, text=_text(data), fields={"path": name})


def _walk(root: Path) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each regular file under ``root`` in sorted order, depth first;
    (path, why) for a folder that cannot be listed. Iterative: depth costs no stack."""
    stack = [_children(root)]
    while stack:
        path = next(stack[-1], None)
        if path is None:
            stack.pop()
            continue
        try:
            if path.is_dir() and not path.is_symlink():  # a linked folder may loop
                stack.append(_children(path))
            elif path.is_file():
                yield path, None
        except OSError as e:  # a folder that cannot be listed, an entry that cannot be seen
            yield path, f"cannot read: {e.strerror}"


def _children(folder: Path) -> Iterator[Path]:
    """The entries of ``folder`` that are not hidden, sorted by name."""
    return iter(sorted(p for p in folder.iterdir() if not p.name.startswith(".")))


def _read_file(path: Path) -> tuple[bytes, str | None]:
    """(the bytes of a file in a folder, or why it is not a record)."""
    try:
        with path.open("rb") as f:
            head = f.read(BINARY_SNIFF_BYTES)  # a binary file is rejected before more is read
            if b"\0" in head:
                return b"", "binary file, not text"
            data = head + f.read(MAX_RECORD_BYTES + 1 - len(head))  # the cap, whatever stat says
    except OSError as e:
        return b"", f"cannot read: {e.strerror}"
    if len(data) > MAX_RECORD_BYTES:
        return b"", f"file is larger than {MAX_RECORD_BYTES // 2**20} MiB"
    return data, None


# --- mail ----------------------------------------------------------------------------


def _read_eml(path: Path, field: str | None, email: bool) -> Iterator[Record]:
    """The one message in ``path``."""
    data, problem = _read_file(path)
    if problem:
        yield _failed(1, problem)
    elif data.strip():
        yield _email_record(data, 1, 1, {})


def _read_mbox(path: Path, field: str | None, email: bool) -> Iterator[Record]:
    """One record per message of an mbox file."""
    with _open(path) as f:
        for position, (number, raw) in enumerate(_mbox_messages(f), start=1):
            if raw is None:
                yield _failed(position, _too_large(number), number)
            else:
                yield _email_record(raw, position, number, {})


def _mbox_messages(f: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line of its "From " line, message or None when over the cap) for each message.

    A message starts at each line that starts with "From ", as ``mailbox.mbox`` has it;
    unlike ``mailbox.mbox``, which indexes the whole file first with unbounded reads, this
    streams and holds one message at a time.
    """
    start, lines, size = 0, [], 0
    for number, line in _lines(f):
        if line is not None and line.startswith(b"From "):
            if start:
                yield start, b"\n".join(lines) if size <= MAX_RECORD_BYTES else None
            start, lines, size = number, [], 0
        elif start:  # lines before the first "From " line belong to no message
            size += MAX_RECORD_BYTES + 1 if line is None else len(line) + 1
            if size <= MAX_RECORD_BYTES:
                lines.append(line)
            else:
                lines = []  # over the cap: stop holding it, keep reading to its end
    if start:
        yield start, b"\n".join(lines) if size <= MAX_RECORD_BYTES else None


def _read_maildir(path: Path, field: str | None, email: bool) -> Iterator[Record]:
    """One record per message of a Maildir, in key order (for the same order every run)."""
    box = mailbox.Maildir(path, factory=None, create=False)
    try:
        keys = sorted(box.keys())
    except OSError as e:
        msg = f"cannot read Maildir {path}: {e.strerror}"
        raise UsageError(msg, "check its permissions") from None
    for key in keys:
        try:
            with box.get_file(key) as f:
                data = f.read(MAX_RECORD_BYTES + 1)
        except (OSError, KeyError) as e:  # removed since it was listed
            yield _failed(key, f"cannot read: {e}")
            continue
        if len(data) > MAX_RECORD_BYTES:
            yield _failed(key, _too_large())
        else:
            yield _email_record(data, key, None, {})


def _email_record(raw: bytes, id: str | int, line: int | None, extra: dict[str, Any]) -> Record:
    """A record of one raw message: text as a model reads it, headers in ``fields``."""
    try:
        mail = parse_email(raw)
    except Exception as e:  # the email package raises assorted errors on malformed mail
        where = f"line {line}: " if line is not None else ""
        why = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whatever the message
        return _failed(id, f"{where}message could not be parsed: {why}", line)
    return Record(id=id, text=mail.as_text(), fields={**extra, **_email_fields(mail)}, line=line)


def _email_fields(mail: Email) -> dict[str, Any]:
    return {
        "subject": mail.subject,
        "from": mail.sender,
        "to": mail.to,
        "date": mail.date,
        "message_id": mail.message_id,
        "reply_to": mail.reply_to,
        "attachments": mail.attachments,
    }


_READERS = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "text": _read_text,
    "dir": _read_dir,
    "mbox": _read_mbox,
    "maildir": _read_maildir,
    "eml": _read_eml,
    "syslog": _read_syslog,
}
