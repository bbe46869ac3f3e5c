"""JSON schemas from clients become grammars at a bounded cost, without endangering the server
(services/grammar.py): each limit refuses with its name and value, crashes stay in the check
process, repeated schemas are cached, and preparing one never stalls other sequences."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from pocketlm.engine.batch import BatchEngine, Finished, Request, TokenEvent
from pocketlm.engine.llama import Model
from pocketlm.errors import UsageError
from pocketlm.params import GenerationParams
from pocketlm.services.grammar import GrammarBuilder, Limits, json_grammar
from tests.conftest import REPO, run_request

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "color", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model(tiny_gguf):
    m = Model(str(tiny_gguf))
    yield m
    m.close()


def refusal(builder: GrammarBuilder, schema, path, **kw) -> str:
    with pytest.raises(UsageError) as e:
        builder.build(schema, str(path), **kw)
    return str(e.value)


def nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    "schema, needles",
    [
        ({"type": "string", "maxLength": 20_000}, ["maxLength 20000", "limit of 1024"]),
        ({"type": "string", "minLength": 5000}, ["minLength 5000", "1024"]),
        ({"type": "array", "items": {}, "minItems": 1_000_000_000}, ["minItems 1000000000"]),
        ({"type": "array", "items": {}, "maxItems": 2000}, ["maxItems 2000"]),
        ({"type": "object", "minProperties": 4096}, ["minProperties 4096"]),
        ({"type": "object", "maxProperties": 4096}, ["maxProperties 4096"]),
        ({"type": "string", "maxLength": 3.5}, ["maxLength must be a whole number", "3.5"]),
        ({"enum": [f"value-{i}" for i in range(20_000)]}, ["enum/const values (20000)", "1000"]),
        (
            {
                "type": "object",
                "properties": {
                    "a": {"enum": list(range(900))},
                    **{f"c{i}": {"const": i} for i in range(200)},
                },
            },
            ["enum/const values (1100)", "1000"],
        ),
        ({"anyOf": [{"type": "string"}] * 300}, ["anyOf/oneOf/allOf branches (300)", "256"]),
        ({"oneOf": [{"type": "string"}] * 300}, ["anyOf/oneOf/allOf branches (300)", "256"]),
        (
            {"type": "object", "properties": {f"p{i}": {} for i in range(1001)}},
            ["properties (1001)", "1000"],
        ),
        ({"type": "string", "examples": list(range(20_000))}, ["nodes (more than 10000", "10000"]),
        (nested(20), ["nesting depth (42 levels)", "limit of 32"]),
        ({"type": "string", "description": "x" * 70_000}, ["size (70", "65536"]),
        ({"type": "string", "pattern": "^" + "a" * 2000 + "$"}, ["pattern's length (2002", "1024"]),
        ({"type": "string", "pattern": "^a{1,20000}$"}, ["quantifier {1,20000}", "1024"]),
        ({"$ref": "https://example.com/s.json"}, ["$ref 'https://example.com/s.json'"]),
        ([1, 2], ["must be an object"]),
    ],
)
def test_each_limit_is_refused_at_once_with_its_name_and_value(tiny_gguf, schema, needles):
    builder = GrammarBuilder()
    t0 = time.perf_counter()
    message = refusal(builder, schema, tiny_gguf)
    assert time.perf_counter() - t0 < 1.0
    assert message.startswith("invalid value for 'response_format': "), message
    for needle in needles:
        assert needle in message, message
    assert builder.checks_run == 0  # refused before any process started


def test_the_field_named_is_the_callers(tiny_gguf):
    message = refusal(
        GrammarBuilder(), {"type": "string", "maxLength": 99_999}, tiny_gguf, field="format"
    )
    assert message.startswith("invalid value for 'format': maxLength 99999"), message


@pytest.mark.parametrize(
    "limits, needles",
    [
        (Limits(grammar_bytes=300), ["grammar size (", "limit of 300"]),
        (Limits(step_ms=1e-6, step_us_per_token=0), ["ms of CPU for a draw", "limit of 1e-06 ms"]),
        (Limits(copy_ms=1e-6), ["ms of CPU for a copy per request", "limit of 1e-06 ms"]),
        (Limits(parse_ms=1e-6), ["ms of CPU for a parse", "limit of 1e-06 ms"]),
    ],
)
def test_measured_costs_are_refused_with_their_name(tiny_gguf, limits, needles):
    builder = GrammarBuilder(limits)
    message = refusal(builder, PERSON, tiny_gguf)
    for needle in needles:
        assert needle in message, message
    refusal(builder, PERSON, tiny_gguf)
    assert builder.checks_run == 1  # the refusal is cached too


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: if the server-side process crashed, the test fails
    instead of taking pytest down."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_max_length_20000_is_refused_without_crashing(tiny_gguf):
    proc = run_python(
        "from pocketlm.services.grammar import json_grammar\n"
        "from pocketlm.errors import UsageError\n"
        "try:\n"
        f"    json_grammar({{'type': 'string', 'maxLength': 20000}}, {str(tiny_gguf)!r})\n"
        "except UsageError as e:\n"
        "    print(e)\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "maxLength 20000 exceeds pocketlm's limit of 1024" in proc.stdout


def test_a_grammar_that_crashes_the_parser_is_refused_and_the_caller_lives(tiny_gguf):
    """A pattern nested 5,000 groups deep, with the static limits lifted: llama.cpp's parser
    recurses once per group and overflows the check's small stack (SIGSEGV there)."""
    pattern = "^" + "(" * 5000 + "a" + ")" * 5000 + "$"
    proc = run_python(
        "from pocketlm.services.grammar import GrammarBuilder, Limits\n"
        "from pocketlm.errors import UsageError\n"
        "b = GrammarBuilder(Limits(pattern_chars=10**6))\n"
        "try:\n"
        f"    b.build({{'type': 'string', 'pattern': {pattern!r}}}, {str(tiny_gguf)!r})\n"
        "except UsageError as e:\n"
        "    print(e)\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "could not be built safely (the check crashed with SIGSEGV)" in proc.stdout


def test_a_check_that_runs_too_long_is_refused(tiny_gguf):
    message = refusal(GrammarBuilder(Limits(check_s=0.01)), PERSON, tiny_gguf)
    assert "could not be built safely (it took longer than 0.01 s)" in message


def test_a_check_that_needs_too_much_memory_is_refused(tiny_gguf):
    message = refusal(GrammarBuilder(Limits(check_mib=1)), PERSON, tiny_gguf)
    assert "could not be built safely" in message


def test_a_repeated_schema_is_prepared_once(tiny_gguf):
    builder = GrammarBuilder()
    t0 = time.perf_counter()
    first = builder.build(PERSON, str(tiny_gguf))
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = builder.build(json.loads(json.dumps(PERSON)), str(tiny_gguf))  # an equal copy
    warm = time.perf_counter() - t0
    assert again is first
    assert builder.checks_run == 1
    assert warm < cold / 20, (cold, warm)


def test_the_same_schema_asked_at_once_is_checked_once(tiny_gguf):
    builder = GrammarBuilder()
    got: list = []
    threads = [
        threading.Thread(target=lambda: got.append(builder.build(PERSON, str(tiny_gguf))))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and got[0] is got[1] is got[2]
    assert builder.checks_run == 1


def test_a_schema_constrains_generation_end_to_end(model, tiny_gguf):
    grammar = json_grammar(PERSON, str(tiny_gguf))
    engine = BatchEngine(model, n_seq=2, n_ctx_seq=512, n_threads=1)
    try:
        for seed in range(3):
            req = Request(
                model.tokenize("the cat"),
                GenerationParams(temperature=1.0, seed=seed, max_tokens=300, repeat_penalty=1.0),
                grammar=grammar,
            )
            tokens, done = run_request(engine, req)
            assert done.reason == "stop", done
            value = json.loads(model.detokenize(tokens))
            assert set(value) == {"name", "age", "color", "ok"}
            assert isinstance(value["name"], str) and len(value["name"]) <= 12
            assert isinstance(value["age"], int) and isinstance(value["ok"], bool)
            assert value["color"] in ("red", "green", "blue")
    finally:
        engine.close()


def test_no_schema_means_any_json_object(model, tiny_gguf):
    grammar = json_grammar(None, str(tiny_gguf))
    engine = BatchEngine(model, n_seq=1, n_ctx_seq=512, n_threads=1)
    try:
        req = Request(
            model.tokenize("the cat"),
            GenerationParams(temperature=1.0, max_tokens=400, repeat_penalty=1.0, seed=0),
            grammar=grammar,
        )
        tokens, done = run_request(engine, req)
    finally:
        engine.close()
    text = model.detokenize(tokens)
    assert text.lstrip().startswith("{"), text
    if done.reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_preparing_a_schema_does_not_stall_other_sequences(model, tiny_gguf):
    """One sequence streams while a new (large but allowed) schema is prepared and its
    request runs: the stream's longest pause between two tokens stays short."""
    engine = BatchEngine(model, n_seq=2, n_ctx_seq=16_384, n_threads=1)
    times: list[float] = []
    started, stop, ended = threading.Event(), threading.Event(), threading.Event()
    end: list[Finished] = []

    def on_token(e: TokenEvent) -> bool:
        times.append(time.perf_counter())
        started.set()
        return not stop.is_set()

    # never ends by itself (the grammar admits no end): it runs until stopped
    engine.submit(
        Request(
            model.tokenize("the cat"),
            GenerationParams(temperature=1.0, max_tokens=16_000, repeat_penalty=1.0, seed=0),
            grammar="root ::= [a-z] root",
            on_token=on_token,
            on_done=lambda f: (end.append(f), ended.set()),
        )
    )
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 1000},
            "kind": {"enum": [f"kind-{i}" for i in range(300)]},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 500},
        },
        "required": ["name", "kind"],
    }
    try:
        assert started.wait(60)
        t0 = time.perf_counter()
        grammar = GrammarBuilder().build(schema, str(tiny_gguf))
        _, done = run_request(
            engine,
            Request(
                model.tokenize("hello"),
                GenerationParams(temperature=1.0, max_tokens=50, repeat_penalty=1.0, seed=0),
                grammar=grammar,
            ),
        )
        t1 = time.perf_counter()
        assert done.reason in ("stop", "length"), done
        assert not ended.is_set(), f"the stream ended before the test did: {end}"
    finally:
        stop.set()
        assert ended.wait(60)
        engine.close()
    window = [t for t in times if t0 <= t <= t1]
    gaps = [b - a for a, b in zip(window, window[1:])]
    assert len(window) > 20, len(window)
    assert max(gaps) < 0.5, f"the stream paused {max(gaps):.2f} s"
