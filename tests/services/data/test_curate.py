"""`curate` on a file with planted problems: exactly the planted records are dropped, for
the planted reason; the rest are written as they were, in order; bad input fails cleanly."""

from __future__ import annotations

import json

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.data.curate import Settings, curate
from tests.services.data.corpus import CLEAN

EVAL_TEXT = (
    "The committee approved the budget for the new library after a long debate about "
    "parking, opening hours and the cost of heating the reading room in winter."
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" if isinstance(r, dict) else r for r in rows))
    return path


def near_copy(text: str, where: int = -1) -> str:
    """``text`` with one word changed: at the end, 1 of its ~25 word 5-grams differs
    (Jaccard ~0.9); in the middle, 5 do (~0.6)."""
    ws = text.split()
    ws[where] = "notably"
    return " ".join(ws)


FRENCH = (
    "Le petit prince est un roman écrit par Antoine de Saint-Exupéry et publié en 1943 à New "
    "York. Il raconte l'histoire d'un aviateur tombé en panne dans le désert du Sahara."
)


@pytest.fixture
def planted(tmp_path):
    """(input file, evaluation file, {planted id: the reason it must be dropped for})."""
    clean = [{"id": f"c{i}", "text": t, "meta": {"n": i}} for i, t in enumerate(CLEAN)]
    bad = [
        ({"id": "dup", "text": CLEAN[2].upper() + "  "}, "exact_duplicate"),
        ({"id": "near", "text": near_copy(CLEAN[4])}, "near_duplicate"),
        ({"id": "short", "text": "just three words"}, "too_short"),
        ({"id": "rep", "text": "click here now " * 12}, "repetition"),
        ({"id": "sym", "text": "$$ %% 12 34 ## !! && ** 56 @@"}, "characters"),
        ({"id": "fr", "text": FRENCH}, "language"),
        ({"id": "eval", "text": "Minutes: " + EVAL_TEXT + " Next item."}, "contaminated"),
        ({"id": "empty", "body": "no text field here"}, "no_text"),
        ("this line is not JSON\n", "not_json"),
    ]
    rows = clean[:5] + [r for r, _ in bad[:5]] + clean[5:] + [r for r, _ in bad[5:]]
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"question": EVAL_TEXT, "answer": "yes"}) + "\n")
    expected = {(r["id"] if isinstance(r, dict) else None): why for r, why in bad}
    return write_jsonl(tmp_path / "in.jsonl", rows), evals, expected


def test_exactly_the_planted_records_are_dropped_for_their_reasons(planted, tmp_path):
    src, evals, expected = planted
    out = tmp_path / "out.jsonl"
    report = curate(src, out, eval_files=[evals])
    kept = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in kept] == [f"c{i}" for i in range(len(CLEAN))]
    originals = [ln for ln in src.read_text().splitlines() if '"id": "c' in ln]
    assert kept == originals  # written as read: every field, same order
    assert report.kept == len(CLEAN) and report.read == len(CLEAN) + len(expected)
    assert dict(report.dropped) == {why: 1 for why in expected.values()}
    for reason, shown in report.examples.items():
        assert shown[0]["why"] and shown[0]["line"] >= 1
        if reason not in ("not_json", "no_text"):
            assert expected[shown[0]["id"]] == reason
    assert report.examples["exact_duplicate"][0]["why"].startswith("same as line")
    assert "eval.jsonl" in report.examples["contaminated"][0]["why"]
    d = report.to_dict()
    assert d["settings"]["near_duplicates"] == {
        "method": "MinHash LSH (datasketch)", "threshold": 0.8, "num_perm": 128,
        "shingle_words": 5,
    }  # fmt: skip
    assert d["decontamination"]["files"] == [str(evals)]


def test_skipped_stages_keep_what_they_would_drop(planted, tmp_path):
    src, evals, _ = planted
    skip = frozenset({"exact", "near", "contamination", "language"})
    report = curate(src, tmp_path / "out.jsonl", Settings(skip=skip), eval_files=[evals])
    assert report.kept == len(CLEAN) + 4
    assert report.decontamination is None
    with pytest.raises(UsageError, match="unknown stage"):
        Settings(skip=frozenset({"spelling"}))


def test_the_threshold_decides_how_near_is_a_duplicate(tmp_path):
    rows = [{"text": CLEAN[1]}, {"text": near_copy(CLEAN[1], where=12)}]  # Jaccard ~0.6
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    default = curate(src, tmp_path / "a.jsonl", eval_files=[])
    loose = curate(src, tmp_path / "b.jsonl", Settings(near_threshold=0.4), eval_files=[])
    assert default.kept == 2 and loose.dropped["near_duplicate"] == 1
    with pytest.raises(UsageError, match="--num-perm"):
        curate(src, tmp_path / "c.jsonl", Settings(near_threshold=0.99), eval_files=[])


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("plain text, not records\n", "not JSONL"),
        ('{"body": "x"}\n{"body": "y"}\n', "no record of"),
    ],
)
def test_bad_input_fails_before_anything_is_written(tmp_path, content, needle):
    src = tmp_path / "in.jsonl"
    if content is not None:
        src.write_text(content)
    out = tmp_path / "out.jsonl"
    with pytest.raises(UsageError, match=needle):
        curate(src, out, eval_files=[])
    assert not out.exists() and list(tmp_path.iterdir()) == ([src] if content is not None else [])


def test_another_field_holds_the_text(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"body": t} for t in CLEAN[:3]])
    report = curate(src, tmp_path / "out.jsonl", Settings(field="body"), eval_files=[])
    assert report.kept == 3
