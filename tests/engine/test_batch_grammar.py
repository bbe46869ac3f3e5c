"""Grammars in the batching engine: a Grammar parsed beforehand is only copied on the
scheduler thread (a parse there stalled every sequence), GBNF text still works."""

from __future__ import annotations

import threading

import llama_cpp as ll
import pytest

from pocketlm.engine.batch import BatchEngine, Request
from pocketlm.engine.llama import Grammar, Model
from pocketlm.params import GenerationParams
from tests.conftest import run_request

YES_NO = 'root ::= "yes" | "no"'


@pytest.fixture(scope="module")
def model(tiny_gguf):
    m = Model(str(tiny_gguf))
    yield m
    m.close()


@pytest.fixture
def engine(model):
    e = BatchEngine(model, n_seq=2, n_ctx_seq=256, n_threads=1)
    yield e
    e.close()


def answers(model: Model, engine: BatchEngine, grammar, seeds=range(4)) -> set[str]:
    got = set()
    for seed in seeds:
        req = Request(
            model.tokenize("the cat"),
            GenerationParams(temperature=1.0, seed=seed, max_tokens=8, repeat_penalty=1.0),
            grammar=grammar,
        )
        tokens, done = run_request(engine, req)
        assert done.reason == "stop", done
        got.add(model.detokenize(tokens))
    return got


def test_gbnf_text_still_constrains_a_request(model, engine):
    assert answers(model, engine, YES_NO) <= {"yes", "no"}


def test_a_prepared_grammar_is_copied_not_parsed_on_the_scheduler_thread(
    model, engine, monkeypatch
):
    parsed_on: list[str] = []
    real = ll.llama_sampler_init_grammar

    def spy(*args):
        parsed_on.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(ll, "llama_sampler_init_grammar", spy)
    grammar = Grammar(YES_NO, Model(model.path, vocab_only=True))  # as services/grammar.py does
    assert answers(model, engine, grammar) <= {"yes", "no"}
    assert parsed_on == ["MainThread"]  # once, here; the requests only copied it


def test_one_grammar_serves_sequences_at_once(model, engine):
    grammar = Grammar(YES_NO, model)
    boxes = []
    for seed in range(2):
        req = Request(
            model.tokenize("the dog"),
            GenerationParams(temperature=1.0, seed=seed, max_tokens=8, repeat_penalty=1.0),
            grammar=grammar,
        )
        out: list[int] = []
        done = threading.Event()
        req.on_token = lambda e, out=out: out.append(e.token) or True
        req.on_done = lambda f, done=done: done.set()
        boxes.append((out, done))
        engine.submit(req)
    for out, done in boxes:
        assert done.wait(120)
        assert model.detokenize(out) in ("yes", "no")


def test_a_grammar_for_another_vocabulary_fails_its_request_only(model, engine):
    grammar = Grammar(YES_NO, model)
    grammar.n_vocab = model.n_vocab - 1  # as if prepared for another model
    tokens, done = run_request(
        engine,
        Request(
            model.tokenize("the cat"),
            GenerationParams(max_tokens=8, repeat_penalty=1.0, seed=0),
            grammar=grammar,
        ),
    )
    assert done.reason == "error" and "vocabulary of" in done.error, done
    assert answers(model, engine, YES_NO, seeds=[0]) <= {"yes", "no"}  # the engine goes on


def test_an_invalid_grammar_is_refused_when_prepared(model):
    with pytest.raises(Exception, match="invalid grammar"):
        Grammar("root ::= (", model)
