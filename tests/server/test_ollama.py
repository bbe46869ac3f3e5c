"""The Ollama-compatible API, driven by the real `ollama` client package."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from pocketlm.server.schemas import parse_keep_alive
from tests.server.conftest import serve


@pytest.fixture(scope="module")
def client(tiny_server):
    url, model = tiny_server
    return ollama.Client(host=url), model


def test_version_tags_show_ps(client, tiny_gguf):
    c, model = client
    assert httpx.get(f"{c._client.base_url}/api/version").json()["version"]
    assert c.list().models == []  # a path-served model is not in the store
    loaded = c.ps().models
    assert [m.model for m in loaded] == [model] and loaded[0].size > 0


def test_generate_non_streaming_with_timings(client):
    c, model = client
    r = c.generate(
        model=model, prompt="the cat", options={"num_predict": 10, "seed": 2}, stream=False
    )
    assert r.done and r.done_reason == "length" and r.eval_count == 10
    assert r.prompt_eval_count > 0 and r.total_duration > 0
    assert r.eval_duration > 0 and r.prompt_eval_duration > 0 and r.load_duration >= 0
    assert isinstance(r.response, str) and r.response


def test_generate_streaming_matches(client):
    c, model = client
    full = c.generate(
        model=model, prompt="the dog", options={"num_predict": 15, "seed": 4}, stream=False
    ).response
    parts = list(
        c.generate(
            model=model, prompt="the dog", options={"num_predict": 15, "seed": 4}, stream=True
        )
    )
    assert "".join(p.response for p in parts) == full
    assert parts[-1].done and parts[-1].eval_count == 15
    assert not any(p.done for p in parts[:-1])


def test_chat_with_options_and_raw_generate(client):
    c, model = client
    r = c.chat(
        model=model,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        options={"num_predict": 5, "temperature": 0, "stop": ["zzz"]},
    )
    assert r.message.role == "assistant" and r.eval_count == 5
    templated = c.generate(model=model, prompt="hi", options={"num_predict": 1})
    raw = c.generate(model=model, prompt="hi", raw=True, options={"num_predict": 1})
    assert raw.prompt_eval_count < templated.prompt_eval_count


def test_format_json_schema_constrains_the_output(client):
    c, model = client
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = c.generate(
        model=model, prompt="answer", format=schema, options={"num_predict": 40, "temperature": 0}
    )
    assert json.loads(r.response)["ok"] in (True, False)


def test_embed(client):
    c, model = client
    r = c.embed(model=model, input=["the cat", "the dog"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 64


def test_errors_use_ollamas_shape(client):
    c, model = client
    with pytest.raises(ollama.ResponseError) as e:
        c.generate(model="no-such-model", prompt="hi")
    assert e.value.status_code == 404 and "unknown model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.generate(model=model, prompt="hi", options={"temperature": -2})
    assert e.value.status_code == 400 and "temperature" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.show("nothing-here")
    assert e.value.status_code == 404


def test_curl_style_body_without_content_type(tiny_server):
    url, model = tiny_server
    body = json.dumps(
        {"model": model, "prompt": "the", "stream": False, "options": {"num_predict": 2}}
    )
    r = httpx.post(f"{url}/api/generate", content=body)
    assert r.status_code == 200 and r.json()["done"]


def test_prefix_cache_skips_a_repeated_system_prompt(client):
    c, model = client
    system = {"role": "system", "content": "you are a patient cat who likes the mat. " * 25}
    first = c.chat(
        model=model,
        messages=[system, {"role": "user", "content": "one"}],
        options={"num_predict": 2},
    )
    second = c.chat(
        model=model,
        messages=[system, {"role": "user", "content": "two"}],
        options={"num_predict": 2},
    )
    assert first.prompt_eval_count > 200
    assert second.prompt_eval_count < 15  # only the new question was evaluated


@pytest.mark.parametrize(
    "value, seconds",
    [
        (None, None),
        ("", None),
        (30, 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("-1", float("inf")),
        ("-5m", float("inf")),
        ("0", 0.0),
    ],
)
def test_keep_alive_takes_ollamas_durations(value, seconds):
    assert parse_keep_alive(value) == seconds


def test_bad_keep_alive_is_400_in_ollamas_shape(tiny_server):
    url, model = tiny_server
    for bad in ("soon", "5 minutes", "m", "1x"):
        r = httpx.post(
            f"{url}/api/generate", json={"model": model, "prompt": "hi", "keep_alive": bad}
        )
        assert r.status_code == 400 and "invalid keep_alive" in r.json()["error"], bad


def test_pull_of_an_unknown_model_is_404_not_500(tiny_server):
    url, _ = tiny_server
    r = httpx.post(f"{url}/api/pull", json={"model": "no-such-model", "stream": False})
    assert r.status_code == 404 and "unknown model 'no-such-model'" in r.json()["error"]


def test_pull_of_a_path_is_refused_and_registers_nothing(tiny_gguf):
    """Over HTTP a model is a store or catalog name: a path would register any GGUF file on
    the server's disk (and a 404 vs 422 would tell which files exist)."""
    with serve("--ctx", "512") as url:  # a store of its own
        for path in (str(tiny_gguf), "/etc/shadow", "../../x.gguf", "~root/x.gguf"):
            r = httpx.post(f"{url}/api/pull", json={"model": path, "stream": False})
            assert r.status_code == 400 and "not a model name" in r.json()["error"], r.text
        assert httpx.get(f"{url}/api/tags").json()["models"] == []


def test_num_ctx_limits_the_request_or_is_refused(tiny_server):
    """num_ctx was accepted and silently ignored: a smaller one now bounds this request, one
    larger than the server's sequences is a 400 that says what to do."""
    url, model = tiny_server
    body = {"model": model, "prompt": "the", "stream": False, "options": {"temperature": 0}}
    r = httpx.post(
        f"{url}/api/generate",
        json={**body, "options": {"num_ctx": 40, "temperature": 0}},
        timeout=60,
    )
    out = r.json()
    assert r.status_code == 200 and out["prompt_eval_count"] + out["eval_count"] <= 40, out
    r = httpx.post(f"{url}/api/generate", json={**body, "options": {"num_ctx": 1 << 20}})
    assert r.status_code == 400 and "num_ctx" in r.json()["error"] and "--ctx" in r.json()["error"]
