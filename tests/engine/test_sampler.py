"""The sampler's own repeat penalty draws exactly what llama.cpp's penalties sampler draws."""

from __future__ import annotations

import llama_cpp as ll
import numpy as np
import pytest

from pocketlm.engine.llama import GREEDY_CHECKED, Context, Model, Sampler
from pocketlm.params import GenerationParams


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


def reference_draws(model: Model, prompt: list[int], n: int, **chain) -> list[int]:
    """``n`` tokens drawn by llama.cpp's own chain (``reference_chain(model, **chain)``)."""
    ref = reference_chain(model, **chain)
    try:
        return draw(
            model,
            prompt,
            n,
            lambda ctx: ll.llama_sampler_sample(ref, ctx._ptr, -1),
            lambda tok: ll.llama_sampler_accept(ref, tok),
        )
    finally:
        ll.llama_sampler_free(ref)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_repeat_penalty_matches_llama_cpp(model, temperature):
    prompt = model.tokenize("the cat sat on the mat and the dog", add_special=True)
    expected = reference_draws(
        model, prompt, 60, temperature=temperature, penalty=1.8, last_n=6, seed=7
    )

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


def test_greedy_draws_the_first_maximum_as_llama_cpp_does(model):
    """Greedy reads the logits itself (no candidate array): the same draws as llama.cpp's
    greedy sampler, ties included."""
    prompt = model.tokenize("the cat sat on the mat and the dog", add_special=True)
    expected = reference_draws(model, prompt, 40, temperature=0.0, penalty=1.0, last_n=0, seed=0)
    s = Sampler.greedy(model.n_vocab)
    try:
        assert draw(model, prompt, 40, s.sample, s.accept) == expected
    finally:
        s.close()
    ctx = Context(model, n_ctx=64, n_threads=1, n_batch=8)
    s = Sampler.greedy(model.n_vocab)
    try:
        ctx.prefill_all(prompt)
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx._ptr, -1), (model.n_vocab,))
        logits[:] = 0.0
        logits[[7, 300, 500]] = 2.0  # a three-way tie: the lowest id, as in llama.cpp
        assert s.sample(ctx) == 7
        logits[[3, 5]] = np.nan  # llama.cpp's comparisons skip NaN (numpy's argmax stops)
        assert s.sample(ctx) == 7
    finally:
        s.close()
        ctx.close()


def test_greedy_under_a_grammar_is_the_likeliest_allowed_token(model, monkeypatch):
    """The likeliest tokens are checked one by one before the grammar is applied to the
    whole vocabulary: the same token either way, whatever the ties."""
    greedy = GenerationParams(temperature=0.0, repeat_penalty=1.0)
    s = Sampler.for_params(greedy, model, grammar='root ::= "yes" | "no" | "maybe"')
    try:
        n = model.n_vocab
        allowed = [t for t in range(n) if s._allowed(t)]
        assert 0 < len(allowed) < GREEDY_CHECKED < n
        full = s._constrained
        whole: list[int] = []
        monkeypatch.setattr(s, "_constrained", lambda lg: whole.append(1) or full(lg))
        rng = np.random.default_rng(0)
        for trial in range(400):
            logits = rng.normal(size=n).astype(np.float32)
            case = trial % 5
            if case == 0:  # an allowed token among the likeliest: no pass over the vocabulary
                logits[allowed[trial % len(allowed)]] = logits.max() + rng.uniform(-0.5, 0.0)
            elif case == 1:  # many ties, at the edge of the tokens checked too
                logits = np.round(logits * 2) / 2
            elif case == 2:  # every allowed token far below the ones checked
                logits[allowed] -= 10.0
            elif case == 3:
                logits[:] = 0.0
            else:
                logits[allowed] = logits.max()  # allowed tokens tie for first
            before = len(whole)
            got = s._greedy_allowed(logits)
            assert got == full(logits) and got in allowed, trial
            if case in (0, 4):
                assert len(whole) == before, trial
    finally:
        s.close()
