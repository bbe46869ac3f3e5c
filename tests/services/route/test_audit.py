"""The audit log: the chain and its head detect every kind of change, concurrent writers keep
it whole, and nothing that could hold private text gets in."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from pocketlm.services.route import audit
from tests.conftest import REPO


def record(i: int = 0, **extra) -> dict:
    return {
        "request_id": f"req-{i}",
        "tier": "cloud",
        "decision": "router",
        "reason": "router score 0.81 >= threshold 0.60",
        "score": 0.81,
        "replaced": {"EMAIL_ADDRESS": 2, "PERSON": 1},
        "tokens_in": 100 + i,
        "tokens_out": 50,
        "cost": 0.00045,
        "currency": "USD",
        "cost_if_remote": 0.00045,
        "status": "ok",
        "latency_s": 1.25,
        **extra,
    }


@pytest.fixture
def log_path(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    for i in range(5):
        log.append(record(i))
    return log.path


def lines(path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def rewrite(path, new_lines) -> None:
    path.write_text("".join(new_lines))


def test_records_are_chained_and_the_chain_verifies(log_path):
    records = list(audit.read(log_path))
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == audit.GENESIS
    for before, after in zip(records, records[1:]):
        assert after["prev"] == before["hash"]
    for r in records:
        assert r["hash"] == audit.digest(r) and r["time"].endswith("+00:00")
    result = audit.verify(log_path)
    assert result.ok and result.records == 5 and result.head == records[-1]["hash"]
    assert str(result) == "ok: 5 records, chain intact"
    head = json.loads(audit.head_path(log_path).read_text())
    assert head == {"seq": 5, "hash": records[-1]["hash"]}


def test_append_returns_what_it_wrote(tmp_path):
    log = audit.AuditLog(tmp_path / "sub" / "audit.jsonl", fsync=True)
    written = log.append(record(time="2025-01-02T03:04:05+00:00"))
    assert written["time"] == "2025-01-02T03:04:05+00:00"
    assert json.loads(log.path.read_text()) == written
    assert log.path.stat().st_mode & 0o777 == 0o600


def test_an_edited_field_is_found(log_path):
    text = lines(log_path)
    text[2] = text[2].replace('"tokens_in":102', '"tokens_in":2')
    rewrite(log_path, text)
    result = audit.verify(log_path)
    assert not result.ok and result.line == 3 and result.records == 2
    assert "edited" in result.problem


def test_a_removed_middle_line_is_found(log_path):
    text = lines(log_path)
    del text[2]
    rewrite(log_path, text)
    result = audit.verify(log_path)
    assert (result.ok, result.line) == (False, 3)
    assert "holds record 4 where record 3 belongs" in result.problem


def test_a_removed_last_line_is_found(log_path):
    rewrite(log_path, lines(log_path)[:-1])
    result = audit.verify(log_path)
    assert (result.ok, result.line, result.records) == (False, 5, 4)
    assert "lines removed at the end" in result.problem


def test_swapped_lines_are_found(log_path):
    text = lines(log_path)
    text[1], text[2] = text[2], text[1]
    rewrite(log_path, text)
    assert audit.verify(log_path).line == 2


def test_a_line_with_a_forged_seq_and_prev_is_found(log_path):
    # A line moved to line 2 and given the seq and prev that belong there, hash recomputed:
    # the next line no longer follows it.
    text = lines(log_path)
    moved = json.loads(text[3])
    moved.update(seq=2, prev=json.loads(text[0])["hash"])
    moved["hash"] = audit.digest(moved)
    text[1] = audit.canonical(moved) + "\n"
    rewrite(log_path, text)
    result = audit.verify(log_path)
    assert result.line == 3 and "does not follow line 2" in result.problem


def test_a_forged_line_appended_without_the_head_is_found(log_path):
    last = json.loads(lines(log_path)[-1])
    forged = dict(record(9), seq=6, prev=last["hash"], time=last["time"])
    forged["hash"] = audit.digest(forged)  # a valid link: only the head tells
    with open(log_path, "a") as f:
        f.write(audit.canonical(forged) + "\n")
    result = audit.verify(log_path)
    assert (result.ok, result.line) == (False, 6)
    assert "not covered" in result.problem


def test_a_truncated_tail_is_found(log_path):
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-20])
    result = audit.verify(log_path)
    assert (result.line, result.problem.split(":")[0]) == (5, "incomplete")


def test_an_unparsable_line_is_found(log_path):
    text = lines(log_path)
    text.insert(3, "{not json\n")
    rewrite(log_path, text)
    assert (audit.verify(log_path).line, audit.verify(log_path).problem) == (4, "not valid JSON")


def test_a_missing_head_is_found(log_path):
    audit.head_path(log_path).unlink()
    result = audit.verify(log_path)
    assert not result.ok and "head file audit.jsonl.head is missing" in result.problem


def test_a_removed_log_with_its_head_left_is_found(log_path):
    log_path.unlink()
    result = audit.verify(log_path)
    assert (result.ok, result.line) == (False, 1)


def test_no_log_at_all_is_an_error_not_a_traceback(tmp_path):
    with pytest.raises(audit.AuditLogError, match="no audit log at"):
        audit.verify(tmp_path / "none.jsonl")
    with pytest.raises(audit.AuditLogError, match="no audit log at"):
        list(audit.read(tmp_path / "none.jsonl"))


def test_append_refuses_to_continue_a_changed_log(log_path):
    rewrite(log_path, lines(log_path)[:-1])  # would be laundered by the next append
    before = log_path.read_bytes()
    with pytest.raises(audit.AuditLogError, match="does not end where its head file says"):
        audit.AuditLog(log_path).append(record())
    assert log_path.read_bytes() == before


def test_concurrent_threads_keep_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    shared = audit.AuditLog(path)

    def work(n: int) -> None:
        own = audit.AuditLog(path)  # another descriptor, same file
        for i in range(25):
            (shared if i % 2 else own).append(record(n * 100 + i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = audit.verify(path)
    assert result.ok and result.records == 200, result


WRITER = """
import sys, time
from pocketlm.services.route.audit import AuditLog
path, start, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
log = AuditLog(path)
time.sleep(max(0.0, start - time.time()))  # both writers start together
for i in range(150):
    log.append({"request_id": f"{name}-{i}", "tier": "cloud", "tokens_in": i})
"""


def test_concurrent_processes_keep_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    start = str(time.time() + 2)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), start, name], cwd=REPO)
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    result = audit.verify(path)
    assert result.ok and result.records == 300, result
    ids = [r["request_id"] for r in audit.read(path)]
    assert sorted(ids) == sorted(f"{n}-{i}" for n in "ab" for i in range(150))


@pytest.mark.parametrize(
    "change, key",
    [
        ({"prompt": "Dear John Smith"}, "prompt"),
        ({"reason": "escalated: " + "x" * 200}, "reason"),
        ({"replaced": {"john@example.com": 1}}, "replaced"),
        ({"replaced": {"EMAIL_ADDRESS": "john@example.com"}}, "replaced"),
        ({"replaced": ["EMAIL_ADDRESS"]}, "replaced"),
        ({"tier": {"name": "cloud"}}, "tier"),
        ({"tokens_in": True}, "tokens_in"),
        ({"tokens_in": "12"}, "tokens_in"),
        ({"cost": float("nan")}, "cost"),
        ({"hash": "0" * 64}, "hash"),
        ({"seq": 7}, "seq"),
    ],
)
def test_what_could_hold_private_text_is_refused(tmp_path, change, key):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError, match=f"'{key}'"):
        log.append(record(**change))
    assert not log.path.exists() or log.path.read_text() == ""


def test_none_values_and_every_allowed_field_go_in(tmp_path):
    full = record(energy_j=1.5, energy_estimated=True, fallback=False, score=None, status=200)
    assert set(full) | {"time"} == set(audit.FIELDS)
    written = audit.AuditLog(tmp_path / "audit.jsonl").append(full)
    assert written["score"] is None and audit.verify(tmp_path / "audit.jsonl").ok


def test_summary_per_tier_with_the_saving():
    records = [
        record(1, tier="cloud", tokens_in=1000, tokens_out=500, cost=0.3, cost_if_remote=0.3),
        record(2, tier="cloud", tokens_in=2000, tokens_out=0, cost=0.2, cost_if_remote=0.2),
        {
            "tier": "local",
            "tokens_in": 4000,
            "tokens_out": 1000,
            "cost": 0.0,
            "energy_j": 12.5,
            "energy_estimated": True,
            "cost_if_remote": 0.9,
        },
        {
            "tier": "local",
            "tokens_in": 10,
            "tokens_out": 5,
            "energy_j": 0.5,
            "energy_estimated": False,
            "cost_if_remote": 0.1,
        },
    ]
    totals = audit.summary(records)
    cloud, local = totals["cloud"], totals["local"]
    assert cloud["requests"] == 2 and cloud["tokens_in"] == 3000 and cloud["tokens_out"] == 500
    assert cloud["cost"] == pytest.approx(0.5) and cloud["saving"] == pytest.approx(0.0)
    assert cloud["currency"] == "USD" and cloud["energy_j"] == 0
    assert local["requests"] == 2 and local["energy_j"] == pytest.approx(13.0)
    assert local["energy_estimated"] and local["cost"] == 0
    assert local["cost_if_remote"] == pytest.approx(1.0) and local["saving"] == pytest.approx(1.0)
    mixed = audit.summary([record(currency="USD"), record(currency="EUR")])
    assert mixed["cloud"]["currency"] == "mixed"


def test_default_path(monkeypatch, tmp_path, isolated_store):
    assert audit.default_path() == isolated_store / "audit.jsonl"
    monkeypatch.setenv(audit.AUDIT_LOG_ENV, str(tmp_path / "elsewhere.jsonl"))
    assert audit.default_path() == tmp_path / "elsewhere.jsonl"
