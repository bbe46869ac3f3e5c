"""Benchmark layouts read into contexts and choices as the harness builds them."""

from __future__ import annotations

import json

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.evaluate import datasets
from pocketlm.services.evaluate.generation import GenTask, load_tasks, score


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_generic_jsonl_question_and_context(tmp_path):
    f = write_jsonl(
        tmp_path / "g.jsonl",
        [
            {"question": "2+2?", "choices": ["3", "4"], "answer": 1},
            {"question": "Sky?", "choices": ["blue", "green"], "answer": "blue"},
            {"context": "The cat", "choices": [" sat", " flew", " ran"], "answer": "C"},
        ],
    )
    items = datasets.load(f)
    assert items[0].context == "Question: 2+2?\nAnswer:" and items[0].choices == (" 3", " 4")
    assert [i.answer for i in items] == [1, 0, 2]
    assert items[2].context == "The cat" and items[2].choices == (" sat", " flew", " ran")
    assert datasets.detect_format(f) == "jsonl"


def test_piqa_with_labels_file(tmp_path):
    f = write_jsonl(
        tmp_path / "valid.jsonl",
        [
            {"goal": "Open a jar", "sol1": "twist", "sol2": "hit"},
            {"goal": "Dry hair", "sol1": "towel", "sol2": "soup"},
        ],
    )
    (tmp_path / "labels.lst").write_text("0\n1\n")
    items = datasets.load(f, labels=tmp_path / "labels.lst")
    assert datasets.detect_format(f) == "piqa"
    assert items[0].context == "Question: Open a jar\nAnswer:"
    assert items[0].choices == (" twist", " hit") and [i.answer for i in items] == [0, 1]
    with pytest.raises(UsageError, match="labels="):  # the Python spelling
        datasets.load(f)
    (tmp_path / "bad.lst").write_text("0\n")
    with pytest.raises(UsageError, match="1 labels for 2"):
        datasets.load(f, labels=tmp_path / "bad.lst")


def test_hellaswag_preprocessing(tmp_path):
    f = write_jsonl(
        tmp_path / "h.jsonl",
        [
            {
                "activity_label": "Removing ice",
                "ctx_a": "A man [title] scrapes.",
                "ctx_b": "he",
                "endings": ["uses a  brush.", "eats [header] it."],
                "label": "1",
            }
        ],
    )
    (item,) = datasets.load(f)
    assert datasets.detect_format(f) == "hellaswag"
    assert item.context == "Removing ice: A man. scrapes. He"
    assert item.choices == (" uses a brush.", " eats it.") and item.answer == 1


def test_arc_both_layouts_and_numeric_labels(tmp_path):
    f = write_jsonl(
        tmp_path / "arc.jsonl",
        [
            {
                "question": {
                    "stem": "Which?",
                    "choices": [{"text": "x", "label": "1"}, {"text": "y", "label": "2"}],
                },
                "answerKey": "2",
            },
            {
                "question": "What?",
                "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]},
                "answerKey": "C",
            },
        ],
    )
    items = datasets.load(f)
    assert datasets.detect_format(f) == "arc"
    assert items[0].context == "Question: Which?\nAnswer:" and items[0].answer == 1
    assert items[1].choices == (" a", " b", " c") and items[1].answer == 2


def test_mmlu_csv(tmp_path):
    f = tmp_path / "high_school_physics_test.csv"
    f.write_text('"What is g?",9.8,1,0,3,A\nSpeed of light?,1,2,3e8,4,C\n')
    items = datasets.load(f)
    assert items[0].preamble.startswith(
        "The following are multiple choice questions (with answers) about high school physics."
    )
    assert items[0].context == "What is g?\nA. 9.8\nB. 1\nC. 0\nD. 3\nAnswer:"
    assert items[0].choices == (" A", " B", " C", " D") and items[1].answer == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "q", "choices": ["a"], "answer": 0}\n', "2 or more"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 5}\n', "out of range"),
        ('{"question": "q", "choices": ["a", "b"], "answer": "z"}\n', "matches no choice"),
        ("not json\n", "not JSON"),
        ('{"text": 1}\n', "cannot tell the layout"),
        ("", "no items"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(UsageError, match=message):
        datasets.load(f)


def test_generation_scorers(tmp_path):
    assert score(GenTask("p", answer="Paris"), "  paris ")
    assert not score(GenTask("p", answer="Paris"), "It is Paris")
    assert score(GenTask("p", regex=r"\bParis\b"), "It is Paris.")
    assert score(GenTask("p", json_field="a.b", answer="3"), 'ok: {"a": {"b": 3}} done')
    assert not score(GenTask("p", json_field="a", answer="3"), "{broken")
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "x", "answer": "y"}\n{"prompt": "x", "regex": "("}\n')
    with pytest.raises(UsageError, match="invalid regex"):
        load_tasks(f)
