"""The OpenAI-compatible API, driven by the real `openai` client package."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import openai
import pytest

from tests.server.conftest import metric, serve


@pytest.fixture(scope="module")
def client(tiny_server):
    url, model = tiny_server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), model


def chat(client, model, text="hello there", **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )


def test_models_lists_the_loaded_model(client):
    c, model = client
    assert model in [m.id for m in c.models.list().data]


def test_chat_completion_with_usage_and_length(client):
    c, model = client
    r = chat(c, model, max_tokens=12, seed=3)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_same_seed_same_answer_and_streaming_matches(client):
    c, model = client
    a = chat(c, model, max_tokens=20, seed=11).choices[0].message.content
    b = chat(c, model, max_tokens=20, seed=11).choices[0].message.content
    assert a == b
    chunks = list(
        chat(c, model, max_tokens=20, seed=11, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == a
    assert chunks[-1].usage.completion_tokens == 20
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) >= 5


def test_n_choices_with_their_own_seeds(client):
    c, model = client
    r = chat(c, model, max_tokens=16, seed=5, n=3)
    texts = [ch.message.content for ch in r.choices]
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert len(set(texts)) >= 2
    assert r.usage.completion_tokens == 48


def test_stop_sequence(client):
    c, model = client
    full = chat(c, model, max_tokens=30, temperature=0).choices[0].message.content
    stop = full[5:8]
    cut = chat(c, model, max_tokens=30, temperature=0, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == full[: full.index(stop)]


def test_logprobs_and_top_logprobs(client):
    c, model = client
    r = chat(
        c,
        model,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"repeat_penalty": 1.0},
    )  # the pick is then the likeliest token
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for tok in content:
        assert tok.logprob <= 0 and len(tok.top_logprobs) == 3
        tops = [t.logprob for t in tok.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert tok.top_logprobs[0].token == tok.token  # greedy picks the likeliest
        assert tok.logprob == pytest.approx(tops[0])


def test_completion_echo_logprobs_score_the_prompt(client, tiny_gguf):
    """Prompt log-probabilities equal a plain reference computation with llama.cpp."""
    c, model = client
    prompt = "the cat sat on the mat and the dog"
    r = c.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == prompt and lp.token_logprobs[0] is None
    assert "".join(lp.tokens) == prompt
    ref = reference_logprobs(str(tiny_gguf), prompt, flash_attn=False)  # as the server
    assert np.allclose(lp.token_logprobs[1:], ref, atol=2e-3)
    # flash attention's f16 accumulation moves log-probabilities by ~1e-4 relative
    fa = reference_logprobs(str(tiny_gguf), prompt, flash_attn=True)
    assert np.allclose(lp.token_logprobs[1:], fa, rtol=1e-3)
    for tok, top in zip(lp.tokens[1:], lp.top_logprobs[1:]):
        assert len(top) == 2


def reference_logprobs(path: str, prompt: str, flash_attn: bool) -> list[float]:
    import llama_cpp as ll

    from pocketlm.engine.llama import Context, Model

    m = Model(path)
    ctx = Context(m, n_ctx=256, n_threads=1, n_batch=256, flash_attn=flash_attn)
    tokens = m.tokenize(prompt, add_special=True, parse_special=True)
    ctx.prefill_all(tokens)
    out = []
    for i in range(len(tokens) - 1):
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx._ptr, i), shape=(m.n_vocab,))
        z = logits - logits.max()
        out.append(float(z[tokens[i + 1]] - np.log(np.exp(z).sum())))
    ctx.close()
    m.close()
    return out


def test_completions_stream_and_max_tokens_default(client):
    c, model = client
    r = c.completions.create(model=model, prompt="the cat", seed=1)
    assert r.usage.completion_tokens == 16  # OpenAI's default max_tokens
    chunks = list(c.completions.create(model=model, prompt="the cat", seed=1, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text


def test_embeddings(client):
    c, model = client
    r = c.embeddings.create(model=model, input=["the cat", "the dog", "the cat"])
    vecs = [np.array(d.embedding) for d in r.data]
    assert len(vecs) == 3 and len(vecs[0]) == 64
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in vecs)
    assert np.allclose(vecs[0], vecs[2], atol=1e-5) and not np.allclose(vecs[0], vecs[1])
    assert r.usage.prompt_tokens > 0


def test_unknown_model_is_404(client):
    c, _ = client
    with pytest.raises(openai.NotFoundError) as e:
        chat(c, "no-such-model", max_tokens=2)
    assert "unknown model 'no-such-model'" in e.value.message


def test_invalid_parameters_are_400_naming_the_field(client):
    c, model = client
    for kw, field in [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 3}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": -5}, "max_tokens"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            chat(c, model, **kw)
        assert e.value.body["param"] == field and field in e.value.message


def test_token_ids_outside_the_vocabulary_are_400(client):
    c, model = client
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=model, prompt=[1, 2, 10**6], max_tokens=2)
    assert "token id 1000000 is not in the model's vocabulary" in e.value.message
    assert c.completions.create(model=model, prompt=[1, 2, 3], max_tokens=2).choices


def test_an_empty_prompt_starts_from_the_start_of_text(client):
    c, model = client
    for prompt in ("", [""]):
        r = c.completions.create(model=model, prompt=prompt, max_tokens=3, temperature=0)
        assert r.usage.prompt_tokens == 1 and r.usage.completion_tokens >= 1


def test_context_overflow_is_400_with_counts(client):
    c, model = client
    with pytest.raises(openai.BadRequestError) as e:
        chat(c, model, text="the cat sat on the mat " * 200, max_tokens=10)
    assert "exceeds the context window (1024 tokens)" in e.value.message


def test_concurrent_requests_are_batched(tiny_server):
    """Two streams progress at the same time (continuous batching), not one after the other."""
    url, model = tiny_server
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    stamps: dict[int, list[float]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        barrier.wait()
        for ch in chat(c, model, max_tokens=900, seed=i, stream=True):
            if ch.choices and ch.choices[0].delta.content:
                stamps[i].append(time.perf_counter())

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = stamps[0], stamps[1]
    assert len(a) > 500 and len(b) > 500
    both = [t for t in a if b[0] < t < b[-1]]
    assert len(both) > len(a) / 2  # most of one stream arrived while the other was streaming


def test_client_disconnect_frees_its_sequence(tiny_gguf):
    # a 32k context: the tiny model (which never ends a turn) would talk for many seconds
    with serve("--preload", str(tiny_gguf), "--ctx", "32768", "--parallel", "1") as url:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "go"}],
            "stream": True,
            "temperature": 0,
        }  # greedy: this model never ends a turn
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
            assert metric(url, "pocketlm_active_sequences") == 1
            lines.close()
        deadline = time.time() + 5
        while metric(url, "pocketlm_active_sequences") != 0:
            assert time.time() < deadline, "the sequence was not freed"
            time.sleep(0.05)
        generated = metric(url, "pocketlm_generated_tokens_total")
        time.sleep(0.3)
        assert metric(url, "pocketlm_generated_tokens_total") == generated  # nothing runs on


def test_metrics_count_requests_and_tokens(tiny_server):
    url, _ = tiny_server
    text = httpx.get(f"{url}/metrics").text
    assert 'pocketlm_requests_total{path="/v1/chat/completions",status="200"}' in text
    assert metric(url, "pocketlm_generated_tokens_total") > 0
    assert metric(url, "pocketlm_queue_depth") == 0
    assert metric(url, "pocketlm_loaded_models") == 1


def test_a_body_that_is_not_json_gets_each_apis_error_shape(tiny_server):
    url, _ = tiny_server
    bad = b"\xae not json"
    r = httpx.post(
        f"{url}/v1/completions", content=bad, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "message" in r.json()["error"]
    r = httpx.post(f"{url}/api/generate", content=bad)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    assert httpx.get(f"{url}/v1/nothing").json()["error"]["message"] == "Not Found"


def test_a_repeat_penalty_that_is_zero_as_a_float_is_served(client):
    """Fuzzer finding: 5e-324 is > 0 but 0 as a C float; it gave a 500 (ZeroDivisionError)."""
    c, model = client
    r = chat(c, model, max_tokens=4, extra_body={"repeat_penalty": 5e-324})
    assert r.choices[0].finish_reason in ("length", "stop")
