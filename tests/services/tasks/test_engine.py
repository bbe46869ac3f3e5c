"""The task engine on a tiny real model: label scoring with a cached prefix, classification,
extraction forced by a schema (success, failure, retry) and summaries in parts."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.evaluate.scoring import Group, Scorer
from pocketlm.services.tasks.classify import Classifier, Label, load_examples, parse_labels
from pocketlm.services.tasks.engine import LabelSet, TaskEngine
from pocketlm.services.tasks.extract import Extractor, grounded, load_schema, null_strings
from pocketlm.services.tasks.job import RecordFailed
from pocketlm.services.tasks.records import Record
from pocketlm.services.tasks.summarize import Summarizer


@pytest.fixture(scope="module")
def engine(tiny_gguf):
    e = TaskEngine(str(tiny_gguf), n_seq=4, n_ctx_seq=512, threads=1)
    yield e
    e.close()


def test_a_cached_prefix_scores_like_evaluating_it_again(tiny_gguf, engine):
    scorer = Scorer(engine.model, n_ctx=1024, n_threads=1, n_seq=8)
    try:
        prefix = engine.tokenize("Shared instructions for every record of a job.")
        groups = [
            Group(prefix + engine.tokenize(f" record number {i}"), [[5, 6], [7], [5, 9, 9]])
            for i in range(5)
        ]
        plain = scorer.score(groups)
        scorer.cache_prefix(prefix)
        cached = scorer.score(groups)
        other = Group(engine.tokenize("no shared start"), [[5], [6]])
        cached_other = scorer.score([other])  # a group without the prefix still scores
        scorer.cache_prefix([])
        assert cached_other[0][1].logprob == pytest.approx(
            scorer.score([other])[0][1].logprob, rel=1e-3
        )
    finally:
        scorer.close()
    for a, b in zip(plain, cached):
        for x, y in zip(a, b):
            # batches of other shapes round differently in llama.cpp's CPU kernels
            assert x.logprob == pytest.approx(y.logprob, rel=1e-3)
            assert x.n_tokens == y.n_tokens


def test_scores_from_many_threads_come_back_to_their_callers(engine):
    context = engine.prompt([{"role": "user", "content": "pick one"}])
    labels = engine.label_tokens(["alpha", "beta", "gamma"])
    alone = engine.score(context, labels.continuations)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda _: engine.score(context, labels.continuations), range(8)))
    for got in together:
        assert got == pytest.approx(alone, abs=0.05)  # scored in other batches: rounding


def test_labels_that_begin_alike_are_scored_whole(engine):
    whole = engine.label_tokens(["spam", "spam offer"])
    assert whole.owner == [0, 0, 1, 1]  # each as written and capitalised
    assert all(c[-1] == engine._end for c in whole.continuations)  # then the answer's end
    first = engine.label_tokens(["alpha", "beta"])
    assert all(len(c) == 1 for c in first.continuations)  # their first tokens decide


def test_label_spellings_add_up_to_one_probability():
    labels = LabelSet(["yes", "no"], [[1], [2], [3], [4]], [0, 0, 1, 1])
    probs = labels.probs([math.log(0.2), math.log(0.2), math.log(0.5), math.log(0.1)])
    assert probs == pytest.approx([0.4, 0.6])
    assert labels.probs([0.0, 0.0, 0.0, 0.0], prior=[0.8, 0.2]) == pytest.approx([0.2, 0.8])


def test_classify_gives_every_label_a_probability(engine):
    labels = parse_labels("spam,ham,eggs")
    c = Classifier(engine, labels)
    out = c(Record(1, "win a free cruise now", {}))
    assert set(out["probs"]) == {"spam", "ham", "eggs"}
    assert sum(out["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert out["label"] == max(out["probs"], key=out["probs"].get)


def test_classify_cuts_a_record_too_long_for_the_context_and_says_so(engine):
    c = Classifier(engine, parse_labels("a,b"))
    out = c(Record(1, "word " * 2000, {}))
    assert out["truncated"] is True


def test_labels_and_examples_files(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# triage\nurgent: needs action today\nlater: can wait\n")
    assert parse_labels(str(f)) == [
        Label("urgent", "needs action today"),
        Label("later", "can wait"),
    ]
    j = tmp_path / "labels.json"
    j.write_text(json.dumps({"x": "first", "y": "second"}))
    assert [lab.name for lab in parse_labels(str(j))] == ["x", "y"]
    with pytest.raises(UsageError, match="at least 2 labels"):
        parse_labels("only")
    with pytest.raises(UsageError, match="given twice"):
        parse_labels("a,b,a")
    big = tmp_path / "big.txt"
    big.write_text("label: " + "x" * (300 * 1024))
    with pytest.raises(UsageError, match="larger than 256 KiB"):
        parse_labels(str(big))
    ex = tmp_path / "ex.jsonl"
    ex.write_text('{"text": "server down", "label": "urgent"}\n')
    assert load_examples(ex, parse_labels(str(f))) == [("server down", "urgent")]
    ex.write_text('{"text": "server down", "label": "nope"}\n')
    with pytest.raises(UsageError, match="example 1"):
        load_examples(ex, parse_labels(str(f)))


ENUM_SCHEMA = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green"]}, "n": {"type": "integer"}},
    "required": ["colour", "n"],
    "additionalProperties": False,
}


def test_extract_answers_follow_the_schema(tmp_path, engine):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(ENUM_SCHEMA))
    ex = Extractor(engine, load_schema(path), max_tokens=48)
    try:
        out = ex(Record(1, "a red thing, number 7", {}))
    except RecordFailed as e:  # a random model may write a long integer: the reason says so
        assert "did not end within 48 tokens" in str(e)
        return
    assert out["data"]["colour"] in ("red", "green")
    assert isinstance(out["data"]["n"], int)


def test_extract_reports_a_record_it_cannot_finish_after_retrying(engine):
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    ex = Extractor(engine, schema, max_tokens=4, retries=2)  # no JSON object ends in 4 tokens
    with pytest.raises(RecordFailed, match=r"no valid JSON after 3 tries: .*within 4 tokens"):
        ex(Record(1, "anything", {}))


def test_the_check_after_the_grammar_catches_what_grammars_do_not(engine):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 10}},
        "required": ["n"],
    }
    ex = Extractor(engine, schema)
    assert ex.check('{"n": 12}', "stop") == ({"n": 12}, None)
    data, why = ex.check('{"n": 3}', "stop")
    assert data is None and "3 is less than the minimum of 10" in why
    assert "did not end" in ex.check('{"n": 1', "length")[1]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ('["a list"]', "is not a JSON Schema"),
        ('{"type": "objekt"}', "is not a valid JSON Schema"),
        ('{"properties": {"a": {"minLength": -1}}}', "is not a valid JSON Schema"),
    ],
)
def test_bad_schemas_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as e:
        load_schema(path)
    assert "\n" not in str(e.value)


def test_a_long_document_is_summarised_in_parts_then_as_a_whole(engine):
    s = Summarizer(engine, max_tokens=8)
    text = "\n\n".join(f"Section {i}. " + "alpha beta gamma delta. " * 30 for i in range(12))
    assert len(engine.tokenize(text)) > s.room  # it cannot be read in one go
    out = s(Record("doc", text, {}))
    assert out["parts"] > 1 and isinstance(out["summary"], str)
    assert engine.counters.generations >= out["parts"] + 1  # the parts, then the whole


def test_an_empty_document_fails_with_a_reason(engine):
    with pytest.raises(RecordFailed, match="empty"):
        Summarizer(engine, max_tokens=8)(Record(1, "  \n", {}))


def test_a_null_written_as_a_string_is_null_where_the_schema_allows_it():
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": ["string", "null"]},
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
            "to": {"type": "object", "properties": {"email": {"type": ["string", "null"]}}},
        },
    }
    data = {"city": "NULL", "name": "null", "tags": ["None", "x"], "to": {"email": " null "}}
    assert null_strings(data, schema) == {
        "city": None,
        "name": "null",  # a name may not be null: left as written
        "tags": [None, "x"],
        "to": {"email": None},
    }
    assert null_strings({"city": "Nullarbor"}, schema) == {"city": "Nullarbor"}


def test_grounded_makes_a_value_the_text_does_not_hold_null():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "phone": {"type": ["string", "null"]},
            "city": {"type": ["string", "null"]},
            "email": {"type": ["string", "null"]},
        },
    }
    text = "ROSALIND  PRICE\nLondon EC4A 1AB\nT: +44 20 7946 0321"
    data = {
        "name": "Rosalind Price",  # case and spacing ignored: held
        "phone": "+44 20 7946 0321",
        "city": "Zurich",  # invented: made null
        "email": None,
    }
    got, dropped = grounded(data, text, schema)
    assert got == {**data, "city": None} and dropped == ["city"]
    invented_name = {"name": "John Doe", "city": "London"}
    assert grounded(invented_name, text, schema) == (invented_name, [])  # name may not be null
