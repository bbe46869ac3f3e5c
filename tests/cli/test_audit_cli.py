"""`pocketlm audit`: list, --summary, --verify and --json, as a user runs them."""

from __future__ import annotations

import json

import pytest

from pocketlm.services.route import audit
from tests.conftest import assert_clean_error, run_cli


@pytest.fixture
def log_path(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    log.append(
        {
            "tier": "cloud",
            "reason": "router score 0.91",
            "replaced": {"PERSON": 1, "EMAIL_ADDRESS": 2},
            "tokens_in": 120,
            "tokens_out": 30,
            "cost": 0.000036,
            "currency": "USD",
            "cost_if_remote": 0.000036,
        }
    )
    log.append({"tier": "cloud", "tokens_in": 80, "tokens_out": 20, "cost": 0.000024})
    log.append(
        {
            "tier": "local",
            "reason": "short prompt",
            "tokens_in": 50,
            "tokens_out": 10,
            "energy_j": 4000.0,
            "energy_estimated": True,
            "cost_if_remote": 0.00001,
        }
    )
    return log.path


def test_list(log_path):
    proc = run_cli("audit", "--file", str(log_path))
    assert proc.returncode == 0, proc.stderr_text
    header, *rows = proc.stdout_text.splitlines()
    assert header.split() == ["TIME", "TIER", "REASON", "REPLACED", "TOKENS", "IN/OUT", "COST"]
    assert len(rows) == 3
    assert "EMAIL_ADDRESS=2 PERSON=1" in rows[0] and "120/30" in rows[0]
    assert "0.000036 USD" in rows[0] and "router score 0.91" in rows[0]
    assert rows[2].split()[2] == "local"


def test_list_json(log_path):
    proc = run_cli("audit", "--file", str(log_path), "--json")
    records = json.loads(proc.stdout_text)
    assert [r["seq"] for r in records] == [1, 2, 3] and records[0]["replaced"]["PERSON"] == 1


def test_summary(log_path):
    proc = run_cli("audit", "--file", str(log_path), "--summary")
    assert proc.returncode == 0, proc.stderr_text
    header, cloud, local, total = proc.stdout_text.splitlines()
    assert header.split()[:4] == ["TIER", "REQUESTS", "TOKENS", "IN"]
    assert cloud.split()[:4] == ["cloud", "2", "200", "50"] and "0.000060 USD" in cloud
    assert "~1.11 Wh (estimate)" in local
    assert total.split()[:4] == ["total", "3", "250", "60"]
    data = json.loads(run_cli("audit", "--file", str(log_path), "--summary", "--json").stdout_text)
    assert data["local"]["saving"] == pytest.approx(0.00001)
    assert data["cloud"]["requests"] == 2


def test_verify(log_path):
    proc = run_cli("audit", "--file", str(log_path), "--verify")
    assert proc.returncode == 0, proc.stderr_text
    assert proc.stdout_text.startswith("ok: 3 records, chain intact")
    lines = log_path.read_text().splitlines(keepends=True)
    log_path.write_text(lines[0] + lines[1].replace('"tokens_in":80', '"tokens_in":8') + lines[2])
    proc = run_cli("audit", "--file", str(log_path), "--verify")
    assert_clean_error(proc, "line 2", "edited", code=1)
    proc = run_cli("audit", "--file", str(log_path), "--verify", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout_text)["line"] == 2


def test_the_default_log_and_its_override(log_path, isolated_store):
    proc = run_cli("audit")
    assert proc.returncode == 0
    assert proc.stdout_text.strip() == (
        f"no audit log at {isolated_store / 'audit.jsonl'}: "
        "nothing has been sent to a remote tier yet"
    )
    proc = run_cli("audit", "--verify", env={audit.AUDIT_LOG_ENV: str(log_path)})
    assert proc.returncode == 0 and proc.stdout_text.startswith("ok: 3 records")


def test_bad_input_is_one_line(tmp_path, log_path):
    assert_clean_error(run_cli("audit", "--verify", "--file", str(tmp_path / "x")), "no audit log")
    assert_clean_error(run_cli("audit", "--summary", "--verify"), "not allowed", code=2)
    with open(log_path, "a") as f:
        f.write("{torn")
    assert_clean_error(run_cli("audit", "--file", str(log_path)), "line 4 is not valid JSON")
