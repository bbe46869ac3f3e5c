"""pocketlm redact: the real command, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("presidio_analyzer")

TEXT = (
    "Hi, my name is John Smith, mail john.smith@example.com.\n"
    "John Smith: key AKIAIOSFODNN7EXAMPLE\n"
)


_MAIN = "import sys; from pocketlm.cli import main; sys.exit(main())"


def redact(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _MAIN, "redact", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_text_file_is_redacted_consistently(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(TEXT)
    out = redact(str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "Hi, my name is <PERSON_1>, mail <EMAIL_ADDRESS_1>.\n<PERSON_1>: key <API_KEY_1>\n"
    )


def test_json_spans_point_into_the_original(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(TEXT)
    out = redact(str(path), "--json")
    record = json.loads(out.stdout)
    assert record["id"] == 1 and "<EMAIL_ADDRESS_1>" in record["text"]
    originals = {TEXT[s["start"] : s["end"]]: s["placeholder"] for s in record["spans"]}
    assert originals == {
        "John Smith": "<PERSON_1>",
        "john.smith@example.com": "<EMAIL_ADDRESS_1>",
        "AKIAIOSFODNN7EXAMPLE": "<API_KEY_1>",
    }
    assert {s["entity_type"] for s in record["spans"]} == {"PERSON", "EMAIL_ADDRESS", "API_KEY"}


def test_jsonl_field_from_stdin_with_entities():
    lines = [
        json.dumps({"id": "t1", "body": "from 10.0.0.7, mail ann@example.org"}),
        json.dumps({"body": "again ann@example.org"}),
    ]
    out = redact(
        "-", "--field", "body", "--json", "--entities", "EMAIL_ADDRESS", stdin="\n".join(lines)
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in records] == ["t1", 2]
    assert records[0]["text"] == "from 10.0.0.7, mail <EMAIL_ADDRESS_1>"
    assert records[1]["text"] == "again <EMAIL_ADDRESS_1>"


def test_jsonl_without_json_keeps_the_other_fields(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"id": 7, "text": "mail ann@example.org", "lang": "en"}) + "\n")
    out = redact(str(path))
    assert json.loads(out.stdout) == {"id": 7, "text": "mail <EMAIL_ADDRESS_1>", "lang": "en"}


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["{tmp}/missing.txt"], "no such file"),
        ("binary", ["{tmp}/f.bin"], "binary file"),
        ("badjsonl", ["{tmp}/f.jsonl"], "line 2: not JSON"),
        ("text", ["{tmp}/f.txt", "--entities", "EMAIL,PERSON"], "unknown entity type 'EMAIL'"),
        ("nofield", ["{tmp}/f.jsonl", "--field", "body"], "line 1: no text field 'body'"),
    ],
)
def test_errors_are_one_line(tmp_path, setup, args, message):
    if setup == "binary":
        (tmp_path / "f.bin").write_bytes(b"\x7fELF\x00\x00\x01")
    elif setup == "badjsonl":
        (tmp_path / "f.jsonl").write_text('{"text": "ok"}\nnot json\n')
    elif setup == "text":
        (tmp_path / "f.txt").write_text("hello")
    elif setup == "nofield":
        (tmp_path / "f.jsonl").write_text('{"text": "ok"}\n')
    out = redact(*[a.format(tmp=tmp_path) for a in args])
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
