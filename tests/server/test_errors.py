"""Errors in each API's own shape: OpenAI's error object under /v1, Ollama's {"error": ...}
under /api, with the status that says what went wrong. In process, no model loaded."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pocketlm.engine.batch import Overloaded
from pocketlm.errors import EngineError, InvalidModelError
from pocketlm.server.app import Limits, create_app
from pocketlm.services.serving import ModelPool
from pocketlm.store.store import Store

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}
GENERATE = {"model": "m", "prompt": "hi", "stream": False}


def app_for(tmp_path, **options):
    return create_app(ModelPool(store=Store(tmp_path / "store")), **options)


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(go())


def openai_error(r: httpx.Response) -> dict:
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert "\n" not in error["message"]
    return error


def ollama_error(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert "\n" not in body["error"]
    return body["error"]


def failing_pool(app, error: Exception) -> None:
    """Every model the app is asked for fails to load with ``error``."""

    async def acquire(*args, **kwargs):
        raise error

    app.state.pool.acquire = acquire


# -- routing --------------------------------------------------------------------------------


def test_unknown_route_in_each_shape(tmp_path):
    app = app_for(tmp_path)
    r = call(app, "GET", "/v1/nope")
    assert r.status_code == 404
    assert openai_error(r) == {
        "message": "Not Found",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    r = call(app, "GET", "/api/nope")
    assert r.status_code == 404 and ollama_error(r) == "Not Found"


def test_wrong_method_is_405_with_allow(tmp_path):
    app = app_for(tmp_path)
    r = call(app, "GET", "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert openai_error(r)["message"] == "Method Not Allowed"
    r = call(app, "GET", "/api/generate")
    assert r.status_code == 405 and ollama_error(r) == "Method Not Allowed"


# -- validation -----------------------------------------------------------------------------


def test_out_of_range_field_is_400_naming_it_as_param(tmp_path):
    r = call(app_for(tmp_path), "POST", "/v1/chat/completions", json={**CHAT, "temperature": 9})
    assert r.status_code == 400
    error = openai_error(r)
    assert (error["param"], error["type"]) == ("temperature", "invalid_request_error")
    assert error["message"].startswith("invalid value for 'temperature': ")


def test_missing_field_is_400_naming_it(tmp_path):
    r = call(app_for(tmp_path), "POST", "/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 400 and openai_error(r)["param"] == "messages"


def test_nested_field_is_named_with_its_path(tmp_path):
    body = {**GENERATE, "options": {"top_p": 0}}
    r = call(app_for(tmp_path), "POST", "/api/generate", json=body)
    assert r.status_code == 400
    assert ollama_error(r).startswith("invalid value for 'options.top_p': ")


def test_body_that_is_not_json_is_400_in_each_shape(tmp_path):
    app = app_for(tmp_path)
    r = call(
        app,
        "POST",
        "/v1/chat/completions",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert openai_error(r)["message"].startswith("the request body is not valid JSON")
    r = call(app, "POST", "/api/generate", content=b"{nope")  # Ollama clients send no type
    assert r.status_code == 400 and ollama_error(r).startswith("the request body is not valid JSON")


# -- errors raised by pocketlm --------------------------------------------------------------


def test_unknown_model_is_404_in_each_shape(tmp_path):
    app = app_for(tmp_path)
    r = call(app, "POST", "/v1/chat/completions", json={**CHAT, "model": "nosuch"})
    assert r.status_code == 404
    error = openai_error(r)
    assert error["type"] == "not_found_error" and "unknown model 'nosuch'" in error["message"]
    r = call(app, "POST", "/api/show", json={"model": "nosuch"})
    assert r.status_code == 404 and ollama_error(r).startswith("unknown model 'nosuch'")


def test_a_model_that_is_not_pulled_says_how_to_pull_it(tmp_path):
    r = call(app_for(tmp_path), "POST", "/api/show", json={"model": "smollm2-135m-instruct"})
    assert r.status_code == 404 and "pocketlm pull smollm2-135m-instruct" in ollama_error(r)


def test_error_message_carries_its_hint(tmp_path):
    app = app_for(tmp_path)
    failing_pool(app, InvalidModelError("not a GGUF file", "check the path"))
    r = call(app, "POST", "/v1/chat/completions", json=CHAT)
    assert r.status_code == 422
    assert openai_error(r)["message"] == "not a GGUF file; check the path"


def test_a_server_side_error_is_500_server_error(tmp_path):
    app = app_for(tmp_path)
    failing_pool(app, EngineError("llama.cpp could not load it"))
    r = call(app, "POST", "/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    assert openai_error(r)["type"] == "server_error"
    r = call(app, "POST", "/api/generate", json=GENERATE)
    assert r.status_code == 500 and ollama_error(r) == "llama.cpp could not load it"


def test_overloaded_is_503_with_retry_after(tmp_path):
    app = app_for(tmp_path)
    failing_pool(app, Overloaded("the request queue is full (16 waiting)"))
    r = call(app, "POST", "/v1/chat/completions", json=CHAT)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    error = openai_error(r)
    assert error["type"] == "server_overloaded" and "queue is full" in error["message"]
    r = call(app, "POST", "/api/generate", json=GENERATE)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "queue is full" in ollama_error(r)


def overflow(tmp_path, tiny_gguf, path: str, body: dict) -> dict:
    """The OpenAI error for ``body`` with a prompt longer than the tiny model's context."""
    pool = ModelPool(store=Store(tmp_path / "store"))
    app = create_app(pool)
    body = {**body, "model": pool.add_file(tiny_gguf)}
    try:
        r = call(app, "POST", path, json=body)
    finally:
        asyncio.run(pool.close())
    assert r.status_code == 400
    return openai_error(r)


def test_context_overflow_of_a_chat_names_the_messages(tmp_path, tiny_gguf):
    long = {"messages": [{"role": "user", "content": "the cat " * 400}]}
    assert overflow(tmp_path, tiny_gguf, "/v1/chat/completions", long)["param"] == "messages"


def test_context_overflow_of_a_completion_names_the_prompt(tmp_path, tiny_gguf):
    """/v1/completions has no `messages`: the overflowing field is `prompt`."""
    long = {"prompt": "the cat " * 400}
    assert overflow(tmp_path, tiny_gguf, "/v1/completions", long)["param"] == "prompt"


# -- the guard: body size and time, API key, Host and Origin ---------------------------------


def test_body_over_the_limit_is_413_before_it_is_read(tmp_path):
    app = app_for(tmp_path, limits=Limits(max_body_bytes=100))
    r = call(
        app,
        "POST",
        "/v1/chat/completions",
        content=b"x" * 101,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "--max-body" in openai_error(r)["message"]
    r = call(app, "POST", "/api/show", content=b"x" * 101)
    assert r.status_code == 413 and "--max-body" in ollama_error(r)


def test_streamed_body_over_the_limit_is_413(tmp_path):
    """No Content-Length (chunked): counted as it arrives."""

    async def chunks():
        for _ in range(3):
            yield b"x" * 60

    app = app_for(tmp_path, limits=Limits(max_body_bytes=100))
    r = call(app, "POST", "/api/show", content=chunks())
    assert r.status_code == 413 and "limit" in ollama_error(r)


def test_body_that_stalls_is_408(tmp_path):
    async def stalls():
        yield b'{"model": '
        await asyncio.sleep(1)
        yield b'"m"}'

    app = app_for(tmp_path, limits=Limits(body_idle_s=0.05))
    r = call(app, "POST", "/api/show", content=stalls())
    assert r.status_code == 408 and "did not arrive in time" in ollama_error(r)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret"}]
)
def test_missing_or_wrong_key_is_401(tmp_path, headers):
    app = app_for(tmp_path, api_key="secret")
    r = call(app, "GET", "/v1/models", headers=headers)
    assert r.status_code == 401 and openai_error(r)["type"] == "authentication_error"
    r = call(app, "GET", "/api/tags", headers=headers)
    assert r.status_code == 401 and "Authorization: Bearer" in ollama_error(r)
    assert call(app, "GET", "/openapi.json", headers=headers).status_code == 401


def test_right_key_passes_and_version_needs_none(tmp_path):
    app = app_for(tmp_path, api_key="secret")
    assert (
        call(app, "GET", "/v1/models", headers={"Authorization": "Bearer secret"}).status_code
        == 200
    )
    assert call(app, "GET", "/api/version").status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:11434", "127.0.0.1.evil.example", "localhost:port"]
)
def test_foreign_host_is_403(tmp_path, host):
    app = app_for(tmp_path)
    r = call(app, "GET", "/v1/models", headers={"Host": host})
    assert r.status_code == 403
    error = openai_error(r)
    assert error["type"] == "permission_error" and "--allowed-host" in error["message"]
    r = call(app, "GET", "/api/tags", headers={"Host": host})
    assert r.status_code == 403 and "Host" in ollama_error(r)


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8080", "127.0.0.1:1", "[::1]:8080", "app.localhost"]
)
def test_loopback_hosts_are_served(tmp_path, host):
    assert call(app_for(tmp_path), "GET", "/api/tags", headers={"Host": host}).status_code == 200


def test_cross_origin_post_is_403_but_same_origin_and_get_pass(tmp_path):
    app = app_for(tmp_path)
    foreign = {"Origin": "http://evil.example"}
    r = call(app, "POST", "/api/show", json={"model": "m"}, headers=foreign)
    assert r.status_code == 403 and "--allowed-origin" in ollama_error(r)
    r = call(app, "POST", "/v1/completions", json=COMPLETION, headers=foreign)
    assert r.status_code == 403 and openai_error(r)["type"] == "permission_error"
    assert call(app, "GET", "/api/tags", headers=foreign).status_code == 200
    same = {"Origin": "http://127.0.0.1"}
    assert call(app, "POST", "/api/show", json={"model": "m"}, headers=same).status_code == 404


def test_an_allowed_origin_may_post(tmp_path):
    app = app_for(tmp_path, origins=["http://app.example"])
    r = call(
        app, "POST", "/api/show", json={"model": "m"}, headers={"Origin": "http://app.example/"}
    )
    assert r.status_code == 404  # past the guard: the model is unknown
