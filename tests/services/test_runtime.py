"""The runtime service on a tiny real model: generation, streaming, stops, limits, chat."""

from __future__ import annotations

import pytest

import pocketlm
from pocketlm.errors import ContextOverflowError, UsageError
from pocketlm.services.runtime import LoadedModel

GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def model(tiny_gguf):
    with LoadedModel(str(tiny_gguf), ctx=256, threads=1) as m:
        yield m


def test_generate_returns_text_and_stats(model):
    out = model.generate("the cat sat on the", raw=True, max_tokens=12, seed=3)
    assert out.finish_reason in ("stop", "length")
    assert 1 <= out.stats.completion_tokens <= 12
    assert out.stats.prompt_tokens == len(model.tokenize("the cat sat on the"))
    assert out.stats.ttft_s > 0 and out.stats.prefill_tps > 0
    assert out.stats.peak_rss_bytes > 10 * 2**20
    if out.finish_reason == "length":
        assert out.stats.completion_tokens == 12


def test_same_seed_same_output_and_different_seed_differs(model):
    runs = [
        model.generate("hello world", raw=True, max_tokens=24, seed=s).text for s in (7, 7, 8, 9)
    ]
    assert runs[0] == runs[1]
    assert len(set(runs)) >= 2  # at 0.8 temperature over 24 tokens, seeds 7/8/9 cannot all agree


def test_stream_yields_pieces_that_join_to_the_text(model):
    stream = model.generate("the dog and the cat", raw=True, max_tokens=20, seed=5, stream=True)
    pieces = list(stream)
    assert len(pieces) >= 1
    assert "".join(pieces) == stream.completion.text
    again = model.generate("the dog and the cat", raw=True, max_tokens=20, seed=5)
    assert again.text == stream.completion.text


def test_greedy_is_deterministic_without_seed(model):
    a = model.generate("once upon a time", raw=True, max_tokens=16, **GREEDY).text
    b = model.generate("once upon a time", raw=True, max_tokens=16, **GREEDY).text
    assert a == b


def test_stop_sequence_cuts_the_text(model):
    full = model.generate("the cat", raw=True, max_tokens=40, **GREEDY).text
    assert len(full) > 6, full
    stop = full[3:6]
    cut = model.generate("the cat", raw=True, max_tokens=40, stop=[stop], **GREEDY)
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]
    assert stop not in cut.text


def test_context_overflow_is_an_error_with_counts(model):
    prompt = "the cat sat on the mat. " * 60
    n = len(model.tokenize(prompt))
    assert n > model.n_ctx
    with pytest.raises(ContextOverflowError) as e:
        model.generate(prompt, raw=True, max_tokens=10)
    msg, cli = str(e.value), e.value.render("cli")  # the Python API's spelling, the CLI's
    assert f"{n} tokens" in msg and "256" in msg and "--ctx" in cli and "--truncate" in cli
    assert "ctx=" in msg and "truncate=True" in msg and "--" not in msg
    # max_tokens alone can overflow too
    with pytest.raises(ContextOverflowError, match="max tokens \\(300\\)"):
        model.generate("hello", raw=True, max_tokens=300)


def test_truncate_raw_prompt_drops_the_start(model):
    prompt = "the cat sat on the mat. " * 60
    out = model.generate(prompt, raw=True, max_tokens=8, truncate=True, seed=1)
    assert out.stats.truncated_tokens > 0
    assert out.stats.prompt_tokens + 8 <= model.n_ctx


def test_truncate_chat_drops_oldest_messages_keeps_system(model):
    history = []
    for i in range(12):
        history += [
            {"role": "user", "content": f"question {i} " + "the cat sat. " * 8},
            {"role": "assistant", "content": "the dog ran. " * 8},
        ]
    messages = [
        {"role": "system", "content": "be brief"},
        *history,
        {"role": "user", "content": "last question"},
    ]
    with pytest.raises(ContextOverflowError):
        model.chat(messages, max_tokens=16)
    out = model.chat(messages, max_tokens=16, truncate=True, seed=2)
    assert out.stats.truncated_messages > 0
    assert out.stats.prompt_tokens + 16 <= model.n_ctx
    assert len(messages) == 26  # the caller's list is not modified


def test_chat_uses_the_template_and_reuses_the_cached_prefix(model):
    system = {"role": "system", "content": "you are a helpful cat " * 5}
    first = model.chat([system, {"role": "user", "content": "hello"}], max_tokens=4, seed=1)
    second = model.chat(
        [
            system,
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": "and?"},
        ],
        max_tokens=4,
        seed=1,
    )
    rendered = model.render([system, {"role": "user", "content": "hello"}])
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("assistant\n")
    first_tokens = model.tokenize(rendered, add_special=False, parse_special=True)
    assert first.stats.prompt_tokens == len(first_tokens)
    assert second.stats.cached_tokens >= len(first_tokens) - 2
    assert second.stats.cached_tokens < second.stats.prompt_tokens


def test_tokenize_detokenize_round_trip(model):
    text = "Hello world, the cat sat on the mat."
    tokens = model.tokenize(text, add_special=False)
    assert len(tokens) < len(text)  # merges applied
    assert model.detokenize(tokens) == text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"seed": -5}, "seed"),
        ({"bogus": 1}, "bogus"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_parameters_name_the_field(model, params, field):
    with pytest.raises(UsageError, match=field):
        model.generate("hi", raw=True, **params)


def test_empty_prompt_is_refused(model):
    with pytest.raises(UsageError, match="empty"):
        model.generate("   ")


def test_bad_messages_are_refused(model):
    with pytest.raises(UsageError, match="role"):
        model.chat([{"role": "wizard", "content": "hi"}])
    with pytest.raises(UsageError):
        model.chat([])


def test_public_api_load_context_manager_frees(tiny_gguf):
    with pocketlm.load(str(tiny_gguf), ctx=128) as m:
        assert m.generate("the cat", raw=True, max_tokens=3, seed=1).text is not None
    assert m._ctx is None and m._model is None
    m.close()  # closing twice is harmless


def test_load_params_are_validated(tiny_gguf):
    with pytest.raises(UsageError, match="ctx"):
        pocketlm.load(str(tiny_gguf), ctx=1)
    with pytest.raises(UsageError, match="threads"):
        pocketlm.load(str(tiny_gguf), threads=0)
