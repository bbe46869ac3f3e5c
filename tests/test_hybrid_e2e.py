"""Hybrid routing end to end: a real `pocketlm serve --tiers` in front of a second real
`pocketlm serve` as the remote tier, on loopback, driven with the real openai and ollama
clients. A recording proxy between the two keeps every byte the remote side received: the
tests assert that no private value is in it, and that the user's answer has them back."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import REPO, pulled, shared_store_root
from tests.server.conftest import free_port, serve

PRIVATE = {
    "email": "maria.gonzalez@example.org",
    "card": "4111 1111 1111 1111",
    "phone": "+1 415 555 0199",
    "iban": "DE89 3704 0044 0532 0130 00",
    "key": "AKIAIOSFODNN7EXAMPLE",
}
PROMPT = (
    f"Please write to Maria Gonzalez at {PRIVATE['email']} (phone {PRIVATE['phone']}) that "
    f"her card {PRIVATE['card']} and account {PRIVATE['iban']} are fine; our key is "
    f"{PRIVATE['key']}."
)


class Recorder:
    """A loopback TCP proxy that keeps every byte sent through it (what the remote got)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.received = bytearray()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src, dst, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self.lock:
                        self.received += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def text(self) -> str:
        with self.lock:
            return self.received.decode("utf-8", "replace")

    def close(self) -> None:
        self.sock.close()


def tiers_file(tmp_path, local: str, remote_url: str, remote_model: str, **extra) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    lines += ["[[tier]]", 'name = "local"', f'model = "{local}"']
    lines += ["[[tier]]", 'name = "cloud"', f'url = "{remote_url}"', f'model = "{remote_model}"']
    lines += ["price_in = 1.0", "price_out = 2.0", "timeout_s = 20", "retries = 1"]
    path = tmp_path / "tiers.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def import_model(path, name: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pocketlm", "import", str(path), "--name", name],
        check=True,
        capture_output=True,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def remote_tiny(tiny_gguf):
    """The remote tier: a second server, behind the recording proxy."""
    with serve("--preload", str(tiny_gguf), "--parallel", "2", "--ctx", "512") as url:
        recorder = Recorder(int(url.rsplit(":", 1)[1]))
        yield recorder
        recorder.close()


@pytest.fixture
def hybrid_tiny(tmp_path, tiny_gguf, remote_tiny, monkeypatch):
    import_model(tiny_gguf, "tiny")
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("POCKETLM_AUDIT_LOG", str(audit))
    remote = f"http://127.0.0.1:{remote_tiny.port}/v1"
    path = tiers_file(tmp_path, "tiny", remote, "tiny", cascade_threshold=-0.01)
    with serve("--tiers", path, "--ctx", "512") as url:
        yield url, remote_tiny, audit


def test_a_remote_tier_gets_pseudonyms_and_the_audit_log_gets_no_values(hybrid_tiny):
    url, remote, audit = hybrid_tiny
    before = len(remote.received)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    raw = client.chat.completions.with_raw_response.create(
        model="cloud", messages=[{"role": "user", "content": PROMPT}], max_tokens=8
    )
    answer = raw.parse()
    assert raw.headers["x-pocketlm-tier"] == "cloud"
    sent = remote.text()[before:]
    assert "/v1/chat/completions" in sent and "<EMAIL_ADDRESS_1>" in sent
    for value in [*PRIVATE.values(), "Maria Gonzalez"]:
        assert value not in sent, f"{value} reached the remote tier"
    route = answer.model_extra["route"]
    assert route["tier"] == "cloud" and route["escalated"] is True
    assert route["replaced"]["EMAIL_ADDRESS"] == 1 and route["replaced"]["CREDIT_CARD"] == 1
    assert route["cost"] > 0
    log = audit.read_text()
    assert '"tier": "cloud"' in log or '"tier":"cloud"' in log
    for value in [*PRIVATE.values(), "Maria", "Gonzalez"]:
        assert value not in log
    check = subprocess.run(
        [sys.executable, "-m", "pocketlm", "audit", "--verify", "--file", str(audit)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_auto_without_a_router_answers_locally_first_and_escalates_when_unsure(hybrid_tiny):
    url, remote, _ = hybrid_tiny
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    before = len(remote.received)
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=8,
        stream=True,
    )
    chunks = list(stream)
    route = chunks[-1].model_extra["route"]
    # the random tiny model is never sure (mean logprob far below -0.01): escalated
    assert route["tier"] == "cloud" and "cascade" in route["reason"], route
    assert route["confidence"] < -0.01
    assert len(remote.received) > before


def test_a_privacy_header_blocks_and_a_request_cannot_loosen_it(hybrid_tiny):
    url, remote, _ = hybrid_tiny
    before = len(remote.received)
    body = {"model": "cloud", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-pocketlm-privacy": "block"})
    assert r.status_code == 403 and "block" in r.json()["error"]["message"]
    auto = dict(body, model="auto")
    r = httpx.post(f"{url}/v1/chat/completions", json=auto, headers={"x-pocketlm-privacy": "block"})
    assert r.status_code == 200 and r.json()["route"]["tier"] == "local"
    assert "privacy" in r.json()["route"]["reason"]
    assert len(remote.received) == before  # nothing was sent


def test_ollama_clients_route_too_and_metrics_count_per_tier(hybrid_tiny):
    import ollama

    url, _, _ = hybrid_tiny
    client = ollama.Client(host=url)
    reply = client.chat(
        model="local", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4}
    )
    assert reply["done"] is True
    text = httpx.get(f"{url}/metrics").text
    assert 'pocketlm_tier_requests_total{tier="local"}' in text


def test_a_remote_tier_that_is_down_falls_back_to_the_local_one(tmp_path, tiny_gguf):
    import_model(tiny_gguf, "tiny")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    path = tiers_file(tmp_path, "tiny", dead, "x")
    with serve("--tiers", path, "--ctx", "512") as url:
        started = time.monotonic()
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "cloud",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text
        route = r.json()["route"]
        assert route["fallback"] is True and route["tier"] == "local"
        assert "did not answer" in route["reason"]
        assert r.headers["x-pocketlm-tier"] == "local"
        assert time.monotonic() - started < 30


def test_auto_on_a_server_without_tiers_is_a_clear_400(tiny_gguf):
    with serve("--preload", str(tiny_gguf)) as url:
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 400 and "--tiers" in r.json()["error"]["message"]


def test_run_with_tiers_says_which_tier_answered(tmp_path, tiny_gguf, remote_tiny):
    import_model(tiny_gguf, "tiny")
    remote = f"http://127.0.0.1:{remote_tiny.port}/v1"
    path = tiers_file(tmp_path, "tiny", remote, "tiny")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pocketlm",
            "run",
            "--tiers",
            path,
            "local",
            "hi",
            "--max-tokens",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, POCKETLM_AUDIT_LOG=str(tmp_path / "a.jsonl")),
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)["stats"]
    assert stats["tier"] == "local" and stats["route_reason"] == "requested"
    assert stats["route"]["energy_j"] > 0  # RAPL, or CPU time x watts per core (estimated)
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert records[-1]["tier"] == "local" and records[-1]["energy_j"] > 0


@pytest.mark.slow
def test_the_real_remote_tier_sees_placeholders_and_the_user_gets_the_values(tmp_path):
    """Qwen 0.5B local, Qwen 1.5B remote: the remote answer's placeholders are rehydrated."""
    pulled("qwen2.5-coder-1.5b-instruct")
    pulled("qwen2.5-coder-0.5b-instruct")
    home = {"POCKETLM_HOME": str(shared_store_root())}  # both servers read the shared store
    large = ("--preload", "qwen2.5-coder-1.5b-instruct", "--ctx", "2048")
    with serve(*large, env=home) as remote_url:
        recorder = Recorder(int(remote_url.rsplit(":", 1)[1]))
        remote = f"http://127.0.0.1:{recorder.port}/v1"
        tiers_path = tiers_file(
            tmp_path, "qwen2.5-coder-0.5b-instruct", remote, "qwen2.5-coder-1.5b-instruct"
        )
        env = {**home, "POCKETLM_AUDIT_LOG": str(tmp_path / "audit.jsonl")}
        with serve("--tiers", tiers_path, "--ctx", "2048", env=env) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
            content = (
                "Write one short sentence that greets Maria Gonzalez by her full name and "
                f"repeats her e-mail address {PRIVATE['email']} exactly."
            )
            stream = client.chat.completions.create(
                model="cloud",
                messages=[{"role": "user", "content": content}],
                max_tokens=40,
                temperature=0,
                stream=True,
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        recorder.close()
    sent = recorder.text()
    assert "Maria" not in sent and PRIVATE["email"] not in sent
    assert "<PERSON_1>" in sent and "<EMAIL_ADDRESS_1>" in sent
    assert PRIVATE["email"] in text and "Maria Gonzalez" in text, text
    assert "<PERSON_1>" not in text and "EMAIL_ADDRESS" not in text
