"""Speculative decoding end to end: the real ladder models give the same text with drafts as
without, through the Python API, `pocketlm run` and `pocketlm serve` (the real OpenAI client)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

import pocketlm
from tests.conftest import pulled, run_cli
from tests.server.conftest import metric, serve
from tests.tinymodel import write_tiny_gguf

pytestmark = pytest.mark.slow

EDIT = """Rename the function `area` to `rect_area` everywhere in this code; return all of it.

def area(w, h):
    return w * h

def total(shapes):
    return sum(area(w, h) for w, h in shapes)

print(total([(2, 3), (4, 5)]), area(1, 1))
"""


@pytest.fixture(scope="module")
def qwen_small():
    return pulled("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="module")
def qwen_large():
    return pulled("qwen2.5-coder-1.5b-instruct")


def _generate(path, tokens: int, **load):
    with pocketlm.load(str(path), **load) as m:
        return m.generate(EDIT, temperature=0.0, max_tokens=tokens)


@pytest.mark.parametrize("which", ["qwen_small", "qwen_large"])
def test_greedy_text_of_the_qwen_models_is_plain_decodings(which, request):
    """Greedy decoding drafts (the engine's batches give one-token steps' logits bit for
    bit on these files: the calibration checks it) and the text is token for token plain
    decoding's. Before patches 0002-0004 a near-tie after "```" flipped it."""
    path = request.getfixturevalue(which)
    plain = _generate(path, 64, speculate="off")
    for load in ({"lookup": True}, {}):
        done = _generate(path, 64, **load)
        assert done.text == plain.text, load
        assert done.stats.completion_tokens == plain.stats.completion_tokens
        if load:  # lookup at every step (auto drafts only where it pays on this machine)
            assert done.stats.accepted_tokens > 10  # the code is copied


def test_greedy_text_of_the_large_qwen_with_the_small_one_drafting(qwen_small, qwen_large):
    plain = _generate(qwen_large, 32, speculate="off")
    done = _generate(qwen_large, 32, draft=str(qwen_small))
    assert done.text == plain.text
    assert done.stats.speculative == "draft" and done.stats.accepted_tokens > 5


def test_sampled_decoding_of_the_qwen_model_drafts_by_prompt_lookup(qwen_small):
    with pocketlm.load(str(qwen_small), lookup=True) as m:
        done = m.generate(EDIT, temperature=0.3, seed=3, max_tokens=64)
    assert done.stats.accepted_tokens > 10  # the code is copied: most drafts are kept
    assert "rect_area" in done.text


def test_the_small_qwen_drafts_for_the_large_one(qwen_small, qwen_large):
    with pocketlm.load(str(qwen_large), draft=str(qwen_small)) as m:
        done = m.generate(EDIT, temperature=0.3, seed=3, max_tokens=32)
    s = done.stats
    assert s.speculative == "draft" and s.drafted_tokens >= 10 and s.accepted_tokens > 5


def test_a_draft_model_of_another_vocabulary_is_a_one_line_error(default_model, qwen_small):
    r = run_cli("run", str(qwen_small), "Hi", "--draft", str(default_model), "--max-tokens", "4")
    assert r.returncode != 0
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "does not share the vocabulary" in err
    assert "151936" in err and "49152" in err  # both vocabularies named


def test_run_json_reports_what_speculation_did(qwen_small):
    r = run_cli(
        "run",
        str(qwen_small),
        EDIT,
        "--lookup",
        "--temperature",
        "0.3",
        "--seed",
        "3",
        "--json",
        "--max-tokens",
        "32",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout.decode())["stats"]
    assert stats["speculative"] == "lookup"
    assert 0 < stats["accepted_tokens"] <= stats["drafted_tokens"]


def _chat(url: str, stream: bool) -> tuple[str, dict | None]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    body = dict(
        model="tiny",
        messages=[{"role": "user", "content": "one two three one two three"}],
        temperature=0.8,
        seed=11,
        max_tokens=40,
    )
    if not stream:
        r = client.chat.completions.create(**body)
        return r.choices[0].message.content, r.usage.model_dump()
    text, usage = "", None
    for chunk in client.chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage.model_dump()
    return text, usage


def test_serve_drafts_for_a_lone_sequence_and_reports_it(tmp_path):
    """A tiny model drafts for itself (Q4_1: its short batches round as one-token steps, so
    a seeded answer is the same)."""
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", seed=1, qtype="Q4_1")
    with serve("--preload", str(tiny), "--speculate", "off") as url:
        plain, _ = _chat(url, stream=False)
    with serve("--preload", str(tiny), "--draft", str(tiny)) as url:
        for stream in (False, True):
            text, usage = _chat(url, stream)
            assert text == plain
            details = usage["completion_tokens_details"]
            assert details["accepted_prediction_tokens"] > 0
            assert usage["speculative"] == "draft"
        assert metric(url, "pocketlm_accepted_draft_tokens_total") > 0
        ollama = httpx.post(
            f"{url}/api/generate",
            json={
                "model": "tiny",
                "prompt": "a b a b",
                "stream": False,
                "options": {"temperature": 0.8, "seed": 2, "num_predict": 16},
            },
            timeout=60,
        ).json()
        assert ollama["speculative"] == "draft" and ollama["accepted_draft_count"] > 0
