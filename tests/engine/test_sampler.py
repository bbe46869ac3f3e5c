"""The sampler's own repeat penalty draws exactly what llama.cpp's penalties sampler draws."""

from __future__ import annotations

import llama_cpp as ll
import pytest

from pocketlm.engine.llama import Context, Model, Sampler


@pytest.fixture(scope="module")
def model(tiny_gguf):
    m = Model(str(tiny_gguf))
    yield m
    m.close()


def reference_chain(model: Model, *, temperature: float, penalty: float, last_n: int, seed: int):
    """llama.cpp's own chain, penalties included, as the Sampler built it before."""
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    ll.llama_sampler_chain_add(
        chain, ll.llama_sampler_init_penalties(model.n_vocab, last_n, penalty, 0.0, 0.0)
    )
    if temperature <= 0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        return chain
    for s in (
        ll.llama_sampler_init_top_k(40),
        ll.llama_sampler_init_top_p(0.95, 1),
        ll.llama_sampler_init_min_p(0.05, 1),
        ll.llama_sampler_init_temp(temperature),
        ll.llama_sampler_init_dist(seed),
    ):
        ll.llama_sampler_chain_add(chain, s)
    return chain


def draw(model: Model, prompt: list[int], n: int, sample, accept) -> list[int]:
    """Decode ``n`` tokens one by one, each drawn by ``sample(ctx)``."""
    ctx = Context(model, n_ctx=256, n_threads=1, n_batch=64)
    try:
        ctx.prefill_all(prompt)
        for tok in prompt:
            accept(tok)
        out: list[int] = []
        pos = len(prompt)
        for _ in range(n):
            tok = sample(ctx)
            out.append(tok)
            b = ctx._batch
            b.token[0], b.pos[0], b.n_seq_id[0], b.seq_id[0][0], b.logits[0] = tok, pos, 1, 0, 1
            b.n_tokens = 1
            assert ll.llama_decode(ctx._ptr, b) == 0
            pos += 1
        return out
    finally:
        ctx.close()


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_repeat_penalty_matches_llama_cpp(model, temperature):
    prompt = model.tokenize("the cat sat on the mat and the dog", add_special=True)
    kw = dict(temperature=temperature, penalty=1.8, last_n=6, seed=7)
    chain = reference_chain(model, **kw)
    try:
        expected = draw(
            model,
            prompt,
            60,
            lambda ctx: ll.llama_sampler_sample(chain, ctx._ptr, -1),
            lambda tok: ll.llama_sampler_accept(chain, tok),
        )
    finally:
        ll.llama_sampler_free(chain)

    def ours(penalty: float) -> list[int]:
        s = Sampler(
            n_vocab=model.n_vocab,
            temperature=temperature,
            top_k=40,
            top_p=0.95,
            min_p=0.05,
            repeat_penalty=penalty,
            repeat_last_n=6,
            seed=7,
        )
        try:
            return draw(model, prompt, 60, s.sample, s.accept)
        finally:
            s.close()

    assert ours(1.8) == expected
    assert ours(1.0) != expected  # the penalty changes what is drawn: the test can fail


def test_accept_rejects_a_token_outside_the_vocabulary(model):
    s = Sampler(
        n_vocab=model.n_vocab,
        temperature=0.8,
        top_k=40,
        top_p=0.95,
        min_p=0.05,
        repeat_penalty=1.1,
        repeat_last_n=64,
        seed=0,
    )
    with pytest.raises(ValueError, match="not in the vocabulary"):
        s.accept(model.n_vocab)
    s.close()


def test_penalty_arithmetic_on_positive_and_negative_logits(model):
    """Like llama.cpp: a recent token's logit is divided by the penalty when positive and
    multiplied by it when not; every other logit is left alone."""
    import numpy as np

    ctx = Context(model, n_ctx=64, n_threads=1, n_batch=64)
    try:
        ctx.prefill_all(model.tokenize("the cat sat", add_special=True))
        ptr = ll.llama_get_logits_ith(ctx._ptr, -1)
        before = np.ctypeslib.as_array(ptr, shape=(model.n_vocab,)).copy()
        order = np.argsort(before)
        recent = [int(t) for t in (*order[:3], *order[-3:])]  # most negative, most positive
        assert before[recent[0]] < 0 < before[recent[-1]]
        s = Sampler(
            n_vocab=model.n_vocab,
            temperature=0.0,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.5,
            repeat_last_n=64,
            seed=0,
        )
        for tok in recent:
            s.accept(tok)
        s.sample(ctx, -1)
        s.close()
        after = np.ctypeslib.as_array(ptr, shape=(model.n_vocab,))
        expected = before.copy()
        p = np.float32(1.5)
        for tok in recent:
            expected[tok] = before[tok] * p if before[tok] <= 0 else before[tok] / p
        assert np.array_equal(after, expected)
    finally:
        ctx.close()


def test_a_penalty_that_rounds_to_zero_behaves_as_in_c(model):
    """5e-324 passes "> 0" but is 0 as a C float: llama.cpp's arithmetic gives +inf for a
    positive logit, and so does ours (no ZeroDivisionError)."""
    prompt = model.tokenize("the cat sat on the mat", add_special=True)
    s = Sampler(
        n_vocab=model.n_vocab,
        temperature=0.8,
        top_k=40,
        top_p=0.95,
        min_p=0.05,
        repeat_penalty=5e-324,
        repeat_last_n=8,
        seed=1,
    )
    try:
        out = draw(model, prompt, 4, s.sample, s.accept)
    finally:
        s.close()
    assert len(out) == 4 and all(0 <= t < model.n_vocab for t in out)
