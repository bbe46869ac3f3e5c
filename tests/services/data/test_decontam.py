"""Decontamination: a training text sharing a 13-gram with an evaluation text (or holding a
short evaluation text whole) is found, in every file layout; others are not."""

from __future__ import annotations

import json

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.data import decontam
from pocketlm.services.data.text import words
from tests.services.data.corpus import CLEAN

QUESTION = "Which planet in the solar system has the most moons today?"  # 11 words


def test_the_default_files_are_the_shipped_evaluation_texts():
    names = [p.name for p in decontam.default_files()]
    assert names[0] == "calibration.txt"
    assert "tickets.jsonl" in names  # a source checkout: benchmarks/data/tasks


def test_a_shared_13_gram_is_found_whatever_the_case_and_punctuation(tmp_path):
    evals = tmp_path / "eval.txt"
    evals.write_text(CLEAN[0])
    index = decontam.build([evals])
    quoted = "As the guide says: " + CLEAN[0].upper().replace(",", " ;") + " The end."
    file, shared = index.match(words(quoted))
    assert file == str(evals) and len(shared.split()) == 13
    twelve = " ".join(CLEAN[0].split()[:12])  # 12 words of it: no 13-gram in common
    assert index.match(words(twelve + " and then something else entirely")) is None
    assert index.match(words(CLEAN[1])) is None


def test_records_csv_rows_and_short_texts(tmp_path):
    jsonl = tmp_path / "mc.jsonl"
    jsonl.write_text(json.dumps({"question": QUESTION, "choices": ["Saturn", "Mars"]}) + "\n")
    csv_file = tmp_path / "mmlu.csv"
    csv_file.write_text(f'"{CLEAN[3]}",A,B,C,D,A\n')
    index = decontam.build([tmp_path])  # a folder: its files
    assert index.files == [str(jsonl), str(csv_file)]
    hit = index.match(words(f"Quiz time. {QUESTION} Think about it."))
    assert hit == (str(jsonl), " ".join(words(QUESTION)))
    assert index.match(words("Which planet has the most moons?")) is None  # not whole
    assert index.match(words(CLEAN[3]))[0] == str(csv_file)
    assert index.to_dict()["short_texts"] >= 1


def test_a_missing_evaluation_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such evaluation file"):
        decontam.build([tmp_path / "nope.jsonl"])
