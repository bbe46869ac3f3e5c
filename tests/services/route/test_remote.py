"""The remote tier's client against a real HTTP server on loopback that misbehaves on cue:
rate limits and failures are retried with backoff, a slow tier times out, nothing hangs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pocketlm.services.route.remote import RemoteClient, RemoteRefused, RemoteUnavailable
from pocketlm.services.route.tiers import Tier

ANSWER = {
    "choices": [{"message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2},
}


class Script:
    """What the server answers, request by request (the last entry repeats)."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.times: list[float] = []

    def next(self):
        self.times.append(time.monotonic())
        return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]


@pytest.fixture
def server():
    script = Script(("ok",))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            kind, *arg = script.next()
            if kind == "sleep":
                time.sleep(arg[0])
                kind = "ok"
            if kind == "ok":
                body = json.dumps(ANSWER).encode()
                self.send_response(200)
            else:
                body = json.dumps({"error": {"message": f"status {kind}"}}).encode()
                self.send_response(kind)
                if arg:
                    self.send_header("retry-after", str(arg[0]))
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], script
    httpd.shutdown()


def tier(port: int, **kw) -> Tier:
    return Tier(name="cloud", model="m", url=f"http://127.0.0.1:{port}/v1", **kw)


def complete(t: Tier):
    async def go():
        client = RemoteClient()
        try:
            return await client.complete(t, [{"role": "user", "content": "hi"}], {})
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_rate_limited_tier_is_retried_after_its_retry_after(server):
    port, script = server
    script.steps = [(429, 1), (503,), ("ok",)]
    reply = complete(tier(port, retries=2))
    assert reply.text == "hi there" and (reply.tokens_in, reply.tokens_out) == (7, 2)
    assert len(script.times) == 3
    assert script.times[1] - script.times[0] >= 0.9  # Retry-After: 1 honoured
    assert script.times[2] - script.times[1] >= 0.9  # then backoff doubles (0.5 s -> 1 s)


def test_a_tier_that_keeps_failing_is_unavailable_after_its_retries(server):
    port, script = server
    script.steps = [(500,)]
    with pytest.raises(RemoteUnavailable, match="after 2 attempt"):
        complete(tier(port, retries=1))
    assert len(script.times) == 2


def test_a_slow_tier_times_out_instead_of_hanging(server):
    port, script = server
    script.steps = [("sleep", 3)]
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="no answer within 0.5 s"):
        complete(tier(port, retries=1, timeout_s=0.5))
    assert time.monotonic() - started < 2.5


def test_an_error_retrying_cannot_fix_is_not_retried(server):
    port, script = server
    script.steps = [(401,)]
    with pytest.raises(RemoteRefused, match="HTTP 401"):
        complete(tier(port, retries=3))
    assert len(script.times) == 1


def test_a_missing_api_key_variable_is_a_clear_error(server, monkeypatch):
    port, _ = server
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(RemoteRefused, match="NO_SUCH_KEY_VAR is not set"):
        complete(tier(port, api_key_env="NO_SUCH_KEY_VAR"))
