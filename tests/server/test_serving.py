"""Serving life cycle: load on first use, keep_alive, memory budget, queue limit, auth, ports."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import ollama
import openai
import pytest

from tests.conftest import assert_clean_error, run_cli
from tests.server.conftest import free_port, metric, serve, serve_process
from tests.tinymodel import write_tiny_gguf


@pytest.fixture
def store_with_two_models(tmp_path, tiny_gguf):
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=7)
    assert run_cli("import", str(tiny_gguf), "--name", "tiny").returncode == 0
    assert run_cli("import", str(other), "--name", "other").returncode == 0


def test_models_load_on_first_use_and_unload_after_keep_alive(store_with_two_models):
    with serve("--keep-alive", "1.5", "--ctx", "512", "--parallel", "2") as url:
        c = ollama.Client(host=url)
        assert [m.model for m in c.list().models] == ["other", "tiny"]
        assert c.ps().models == []
        c.generate(model="tiny", prompt="the", options={"num_predict": 2})
        c.generate(model="other", prompt="the", options={"num_predict": 2})
        assert sorted(m.model for m in c.ps().models) == ["other", "tiny"]  # several loaded
        ps = run_cli("ps", "--port", url.rsplit(":", 1)[1])
        assert ps.returncode == 0 and "tiny" in ps.stdout_text and "other" in ps.stdout_text
        deadline = time.time() + 30
        while c.ps().models:
            assert time.time() < deadline, "idle models were not unloaded"
            time.sleep(0.2)


def test_keep_alive_zero_unloads_at_once_and_empty_prompt_loads(store_with_two_models):
    with serve("--ctx", "512", "--parallel", "2") as url:
        c = ollama.Client(host=url)
        assert c.generate(model="tiny", prompt="").done_reason == "load"
        assert [m.model for m in c.ps().models] == ["tiny"]
        c.generate(model="tiny", prompt="the", options={"num_predict": 2}, keep_alive=0)
        assert c.ps().models == []


def test_memory_budget_refuses_a_load_that_does_not_fit(store_with_two_models):
    with serve("--ctx", "512", "--memory-budget", "0.0001") as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503 and "memory budget" in e.value.message


def test_full_queue_is_503_with_retry_after(tiny_gguf):
    with serve(
        "--preload", str(tiny_gguf), "--parallel", "1", "--queue", "1", "--ctx", "32768"
    ) as url:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "go"}],
            "temperature": 0,
            "max_tokens": 20000,
        }
        results = []

        def call() -> None:
            try:
                results.append(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=2))
            except httpx.TimeoutException:
                results.append("busy")  # still generating: it held the slot or the queue

        # each request starts once the server holds the one before (running, then queued):
        # ordered by the server's own state, not by sleeping
        held = [("pocketlm_active_sequences", 1), ("pocketlm_queue_depth", 1)]
        threads = [threading.Thread(target=call) for _ in range(4)]
        for i, t in enumerate(threads):
            t.start()
            if i < len(held):
                name, value = held[i]
                deadline = time.monotonic() + 30
                while metric(url, name) != value:
                    assert time.monotonic() < deadline, f"{name} never reached {value}"
                    time.sleep(0.01)
        for t in threads:
            t.join()
        rejected = [r for r in results if r != "busy" and r.status_code == 503]
        assert len(rejected) >= 1
        assert rejected[0].headers["retry-after"] == "1"
        assert "busy" in rejected[0].json()["error"]["message"]


def metrics_now(client: httpx.Client, url: str) -> list[str]:
    text = client.get(f"{url}/metrics").text
    return [x for x in text.splitlines() if x.startswith(("pocketlm_active", "pocketlm_queue"))]


def test_full_queue_is_503_for_streams_too_before_they_start(tiny_gguf):
    """A streamed request that cannot be queued gets a 503, not a 200 that breaks off."""
    # 250k tokens: the tiny model (which never ends a turn) takes minutes, attention growing
    with (
        serve(
            "--preload", str(tiny_gguf), "--parallel", "1", "--queue", "1", "--ctx", "262144"
        ) as url,
        httpx.Client(timeout=30) as client,
    ):
        hold = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "go"}],
            "temperature": 0,
            "max_tokens": 250000,
            "stream": True,
        }
        with (
            client.stream("POST", f"{url}/v1/chat/completions", json=hold) as running,
            client.stream("POST", f"{url}/v1/chat/completions", json=hold) as queued,
        ):
            assert running.status_code == queued.status_code == 200
            lines = running.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            metrics = client.get(f"{url}/metrics").text  # the slot is taken, the queue is full
            assert "pocketlm_active_sequences 1.0" in metrics
            assert "pocketlm_queue_depth 1.0" in metrics
            for path, body in [
                ("/v1/chat/completions", hold),
                ("/v1/completions", {"model": "tiny", "prompt": "go", "stream": True}),
                ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "go"}]}),
                ("/api/generate", {"model": "tiny", "prompt": "go"}),
            ]:
                with client.stream("POST", url + path, json=body) as r:
                    assert r.status_code == 503, (path, r.status_code, metrics_now(client, url))
                    r.read()
                assert r.headers["retry-after"] == "1"
                error = r.json()["error"]
                assert "busy" in (error["message"] if path.startswith("/v1") else error)
        deadline = time.monotonic() + 30  # both held streams were cancelled when they closed
        while time.monotonic() < deadline:
            if "pocketlm_active_sequences 0.0" in client.get(f"{url}/metrics").text:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the closed streams kept their sequences")


def test_more_choices_than_the_server_holds_is_400_not_503(tiny_gguf):
    with serve("--preload", str(tiny_gguf), "--parallel", "1", "--queue", "2") as url:
        body = {"model": "tiny", "prompt": ["a", "b"], "n": 2, "max_tokens": 2}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert r.status_code == 400
        assert "asks for 4 sequences" in r.json()["error"]["message"]
        body["n"] = 1
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200


def test_unknown_and_not_pulled_models_are_404_with_the_fix(tmp_path):
    with serve("--ctx", "512") as url:
        r = httpx.post(
            f"{url}/api/generate", json={"model": "smollm2-135m-instruct", "prompt": "hi"}
        )
        assert r.status_code == 404 and "pocketlm pull smollm2-135m-instruct" in r.json()["error"]


def test_delete_removes_from_the_store(store_with_two_models, tiny_gguf):
    with serve("--ctx", "512") as url:
        c = ollama.Client(host=url)
        c.generate(model="other", prompt="x", options={"num_predict": 1})
        c.delete("other")
        assert [m.model for m in c.list().models] == ["tiny"] and c.ps().models == []
        with pytest.raises(ollama.ResponseError) as e:
            c.delete("other")
        assert e.value.status_code == 404


def test_pull_streams_status_and_reports_errors(tmp_path):
    with serve("--ctx", "512") as url:
        lines = [
            json.loads(x)
            for x in httpx.post(
                f"{url}/api/pull", json={"model": "no-such-catalog-model"}, timeout=60
            ).iter_lines()
            if x
        ]
        assert lines[0]["status"] == "pulling manifest"
        assert "unknown model" in lines[-1]["error"]


def test_non_loopback_needs_an_api_key(tiny_gguf):
    proc = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert_clean_error(proc, "--api-key")
    with serve("--preload", str(tiny_gguf), "--ctx", "512", host="0.0.0.0", key="s3cret") as url:
        assert httpx.get(f"{url}/v1/models").status_code == 401
        bad = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{url}/api/tags").status_code == 401
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["tiny"]
        assert httpx.get(f"{url}/").status_code == 200  # the page itself is public


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_cli("serve", "--port", str(port))
    assert_clean_error(proc, f"port {port}", "already in use", "--port")


def test_bad_serve_options():
    assert_clean_error(run_cli("serve", "--parallel", "0"), "--parallel")
    assert_clean_error(run_cli("serve", "--port", "99999"), "--port")
    assert_clean_error(run_cli("ps", "--port", str(free_port())), "no pocketlm server")


def test_embeddings_run_on_the_engine_thread_and_add_no_threads(tiny_gguf):
    """Embeddings are computed by the model's scheduler thread: a worker thread of its own
    would get its own OpenMP team, and with more team threads than cores OpenMP stops
    spinning at its barriers, which slowed every later step by ~20%."""
    from pathlib import Path

    with serve_process(
        "--preload", str(tiny_gguf), "--threads", "2", "--ctx", "512", "--parallel", "2"
    ) as (url, proc):
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
        model = c.models.list().data[0].id
        done = threading.Event()

        def stream() -> None:
            for _ in c.completions.create(model=model, prompt="the", max_tokens=64, stream=True):
                pass
            done.set()

        # the event loop's executor (asyncio.to_thread, for tokenizing) is started whole with
        # the server, so overlapping requests add no executor thread either
        t = threading.Thread(target=stream)
        t.start()
        c.completions.create(model=model, prompt="the cat", max_tokens=4)
        t.join(60)
        tasks = Path(f"/proc/{proc.pid}/task")

        def settled() -> int:
            """The server's thread count once it is idle (an idle scheduler lets its OpenMP
            workers go: release_openmp_threads)."""
            counts = [len(list(tasks.iterdir()))]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (len(counts) < 4 or len(set(counts[-4:])) > 1):
                time.sleep(0.05)
                counts.append(len(list(tasks.iterdir())))
            return counts[-1]

        before = settled()
        for _ in range(3):
            r = c.embeddings.create(model=model, input=["the cat", "the dog sat"])
            assert [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens > 0
        done.clear()
        t = threading.Thread(target=stream)  # embeddings interleave with a running stream
        t.start()
        c.embeddings.create(model=model, input=["a b c"] * 4)
        t.join(60)
        assert done.is_set()
        many = [  # overlapping requests: more than the executor's threads at once
            threading.Thread(target=c.embeddings.create, kwargs={"model": model, "input": "x y"})
            for _ in range(12)
        ]
        for t in many:
            t.start()
        for t in many:
            t.join(60)
        assert settled() == before
