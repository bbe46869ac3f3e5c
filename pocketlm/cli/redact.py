"""pocketlm redact FILE|-: personal and secret data replaced by placeholders, offline."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

HELP = "replace personal and secret data in a file by placeholders (<PERSON_1>, ...)"
BLOCK_CHARS = 64 * 1024  # plain text is redacted this much at a time, at line ends

EXAMPLES = """examples:
  pocketlm redact notes.txt > notes.redacted.txt
  cat app.log | pocketlm redact - --entities EMAIL_ADDRESS,IP_ADDRESS,API_KEY
  pocketlm redact tickets.jsonl --field body --json > spans.jsonl

The same value gets the same placeholder throughout the input. With --json: one JSON line
per record (a JSONL input's lines, else the whole text) with its id, the redacted text and
the spans found (entity_type, start, end, placeholder; offsets into the original text).
Nothing leaves the machine: the detector is patterns and word lists, no model download."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("input", metavar="FILE", help="text or JSONL file, or - for standard input")
    p.add_argument("--json", action="store_true", help="one JSON record per input record")
    p.add_argument("--field", help="the JSONL field that holds the text (default: text)")
    p.add_argument("--entities", metavar="A,B", help="only these entity types (default: all)")


def main(args: argparse.Namespace) -> int:
    from pocketlm.services.privacy.pseudonym import Pseudonymizer

    pseudonymizer = Pseudonymizer(_detector(args.entities))
    source, jsonl = _open_input(args)
    out = sys.stdout
    with source:
        if jsonl:
            for record in _records(source, args.input, args.field):
                _write_record(out, pseudonymizer, record, args.field or "text", args.json)
        elif args.json:
            text = _whole(source, args.input)
            _write_json(out, pseudonymizer, 1, text)  # one record: position 1
        else:
            for block in _blocks(source):
                out.write(pseudonymizer.redact(block)[0])
    out.flush()
    return 0


def _detector(entities: str | None):
    from pocketlm.errors import UsageError
    from pocketlm.services.privacy.detect import Detector, check_entities, shared

    if entities is None:
        return shared()
    try:
        return Detector(check_entities([e.strip().upper() for e in entities.split(",") if e]))
    except ValueError as e:
        raise UsageError(str(e), "see docs/privacy.md for the types") from None


def _open_input(args: argparse.Namespace) -> tuple[TextIO, bool]:
    """(the input as text, whether it is JSONL)."""
    from pocketlm.services.tasks.records import check_readable, detect_format

    if args.input == "-":
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        return stream, args.field is not None
    path = Path(args.input).expanduser()
    check_readable(path)
    if path.is_dir():
        from pocketlm.errors import UsageError

        raise UsageError(f"{path} is a folder", "give a file, or - for standard input")
    jsonl = args.field is not None or detect_format(path) == "jsonl"
    return path.open(encoding="utf-8", errors="replace", newline=""), jsonl


def _records(source: TextIO, name: str, field: str | None) -> Iterator[tuple[Any, dict, str]]:
    """(id, object, text) for each JSON line; a bad line is a UsageError naming it."""
    from pocketlm.errors import UsageError

    field = field or "text"
    position = 0
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        position += 1
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            raise UsageError(
                f"{name} line {number}: not JSON", "give one object per line"
            ) from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise UsageError(
                f"{name} line {number}: no text field {field!r}", "name it with --field"
            )
        own = obj.get("id")
        ok = isinstance(own, str | int) and not isinstance(own, bool)
        yield (own if ok else position), obj, obj[field]


def _write_record(out: TextIO, pseudonymizer, record: tuple, field: str, as_json: bool) -> None:
    record_id, obj, text = record
    if as_json:
        _write_json(out, pseudonymizer, record_id, text)
    else:
        redacted, _ = pseudonymizer.redact(text)
        out.write(json.dumps({**obj, field: redacted}, ensure_ascii=False) + "\n")


def _write_json(out: TextIO, pseudonymizer, record_id: Any, text: str) -> None:
    redacted, replacements = pseudonymizer.redact(text)
    spans = [
        {"entity_type": r.entity_type, "start": r.start, "end": r.end, "placeholder": r.placeholder}
        for r in replacements
    ]
    record = {"id": record_id, "text": redacted, "spans": spans}
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _whole(source: TextIO, name: str) -> str:
    """All of ``source`` (one --json record), or UsageError if it is over the detector's cap."""
    from pocketlm.errors import UsageError
    from pocketlm.services.privacy.detect import MAX_CHARS

    text = source.read(MAX_CHARS + 1)
    if len(text) > MAX_CHARS:
        raise UsageError(
            f"{name} is over {MAX_CHARS // 2**20} Mi characters, too long for one --json record",
            "split it, or give JSONL with one record per line",
        )
    return text


def _blocks(source: TextIO) -> Iterator[str]:
    """``source`` in pieces of about BLOCK_CHARS that end at a line end (memory stays bounded;
    a single line over the detector's cap is cut there)."""
    from pocketlm.services.privacy.detect import MAX_CHARS

    block: list[str] = []
    size = 0
    while line := source.readline(MAX_CHARS):
        block.append(line)
        size += len(line)
        if size >= BLOCK_CHARS:
            yield "".join(block)
            block, size = [], 0
    if block:
        yield "".join(block)
