"""Input readers: every format, ids, fields, detection, and bounded cost on hostile input."""

from __future__ import annotations

import json
import mailbox
import os
import time
import tracemalloc
from email.message import EmailMessage
from pathlib import Path

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.tasks import records
from pocketlm.services.tasks.records import FORMATS, detect_format, read_records

OVER_CAP = records.MAX_RECORD_BYTES + 1024


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def _jsonl(path: Path, *objects: object) -> Path:
    return _write(path, "".join(json.dumps(o) + "\n" for o in objects))


def _mail(subject: str, body: str = "hello", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.get("sender", "alice@example.com")
    msg["To"] = "bob@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash(subject))}@example.com>"
    msg.set_content(body)
    return msg


# --- JSONL ---------------------------------------------------------------------------


def test_jsonl_ids_are_own_ids_or_positions_and_lines_are_file_lines(tmp_path):
    path = _write(
        tmp_path / "in.jsonl",
        '{"id": "a7", "text": "one"}\n\n{"text": "two"}\n{"id": 42, "text": "three"}\n'
        '{"id": true, "text": "four"}\n{"id": 0, "text": "five"}\n{"id": "", "text": "six"}\n',
    )
    got = list(read_records(path))
    assert [r.id for r in got] == ["a7", 2, 42, 4, 0, 6]  # a bool or "" is no id; 0 is one
    assert [r.text for r in got] == ["one", "two", "three", "four", "five", "six"]
    assert [r.line for r in got] == [1, 3, 4, 5, 6, 7]  # the blank line 2 is skipped, still counted
    assert got[0].fields == {"id": "a7", "text": "one"} and got[0].error is None


def test_jsonl_text_field_defaults_to_text_then_the_only_string(tmp_path):
    path = _jsonl(
        tmp_path / "in.jsonl",
        {"text": "t", "body": "b"},
        {"body": "only string", "n": 3},
        {"a": "x", "b": "y"},
    )
    first, second, third = read_records(path)
    assert (first.text, second.text) == ("t", "only string")
    assert third.error == (
        "line 3: no 'text' field (fields: a, b); name the field that holds the text"
    )
    assert third.text == "" and third.id == 3


def test_jsonl_field_selects_the_text_and_names_the_fields_when_missing(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", {"text": "t", "body": "b"}, {"text": "t2"})
    first, second = read_records(path, field="body")
    assert first.text == "b" and first.error is None
    assert second.error == "line 2: no field 'body' (fields: text)"


def test_jsonl_non_string_text_is_written_as_json(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", {"text": {"k": [1, "é"]}}, {"text": 7})
    assert [r.text for r in read_records(path)] == ['{"k": [1, "é"]}', "7"]


def test_jsonl_bad_lines_are_error_records_and_reading_goes_on(tmp_path):
    path = _write(
        tmp_path / "in.jsonl",
        '{"text": "ok"}\n{"text": broken\n[1, 2]\n' + "[" * 100_000 + '\n{"text": "after"}\n',
    )
    got = list(read_records(path))
    assert [r.id for r in got] == [1, 2, 3, 4, 5]
    assert got[1].error.startswith("line 2: not a JSON object: Expecting value")
    assert got[2].error == "line 3: not a JSON object: got a list"
    assert got[3].error.startswith("line 4: not a JSON object: ")  # nested too deep
    assert got[4].text == "after" and got[4].error is None


def test_jsonl_lone_surrogates_are_replaced(tmp_path):
    path = _write(tmp_path / "in.jsonl", '{"text": "a\\ud800b"}\n')
    [record] = read_records(path)
    assert record.text == "a?b"
    record.text.encode()  # would raise with the surrogate left in


def test_jsonl_with_email_parses_the_raw_field(tmp_path):
    raw = _mail("Invoice", "please pay").as_string()
    path = _jsonl(tmp_path / "in.jsonl", {"id": "m1", "raw": raw, "folder": "inbox"})
    [record] = read_records(path, email=True)
    assert record.id == "m1"
    assert record.text.startswith("From: alice@example.com\nTo: bob@example.com\nSubject: Invoice")
    assert record.text.endswith("\n\nplease pay")
    assert record.fields["subject"] == "Invoice" and record.fields["folder"] == "inbox"
    assert "raw" not in record.fields  # the message is in text, not kept twice


# --- CSV -----------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiter_is_sniffed(tmp_path, delimiter):
    rows = [["id", "text", "label"], ["r1", "a, b; c | d", "x"], ["r2", "two", "y"]]
    text = "".join(
        delimiter.join(f'"{v}"' if delimiter in v else v for v in r) + "\n" for r in rows
    )
    got = list(read_records(_write(tmp_path / "in.csv", text)))
    assert [(r.id, r.text) for r in got] == [("r1", "a, b; c | d"), ("r2", "two")]
    assert got[0].fields == {"id": "r1", "text": "a, b; c | d", "label": "x"}


def test_csv_quoted_fields_span_lines_and_keep_blank_lines(tmp_path):
    text = 'text,n\n"para one\n\npara ""two""",1\n\nlast,2\n'
    got = list(read_records(_write(tmp_path / "in.csv", text)))
    assert [r.text for r in got] == ['para one\n\npara "two"', "last"]
    assert [r.id for r in got] == [1, 2]  # no id column: positions
    assert [r.line for r in got] == [2, 6]


def test_csv_quote_inside_an_unquoted_field_is_text(tmp_path):
    text = 'text,n\n5" screen,1\nnext,2\n"quoted, ""really""",3\n'
    got = list(read_records(_write(tmp_path / "in.csv", text)))
    assert [r.text for r in got] == ['5" screen', "next", 'quoted, "really"']
    assert [r.line for r in got] == [2, 3, 4]


def test_csv_field_chooses_the_column(tmp_path):
    path = _write(tmp_path / "in.csv", "id,subject,body\n7,hi,the body\n")
    [record] = read_records(path, field="body")
    assert (record.id, record.text) == ("7", "the body")


def test_csv_without_the_column_names_the_columns(tmp_path):
    path = _write(tmp_path / "in.csv", "subject,body\nhi,there\n")
    with pytest.raises(UsageError) as e:
        list(read_records(path))
    assert str(e.value) == (
        f"{path} has no 'text' column (columns: subject, body); choose one with field=..."
    )
    with pytest.raises(UsageError, match="no 'summary' column"):
        list(read_records(path, field="summary"))


def test_column_names_in_a_message_are_one_line_and_bounded(tmp_path):
    header = '"multi\nline",' + ",".join(f"c{i}" for i in range(100))
    with pytest.raises(UsageError) as e:
        list(read_records(_write(tmp_path / "in.csv", header + "\n")))
    assert "\n" not in str(e.value)
    assert "(columns: multi line, c0, c1," in str(e.value) and "c18, ...)" in str(e.value)


def test_csv_row_with_the_wrong_number_of_values_is_an_error_record(tmp_path):
    path = _write(tmp_path / "in.csv", "text,label\na,b\nx,y,z\nc,d\n")
    got = list(read_records(path))
    assert got[1].error == "line 3: 3 values for 2 columns"
    assert [r.text for r in got] == ["a", "", "c"]


def test_csv_header_over_the_cap_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 100)
    path = _write(tmp_path / "in.csv", "text," + "c" * 200 + "\nrow,x\n")
    with pytest.raises(UsageError, match="header row is larger"):
        list(read_records(path))


def test_csv_row_that_csv_cannot_read_is_an_error_record(tmp_path):
    path = _write(tmp_path / "in.csv", "text\nok\nstray\rreturn\nafter\n")
    got = list(read_records(path))
    assert [(r.text, r.error) for r in got] == [
        ("ok", None),
        ("", "line 3: not a CSV row"),
        ("after", None),
    ]


def test_tsv_is_tab_separated(tmp_path):
    path = _write(tmp_path / "in.tsv", "text\tother\na,b\tc\n")
    [record] = read_records(path)
    assert record.text == "a,b"


# --- text, syslog ----------------------------------------------------------------------


def test_text_is_one_record_per_non_blank_line(tmp_path):
    path = _write(tmp_path / "notes.txt", "\ufefffirst\r\n\n   \nsecond line\nthird")
    got = list(read_records(path))
    assert [(r.id, r.text, r.line) for r in got] == [
        (1, "first", 1),
        (2, "second line", 4),
        (3, "third", 5),
    ]


def test_bad_utf8_is_replaced_not_fatal(tmp_path):
    path = _write(tmp_path / "in.txt", b"caf\xe9 ok\n")
    assert [r.text for r in read_records(path)] == ["caf\ufffd ok"]


def test_syslog_lines_are_parsed_in_both_forms_and_none_is_dropped(tmp_path):
    lines = [
        "May  1 12:00:00 web1 sshd[4242]: Failed password for root from 10.0.0.1 port 22",
        "2024-05-01T12:00:00.123+00:00 web2 CRON[17]: (root) CMD (backup)",
        "May 10 01:02:03 web1 kernel: eth0 link up",
        "--- not a log line ---",
    ]
    got = list(read_records(_write(tmp_path / "auth.log", "\n".join(lines) + "\n")))
    assert [r.text for r in got] == lines
    assert got[0].fields == {
        "timestamp": "May  1 12:00:00",
        "host": "web1",
        "program": "sshd",
        "pid": 4242,
        "message": "Failed password for root from 10.0.0.1 port 22",
    }
    assert got[1].fields["timestamp"] == "2024-05-01T12:00:00.123+00:00"
    assert (got[1].fields["host"], got[1].fields["program"], got[1].fields["pid"]) == (
        "web2",
        "CRON",
        17,
    )
    assert got[2].fields["pid"] is None and got[2].fields["message"] == "eth0 link up"
    assert got[3].fields == {} and got[3].error is None and got[3].id == 4


def test_rfc5424_lines_are_parsed():
    line = "<34>1 2024-05-01T12:00:00Z host su - ID47 [ex@1 a=\"x\\]\"] 'su root' failed"
    assert records.parse_syslog_line(line) == {
        "timestamp": "2024-05-01T12:00:00Z",
        "host": "host",
        "program": "su",
        "pid": None,
        "message": "'su root' failed",
    }


# --- folders, mail ---------------------------------------------------------------------


def test_a_folder_is_one_record_per_file_sorted_recursive_hidden_skipped(tmp_path):
    root = tmp_path / "docs"
    _write(root / "b.txt", "bee")
    _write(root / "a" / "z.md", "zed")
    _write(root / "a" / "c.txt", "see")
    _write(root / ".hidden", "no")
    _write(root / ".git" / "config", "no")
    _write(root / "blob.bin", b"\x00\x01binary")
    _write(root / "msg.eml", _mail("From a folder").as_bytes())
    got = list(read_records(root))
    assert [r.id for r in got] == ["a/c.txt", "a/z.md", "b.txt", "blob.bin", "msg.eml"]
    assert [r.text for r in got[:3]] == ["see", "zed", "bee"]
    assert got[0].fields == {"path": "a/c.txt"} and got[0].line is None
    assert got[3].error == "binary file, not text"
    assert got[4].fields["subject"] == "From a folder" and got[4].fields["path"] == "msg.eml"


def test_a_folder_file_over_the_cap_is_an_error_record(tmp_path):
    root = tmp_path / "docs"
    _write(root / "big.txt", b"x" * OVER_CAP)
    _write(root / "small.txt", "fine")
    big, small = read_records(root)
    assert big.error == "file is larger than 8 MiB" and big.text == ""
    assert small.text == "fine"


def test_a_folder_of_mail_with_email_parses_every_file(tmp_path):
    _write(tmp_path / "m" / "1", _mail("one").as_bytes())
    [record] = read_records(tmp_path / "m", email=True)
    assert record.fields["subject"] == "one" and "\nSubject: one\n" in record.text


def test_mbox_messages_are_read_one_by_one(tmp_path):
    path = tmp_path / "inbox.mbox"
    box = mailbox.mbox(path)
    box.add(_mail("first", "From the start of a line\nbye"))
    box.add(_mail("second", sender="=?utf-8?q?Zo=C3=AB?= <zoe@example.com>"))
    box.flush()
    box.close()
    got = list(read_records(path))
    assert [r.id for r in got] == [1, 2]
    assert [r.fields["subject"] for r in got] == ["first", "second"]
    assert got[1].fields["from"] == "Zoë <zoe@example.com>"
    assert ">From the start of a line\nbye" in got[0].text  # body's From line stays quoted
    assert got[0].line == 1 and got[1].line > 1
    assert path.read_text().splitlines()[got[1].line - 1].startswith("From ")


def test_maildir_messages_are_in_key_order_with_keys_as_ids(tmp_path):
    box = mailbox.Maildir(tmp_path / "Mail")
    keys = [box.add(_mail(f"message {i}")) for i in range(3)]
    got = list(read_records(tmp_path / "Mail"))
    assert [r.id for r in got] == sorted(keys)
    by_key = {r.id: r.fields["subject"] for r in got}
    assert by_key == {k: f"message {i}" for i, k in enumerate(keys)}


def test_an_eml_file_is_one_message_with_its_fields(tmp_path):
    msg = _mail("Your parcel")
    msg["Reply-To"] = "refund@evil.test"
    msg.add_attachment(b"MZ", maintype="application", subtype="octet-stream", filename="label.exe")
    [record] = read_records(_write(tmp_path / "parcel.eml", msg.as_bytes()))
    assert record.id == 1
    assert set(record.fields) == {
        "subject",
        "from",
        "to",
        "date",
        "message_id",
        "reply_to",
        "attachments",
    }
    assert record.fields["reply_to"] == "refund@evil.test"
    assert record.fields["attachments"] == ["label.exe"]
    assert "Reply-To: refund@evil.test" in record.text


def test_a_message_the_email_package_cannot_parse_is_an_error_record(tmp_path):
    parts = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(3000)
    )
    box = tmp_path / "in.mbox"
    box.write_bytes(
        b"From x Wed May  1 12:00:00 2024\nSubject: deep\n" + parts + b"\n"
        b"From x Wed May  1 12:00:00 2024\nSubject: fine\n\nok\n"
    )
    deep, fine = read_records(box)
    assert deep.error.startswith("line 1: message could not be parsed: RecursionError")
    assert fine.fields["subject"] == "fine" and fine.error is None


def test_a_text_file_read_as_email_is_one_message(tmp_path):
    path = _write(tmp_path / "saved.txt", _mail("saved").as_bytes())
    [record] = read_records(path, email=True)
    assert record.fields["subject"] == "saved"


# --- detection, options, errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.jsonl", "", "jsonl"),
        ("a.ndjson", "", "jsonl"),
        ("a.csv", "", "csv"),
        ("a.tsv", "", "csv"),
        ("a.eml", "", "eml"),
        ("a.mbox", "", "mbox"),
        ("a.log", "", "syslog"),
        ("data", '\n{"text": "x"}\n', "jsonl"),
        ("data", "From alice@example.com Wed May  1 12:00:00 2024\nSubject: x\n", "mbox"),
        ("data", "From here on, text.\n", "text"),
        ("data", "May  1 12:00:00 host sshd[1]: hi\n", "syslog"),
        ("data", "2024-05-01T12:00:00+00:00 host app: hi\n", "syslog"),
        ("data", "just some notes\n", "text"),
        ("data", "[1, 2]\n", "text"),
    ],
)
def test_detect_format_by_extension_then_content(tmp_path, name, content, expected):
    assert detect_format(_write(tmp_path / name, content)) == expected


def test_detect_format_of_a_long_first_json_line(tmp_path):
    path = _jsonl(tmp_path / "data", {"text": "x" * (2 * records.SNIFF_BYTES)})
    assert detect_format(path) == "jsonl"


def test_detect_format_of_folders(tmp_path):
    mailbox.Maildir(tmp_path / "Mail")
    (tmp_path / "plain").mkdir()
    assert detect_format(tmp_path / "Mail") == "maildir"
    assert detect_format(tmp_path / "plain") == "dir"


def test_fmt_forces_the_format(tmp_path):
    path = _write(tmp_path / "a.jsonl", '{"text": "x"}\n')
    [record] = read_records(path, fmt="text")
    assert record.text == '{"text": "x"}'


def test_an_unknown_format_names_the_choices(tmp_path):
    with pytest.raises(UsageError) as e:
        read_records(tmp_path, fmt="xml")
    assert str(e.value) == f"unknown input format 'xml'; choose one of: auto, {', '.join(FORMATS)}"


def test_field_is_refused_where_it_means_nothing(tmp_path):
    with pytest.raises(UsageError, match="applies to JSONL and CSV input, not text"):
        read_records(_write(tmp_path / "a.txt", "x\n"), field="body")


def test_a_missing_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="^no such file: .*nope.jsonl; check the path$"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(UsageError, match="no such file"):
        detect_format(tmp_path / "nope.jsonl")


def test_a_binary_file_is_a_usage_error_before_reading(tmp_path):
    path = _write(tmp_path / "model.gguf", b"GGUF\x03\x00\x00\x00" + b"x" * 100)
    with pytest.raises(UsageError) as e:
        read_records(path)  # raised at the call, not on the first record
    assert str(e.value) == (
        f"{path} is a binary file, not text; give a text, JSONL, CSV, mail or log file"
    )


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
@pytest.mark.parametrize("name", ["a.jsonl", "a.txt", "a.csv", "a.log", "a.mbox", "a.eml"])
def test_an_input_without_records_is_a_usage_error(tmp_path, name, content):
    records_of = read_records(_write(tmp_path / name, content))
    with pytest.raises(UsageError, match="has no records; give an input"):
        list(records_of)


def test_an_empty_folder_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="has no records"):
        list(read_records(tmp_path / "empty"))


def test_an_unreadable_folder_is_a_usage_error(tmp_path, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refuse)  # as root, chmod would not stop a read
    with pytest.raises(UsageError, match="^cannot read folder .*: Permission denied"):
        read_records(tmp_path)


def test_an_unreadable_subfolder_is_an_error_record(tmp_path, monkeypatch):
    _write(tmp_path / "docs" / "a.txt", "a")
    _write(tmp_path / "docs" / "locked" / "b.txt", "b")
    _write(tmp_path / "docs" / "z.txt", "z")
    iterdir = Path.iterdir

    def refuse_locked(self):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refuse_locked)
    got = list(read_records(tmp_path / "docs"))
    assert [(r.id, r.error) for r in got] == [
        ("a.txt", None),
        ("locked", "cannot read: Permission denied"),
        ("z.txt", None),
    ]


def test_a_format_must_fit_a_file_or_a_folder(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match="is a folder, not jsonl input"):
        read_records(tmp_path / "plain", fmt="jsonl")
    with pytest.raises(UsageError, match="is a file, not dir input"):
        read_records(_write(tmp_path / "a.txt", "x\n"), fmt="dir")
    with pytest.raises(UsageError, match="is not a Maildir"):
        read_records(tmp_path / "plain", fmt="maildir")


# --- bounded cost ------------------------------------------------------------------------


def test_an_oversize_line_is_an_error_record_and_the_next_is_read(tmp_path):
    path = tmp_path / "in.jsonl"
    with path.open("wb") as f:
        f.write(b'{"text": "before"}\n{"text": "' + b"x" * OVER_CAP + b'"}\n{"text": "after"}\n')
    got = list(read_records(path))
    assert [r.id for r in got] == [1, 2, 3]
    assert got[1].error == "line 2: record is larger than 8 MiB"
    assert got[2].text == "after" and got[2].line == 3


def test_an_oversize_line_is_never_held_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 64 * 1024)
    path = _write(tmp_path / "in.txt", b"a\n" + b"x" * 30_000_000 + b"\nb\n")
    tracemalloc.start()
    try:
        got = list(read_records(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.text for r in got] == ["a", "", "b"]
    assert peak < 4 * 2**20  # the line is 30 MB


@pytest.mark.parametrize("fmt", ["text", "csv", "mbox"])
def test_an_oversize_record_is_skipped_to_its_end(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 100)
    long = "y" * 60
    content = {
        "text": f"a\n{long * 2}\nb\n",
        "csv": f'text\na\n"{long}\n{long}"\nb\n',  # over the cap across lines
        "mbox": f"From x Wed May  1 12:00:00 2024\n\na\nFrom x Wed May  1 12:00:00 2024\n\n"
        f"{long}\n{long}\nFrom x Wed May  1 12:00:00 2024\n\nb\n",
    }[fmt]
    got = list(read_records(_write(tmp_path / "in", content), fmt=fmt))
    assert len(got) == 3
    assert got[1].error.endswith("record is larger than 0 MiB") and got[1].text == ""
    assert got[0].text.endswith("a") and got[2].text.endswith("b")


@pytest.mark.parametrize("fmt", ["jsonl", "text", "mbox"])
def test_reading_is_lazy(tmp_path, fmt):
    path = tmp_path / f"big.{fmt}"
    line = {
        "jsonl": b'{"text": "' + b"z" * 1000 + b'"}\n',
        "text": b"z" * 1000 + b"\n",
        "mbox": b"From x Wed May  1 12:00:00 2024\nSubject: s\n\n" + b"z" * 1000 + b"\n",
    }[fmt]
    path.write_bytes(line * 40_000)  # ~40 MB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        first = next(read_records(path))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "z" * 1000 in first.text
    assert peak < 5 * 2**20  # a whole-file read would hold ~40 MB
    assert elapsed < 0.5


def test_memory_stays_bounded_over_a_whole_file(tmp_path):
    path = tmp_path / "many.txt"
    path.write_bytes((b"w" * 500 + b"\n") * 20_000)
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_records(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 2 * 2**20  # the file is 10 MB
