"""The server on the real default model (pulled once into the shared test store)."""

from __future__ import annotations

import json

import ollama
import openai
import pytest

from tests.conftest import shared_store_root
from tests.server.conftest import serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_server(default_model):
    with serve(
        "--preload",
        "smollm2-135m-instruct",
        "--parallel",
        "4",
        env={"POCKETLM_HOME": str(shared_store_root())},
    ) as url:
        yield url


def test_openai_client_gets_a_real_answer(real_server):
    c = openai.OpenAI(base_url=f"{real_server}/v1", api_key="x", max_retries=0)
    r = c.chat.completions.create(
        model="smollm2-135m-instruct",
        temperature=0,
        max_tokens=60,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert "Paris" in r.choices[0].message.content


def test_json_schema_response_format_is_enforced(real_server):
    c = openai.OpenAI(base_url=f"{real_server}/v1", api_key="x", max_retries=0)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    r = c.chat.completions.create(
        model="smollm2-135m-instruct",
        temperature=0,
        max_tokens=80,
        messages=[{"role": "user", "content": "Describe Paris as JSON with city and population."}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    data = json.loads(r.choices[0].message.content)
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_ollama_client_chat_streams(real_server):
    c = ollama.Client(host=real_server)
    parts = list(
        c.chat(
            model="smollm2-135m-instruct",
            stream=True,
            messages=[{"role": "user", "content": "Name three colors."}],
            options={"num_predict": 40, "seed": 1},
        )
    )
    assert len(parts) > 3 and parts[-1].done
    assert "".join(p.message.content for p in parts).strip()
