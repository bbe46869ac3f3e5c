"""`pocketlm task` as a user runs it: real processes, the tiny real model, real files."""

from __future__ import annotations

import json
import mailbox
import os
import signal
import subprocess
import sys
import time
from email.message import EmailMessage

import pytest

from pocketlm.services.tasks import authgen, loggen
from tests.conftest import REPO, assert_clean_error, run_cli

TINY = ("--threads", "1", "--ctx", "512")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def results(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def reviews(tmp_path):
    rows = [{"id": "first", "text": "great product"}] + [
        {"text": f"review number {i}"} for i in range(2, 7)
    ]
    return write_jsonl(tmp_path / "reviews.jsonl", rows)


def test_classify_writes_one_result_per_record_in_order(tiny_gguf, reviews, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = run_cli(
        "task", "classify", str(reviews), "--labels", "good,bad", "--model", str(tiny_gguf),
        "--out", str(out), *TINY,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr_text
    rows = results(out)
    assert [r["id"] for r in rows] == ["first", 2, 3, 4, 5, 6]
    assert all(r["label"] in ("good", "bad") and set(r["probs"]) == {"good", "bad"} for r in rows)
    assert "6 records in" in proc.stderr_text and "label: " in proc.stderr_text


def test_csv_results_and_a_text_input_with_one_record_per_line(tiny_gguf, tmp_path):
    src = tmp_path / "lines.txt"
    src.write_text("alpha\n\nbeta\ngamma\n")
    out = tmp_path / "out.csv"
    proc = run_cli(
        "task", "classify", str(src), "--labels", "x,y", "--model", str(tiny_gguf),
        "--out", str(out), *TINY,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr_text
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label,probs,truncated,error"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3"]


def test_an_interrupted_run_resumes_where_it_stopped(tiny_gguf, tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document {i}"} for i in range(30)])
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable, "-m", "pocketlm", "task", "summarize", str(src), "--model",
        str(tiny_gguf), "--out", str(out), "--max-tokens", "48", "--parallel", "2", *TINY,
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    done = results(out)  # every line whole
    assert 3 <= len(done) < 30
    assert [r["id"] for r in done] == list(range(1, len(done) + 1))
    again = run_cli(*args[3:], "--resume", timeout=300)
    assert again.returncode == 0, again.stderr_text
    rows = results(out)
    assert [r["id"] for r in rows] == list(range(1, 31))
    assert rows[: len(done)] == done
    assert f"{len(done)} already done" in again.stderr_text


def test_retry_failed_does_again_the_records_that_failed(tiny_gguf, reviews, tmp_path):
    out = tmp_path / "out.jsonl"
    args = ["task", "classify", str(reviews), "--labels", "pos,neg", "--model", str(tiny_gguf),
            "--out", str(out), *TINY]  # fmt: skip
    assert run_cli(*args).returncode == 0
    first = results(out)
    failed = [{"id": r["id"], "error": "the teacher timed out"} for r in first]
    rows = [first[0], failed[1], first[2], failed[3], *first[4:]]  # two records failed
    write_jsonl(out, rows)
    assert_clean_error(run_cli(*args, "--retry-failed"), "--retry-failed goes with --resume")
    again = run_cli(*args, "--resume", "--retry-failed")
    assert again.returncode == 0, again.stderr_text
    assert "4 already done" in again.stderr_text
    redone = results(out)
    assert [r["id"] for r in redone] == [r["id"] for r in first]  # in their places
    for got, want in zip(redone, first, strict=True):  # done again in another batch
        assert got["label"] == want["label"] and got["probs"] == pytest.approx(want["probs"], 1e-3)
    again = run_cli(*args, "--resume", "--retry-failed")  # nothing failed: nothing to do
    assert again.returncode == 0 and "6 already done" in again.stderr_text
    assert results(out) == redone


def test_emails_from_an_mbox_with_a_phishing_link(tiny_gguf, tmp_path):
    box = mailbox.mbox(tmp_path / "inbox.mbox")
    for subject, html in [
        ("Lunch?", None),
        ("Account locked", '<p>Log in at <a href="http://198.51.100.9/x">www.bank.example</a></p>'),
    ]:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@example.com", "me@example.org", subject
        if html:
            msg.set_content(html, subtype="html")
        else:
            msg.set_content("Shall we have lunch on Friday?")
        box.add(msg)
    box.flush()
    out = tmp_path / "triage.jsonl"
    proc = run_cli(
        "task", "emails", str(tmp_path / "inbox.mbox"), "--model", str(tiny_gguf),
        "--out", str(out), *TINY, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr_text
    first, second = results(out)
    assert first["subject"] == "Lunch?" and first["category"] in (
        "work personal finance shopping travel newsletter notification support".split()
    )
    assert first["priority"] in ("high", "normal", "low")
    assert isinstance(first["needs_reply"], bool) and isinstance(first["summary"], str)
    assert second["spam"] is True  # a link to a bare IP address settles it, whatever the model
    assert "bare IP address" in second["reason"]


def test_logs_without_the_model(tmp_path):
    log = loggen.write(tmp_path / "app.log", 600, seed=3)
    out, report = tmp_path / "parsed.jsonl", tmp_path / "report.json"
    proc = run_cli(
        "task", "logs", str(log), "--no-model", "--out", str(out), "--report", str(report)
    )
    assert proc.returncode == 0, proc.stderr_text
    rows = results(out)
    assert [r["line"] for r in rows] == list(range(1, 601))
    assert all("template" in r and isinstance(r["params"], list) for r in rows)
    rep = json.loads(report.read_text())
    assert rep["lines"] == 600 and rep["model_calls"] == 0
    assert sum(t["count"] for t in rep["templates"]) == 600
    assert "templates over 600 lines" in proc.stderr_text


def test_security_rules_find_the_known_attack(tmp_path):
    log = tmp_path / "auth.log"
    expected = authgen.write(log, seed=2)
    out = tmp_path / "events.jsonl"
    proc = run_cli("task", "security", str(log), "--no-model", "--out", str(out))
    assert proc.returncode == 0, proc.stderr_text
    events = results(out)
    attack = next(e for e in expected if e["type"] == "brute_force")
    found = [e for e in events if e["type"] == "brute_force"]
    assert [(e["source_ip"], e["severity"]) for e in found] == [(attack["source_ip"], "high")]
    assert any(e["type"] == "success_after_failures" for e in events)
    assert "incident summary:" in proc.stderr_text


@pytest.mark.parametrize(
    "setup, args, needles",
    [
        (lambda p: p.write_bytes(b"\x00\x01binary"), ["--labels", "a,b"], ["binary file"]),
        (lambda p: p.write_text(""), ["--labels", "a,b"], ["has no records"]),
        (lambda p: None, ["--labels", "a,b"], ["no such file"]),
        (lambda p: p.write_text('{"text": "x"}\n'), ["--labels", "a"], ["at least 2 labels"]),
    ],
)
def test_bad_inputs_are_one_line_errors(tiny_gguf, tmp_path, setup, args, needles):
    path = tmp_path / "in.jsonl"
    setup(path)
    proc = run_cli("task", "classify", str(path), *args, "--model", str(tiny_gguf), *TINY)
    assert_clean_error(proc, *needles)


def test_a_bad_schema_fails_before_the_model_loads(tiny_gguf, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "objekt"}')
    proc = run_cli("task", "extract", str(src), "--schema", str(schema), "--model", str(tiny_gguf))
    assert_clean_error(proc, "is not a valid JSON Schema")
    missing = tmp_path / "no-such-model.gguf"  # read before the model: the schema is named
    proc = run_cli("task", "extract", str(src), "--schema", str(schema), "--model", str(missing))
    assert_clean_error(proc, "is not a valid JSON Schema")


def test_results_are_never_overwritten_by_accident(tiny_gguf, reviews, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "label": "good"}\n')
    proc = run_cli("task", "classify", str(reviews), "--labels", "a,b", "--out", str(out))
    assert_clean_error(proc, "already holds results", "--resume")
    assert out.read_text() == '{"id": 1, "label": "good"}\n'
    proc = run_cli("task", "classify", str(reviews), "--labels", "a,b", "--resume")
    assert_clean_error(proc, "--resume needs --out")


def test_without_ray_nothing_imports_it(tiny_gguf, reviews):
    code = (
        "import sys; from pocketlm.cli import main; "
        f"main(['task', 'classify', {str(reviews)!r}, '--labels', 'a,b', '--model', "
        f"{str(tiny_gguf)!r}, '--threads', '1']); print('ray' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=os.environ
    )
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stderr
