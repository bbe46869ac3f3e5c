"""The continuous-batching engine on a tiny real model: prefix reuse gives the same tokens."""

from __future__ import annotations

import threading

import llama_cpp as ll
import pytest

from pocketlm.engine.batch import BatchEngine, Finished, Request, TokenEvent
from pocketlm.engine.llama import Model, Sampler
from pocketlm.params import GenerationParams
from tests.conftest import scheduler_held


@pytest.fixture(scope="module")
def model(tiny_gguf):
    m = Model(str(tiny_gguf))
    yield m
    m.close()


def generate(engine: BatchEngine, tokens: list[int], max_tokens: int) -> tuple[list[int], Finished]:
    out: list[int] = []
    done = threading.Event()
    box: list[Finished] = []

    def on_token(e: TokenEvent) -> bool:
        out.append(e.token)
        return True

    def on_done(f: Finished) -> None:
        box.append(f)
        done.set()

    engine.submit(
        Request(
            tokens,
            GenerationParams(temperature=0.0, max_tokens=max_tokens, repeat_penalty=1.0, seed=0),
            on_token=on_token,
            on_done=on_done,
        )
    )
    assert done.wait(120), "no answer in 120 s"
    return out, box[0]


def prompt(model: Model, text: str) -> list[int]:
    return model.tokenize(text, add_special=True)


def test_prefix_copied_from_a_busy_sequence_gives_the_same_tokens(model):
    shared = "the cat sat on the mat and the dog ran in the world " * 6
    a, b = prompt(model, shared + "hello"), prompt(model, shared + "there the cat")
    fresh = BatchEngine(model, n_seq=2, n_ctx_seq=512, n_threads=1)
    want, _ = generate(fresh, b, 12)
    fresh.close()

    engine = BatchEngine(model, n_seq=2, n_ctx_seq=4096, n_threads=1)
    busy, stop, a_done = threading.Event(), threading.Event(), threading.Event()

    def on_token(e: TokenEvent) -> bool:
        busy.set()
        return not stop.is_set()

    engine.submit(
        Request(
            a,
            GenerationParams(temperature=0.0, max_tokens=4000, repeat_penalty=1.0, seed=0),
            on_token=on_token,
            on_done=lambda f: a_done.set(),
        )
    )
    assert busy.wait(60)  # a is generating in slot 0: b goes to slot 1 and copies a's prefix
    got, info = generate(engine, b, 12)
    assert not a_done.is_set()  # a was generating all along: the prefix came from a busy slot
    stop.set()
    assert a_done.wait(60)
    engine.close()
    common = sum(1 for _ in zip(a, b))
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            common = i
            break
    assert info.cached_tokens == common > 50
    assert got == want


def test_a_finished_prompt_is_reused_by_its_own_slot(model):
    engine = BatchEngine(model, n_seq=2, n_ctx_seq=512, n_threads=1)
    p = prompt(model, "the dog ran in the world " * 10)
    first, f1 = generate(engine, p, 8)
    second, f2 = generate(engine, p, 8)
    engine.close()
    assert f1.cached_tokens == 0 and f2.cached_tokens == len(p) - 1  # the last is evaluated
    assert first == second


def test_call_runs_on_the_scheduler_thread_between_steps(model):
    engine = BatchEngine(model, n_seq=2, n_ctx_seq=256, n_threads=1)
    try:
        assert engine.call(lambda: threading.current_thread().name).result(10) == "pocketlm-batch"
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0).result(10)
        out, done = generate(engine, prompt(model, "the cat sat"), 8)  # still serving
        assert len(out) == 8 and done.reason == "length"
    finally:
        engine.close()
    assert engine.call(lambda: 1).cancelled()  # a closed engine runs nothing


def test_a_burst_keeps_each_request_on_its_own_cached_prompt(model):
    """Requests admitted together are placed longest cached prefix first: one whose cache
    was evicted must not take the slot of the next one's cache (and so on down the burst)."""
    shared = "the cat sat on the mat and the dog ran in the world " * 2
    prompts = [
        prompt(model, shared + tail)
        for tail in ("red apple pie", "blue sky high", "green sea deep", "old tower top")
    ]
    engine = BatchEngine(model, n_seq=4, n_ctx_seq=512, n_threads=1)
    try:
        for p in prompts:
            generate(engine, p, 4)
        generate(engine, prompt(model, "a different text " * 12), 2)  # evicts one cache

        done: dict[int, Finished] = {}
        finished = threading.Semaphore(0)

        def on_done(i: int, f: Finished) -> None:
            done[i] = f
            finished.release()

        with scheduler_held(engine):  # the burst is admitted in one go
            for i, p in enumerate(prompts):
                engine.submit(
                    Request(
                        p,
                        GenerationParams(temperature=0.0, max_tokens=2, repeat_penalty=1.0, seed=0),
                        on_done=lambda f, i=i: on_done(i, f),
                    )
                )
        for _ in prompts:
            assert finished.acquire(timeout=60)
    finally:
        engine.close()
    whole = [i for i, p in enumerate(prompts) if done[i].cached_tokens == len(p) - 1]
    assert len(whole) == 3  # all but the evicted one reuse their whole prompt
    (evicted,) = set(range(4)) - set(whole)
    assert done[evicted].cached_tokens >= len(prompt(model, shared)) - 2  # copied from another


def test_a_burst_fills_the_free_slots_before_the_queue_counts(model):
    """Submitted faster than the scheduler admits them, requests that free slots will take
    are not "waiting": with 4 free slots and a queue of 1, 5 are accepted, the 6th is 503."""
    from pocketlm.engine.batch import Overloaded

    engine = BatchEngine(model, n_seq=4, n_ctx_seq=256, n_threads=1, max_queue=1)
    try:
        finished = threading.Semaphore(0)
        with scheduler_held(engine):  # the scheduler admits nothing meanwhile
            for i in range(5):
                engine.submit(
                    Request(
                        prompt(model, f"the cat {i}"),
                        GenerationParams(temperature=0.0, max_tokens=2, repeat_penalty=1.0, seed=0),
                        on_done=lambda f: finished.release(),
                    )
                )
            with pytest.raises(Overloaded):
                engine.submit(
                    Request(
                        prompt(model, "one too many"),
                        GenerationParams(max_tokens=2, repeat_penalty=1.0, seed=0),
                    )
                )
        for _ in range(5):
            assert finished.acquire(timeout=60)
    finally:
        engine.close()


def test_a_steps_callbacks_follow_all_its_draws_then_after_step_runs_once(model):
    """Each step draws every sequence's token before any consumer hears of one, then calls
    after_step once (the server gathers its event-loop wakeups there)."""
    log: list[tuple] = []
    engine = BatchEngine(
        model, n_seq=3, n_ctx_seq=256, n_threads=1, after_step=lambda: log.append(("after",))
    )
    drawn = []
    real = Sampler.sample

    def spy(self, ctx, index=-1):
        tok = real(self, ctx, index)
        drawn.append(tok)
        log.append(("draw", tok))
        return tok

    finished = threading.Semaphore(0)
    try:
        Sampler.sample = spy
        with scheduler_held(engine):  # the three are admitted together
            for i in range(3):
                engine.submit(
                    Request(
                        prompt(model, f"the cat {i}"),
                        GenerationParams(temperature=0.0, max_tokens=5, repeat_penalty=1.0, seed=0),
                        on_token=lambda e, i=i: log.append(("tok", i)) or True,
                        on_done=lambda f: finished.release(),
                    )
                )
        for _ in range(3):
            assert finished.acquire(timeout=60)
    finally:
        Sampler.sample = real
        engine.close()
    steps = [s for s in _split(log) if s]
    assert len(steps) == 5  # 5 tokens each, all three in every step
    for step in steps:
        kinds = [e[0] for e in step]
        assert kinds == ["draw"] * 3 + ["tok"] * 3, kinds


def _split(log: list[tuple]) -> list[list[tuple]]:
    out: list[list[tuple]] = [[]]
    for e in log:
        if e[0] == "after":
            out.append([])
        else:
            out[-1].append(e)
    return out


def _evict_and_return(
    model, cache_ram_bytes: int, returning: list[list[int]], other: str = "a different text"
) -> list:
    """Two slots: each prompt of ``returning`` runs, then two others take both slots, then
    the returning prompts run again; their Finished records, and the engine's counter. The
    others are too short to be kept in RAM themselves (HOST_CACHE_MIN_TOKENS)."""
    others = [prompt(model, f"{other} {i}") for i in range(2)]
    engine = BatchEngine(
        model, n_seq=2, n_ctx_seq=512, n_threads=1, cache_ram_bytes=cache_ram_bytes
    )
    try:
        firsts = [generate(engine, p, 8)[0] for p in returning]
        for p in others:
            generate(engine, p, 4)  # both slots go to these: the returning caches are evicted
        again = [generate(engine, p, 8) for p in returning]
        return firsts, again, engine.tokens_restored
    finally:
        engine.close()


def test_an_evicted_prompt_is_copied_back_from_ram_and_gives_the_same_tokens(model):
    long = prompt(model, "the cat sat on the mat and the dog ran in the world " * 6)
    (first,), ((out, done),), restored = _evict_and_return(model, 64 << 20, [long])
    assert done.cached_tokens == len(long) - 1  # all but the last token, which gives logits
    assert restored == len(long) - 1
    assert out == first  # greedy: the restored KV is the evaluated one
    (first,), ((out, done),), restored = _evict_and_return(model, 0, [long])  # no RAM tier
    assert done.cached_tokens < 16 and restored == 0 and out == first


def test_the_ram_tier_keeps_within_its_budget_least_recently_used_out_first(model):
    a = prompt(model, "the cat sat on the mat and the dog ran in the world " * 6)
    b = prompt(model, "hello world the sun is in the sky and the sea is blue " * 6)
    engine = BatchEngine(model, n_seq=1, n_ctx_seq=512, n_threads=1)
    try:
        generate(engine, a, 8)
        one = ll.llama_state_seq_get_size_ext(engine.ctx._ptr, 0, 0)  # one entry's bytes
    finally:
        engine.close()
    _, again, _ = _evict_and_return(model, int(one * 1.5), [a, b])  # room for one entry only
    (_, done_a), (_, done_b) = again
    assert done_a.cached_tokens < 16  # a went out when b came in
    assert done_b.cached_tokens == len(b) - 1


def test_a_restore_that_llama_cpp_refuses_falls_back_to_evaluating(model, monkeypatch):
    long = prompt(model, "the cat sat on the mat and the dog ran in the world " * 6)
    monkeypatch.setattr(ll, "llama_state_seq_set_data_ext", lambda *a: 0)  # refuses every copy
    # the others share the start of `long`: the slot it comes back to holds part of it
    (first,), ((out, done),), restored = _evict_and_return(
        model, 64 << 20, [long], other="the cat sat on the mat"
    )
    assert restored == 0 and done.cached_tokens == 0  # the failed copy emptied the slot
    assert out == first  # evaluated again, from an empty sequence: the same tokens


def test_a_sampler_that_cannot_be_built_fails_its_request_only(model):
    """A request whose sampler chain raises (here: a window too large for a deque, past
    validation) fails alone; the scheduler thread serves the next request."""
    engine = BatchEngine(model, n_seq=2, n_ctx_seq=256, n_threads=1)
    try:
        bad = GenerationParams.model_construct(
            **{**GenerationParams().model_dump(), "repeat_last_n": 2**63}
        )
        done: list[Finished] = []
        ended = threading.Event()
        engine.submit(
            Request(prompt(model, "the cat"), bad, on_done=lambda f: (done.append(f), ended.set()))
        )
        assert ended.wait(30) and done[0].reason == "error"
        tokens, finished = generate(engine, prompt(model, "the cat"), max_tokens=3)
        assert finished.reason == "length" and len(tokens) == 3
    finally:
        engine.close()
