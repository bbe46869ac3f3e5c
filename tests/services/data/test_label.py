"""`label`: a local teacher's labels for the user's own records, as training records, through
`pocketlm task`'s machinery; a remote tier is refused before anything is read or sent."""

from __future__ import annotations

import json

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.data import label


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def mine(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("id,body\na,my card was charged twice\nb,the parcel never arrived\nc,hi\n")
    return path


def job(teacher, src, out, task="classify", **options):
    return label.spec_for(
        task, teacher, input=src, out=out, field="body", threads=1, parallel=2, ctx=512,
        options=options,
    )  # fmt: skip


def test_classify_writes_text_label_probs_and_teacher(tmp_path, mine, teacher):
    out = tmp_path / "labelled.jsonl"
    summary = label.run(job(teacher, mine, out, labels="billing,shipping"))
    got = rows(out)
    assert summary.records == 3 and summary.model == teacher
    assert [r["id"] for r in got] == ["a", "b", "c"]
    assert got[1]["text"] == "the parcel never arrived"
    for r in got:
        assert r["label"] in ("billing", "shipping") and set(r["probs"]) == {"billing", "shipping"}
        assert r["teacher"] == teacher and "billing" in r["instruction"]


def test_extract_writes_the_object_as_json_text(tmp_path, mine, teacher):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({
        "type": "object", "properties": {"kind": {"enum": ["money", "parcel"]}},
        "required": ["kind"], "additionalProperties": False,
    }))  # fmt: skip
    out = tmp_path / "labelled.jsonl"
    label.run(job(teacher, mine, out, task="extract", schema=str(schema), max_tokens=64))
    for r in rows(out):
        assert json.loads(r["label"]) == r["data"] and r["data"]["kind"] in ("money", "parcel")


def test_grounded_labels_hold_only_values_the_text_holds(tmp_path, mine, teacher):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({
        "type": "object", "properties": {"what": {"type": ["string", "null"], "maxLength": 12}},
        "required": ["what"], "additionalProperties": False,
    }))  # fmt: skip
    out = tmp_path / "labelled.jsonl"
    spec = job(teacher, mine, out, task="extract", schema=str(schema), max_tokens=48, grounded=True)
    label.run(spec)
    got = [r for r in rows(out) if "data" in r]
    assert got  # the tiny model answered some records: their values are checked below
    for r in got:
        what = r["data"]["what"]
        assert what is None or " ".join(what.split()).lower() in r["text"].lower()
        assert json.loads(r["label"]) == r["data"]
        assert all(r["data"][k] is None for k in r.get("ungrounded", []))
    with pytest.raises(UsageError, match="--grounded is for --task extract"):
        label.run(job(teacher, mine, tmp_path / "c.jsonl", labels="x,y", grounded=True))


def test_a_resumed_run_labels_only_the_rest(tmp_path, mine, teacher):
    out = tmp_path / "labelled.jsonl"
    label.run(job(teacher, mine, out, labels="x,y"))
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0])
    spec = job(teacher, mine, out, labels="x,y")
    spec.resume = True
    summary = label.run(spec)
    assert (summary.skipped, summary.records) == (1, 2)
    assert [r["id"] for r in rows(out)] == ["a", "b", "c"]


def test_a_remote_tier_is_refused(tmp_path, mine):
    tiers = tmp_path / "tiers.toml"
    tiers.write_text('[[tier]]\nname = "cloud"\nurl = "https://api.example.com/v1"\nmodel = "m"\n')
    with pytest.raises(UsageError, match="must not leave this machine"):
        label.spec_for("classify", "cloud", tiers, input=mine)
    with pytest.raises(UsageError, match="URL"):
        label.spec_for("classify", "https://api.example.com/v1", None, input=mine)
    with pytest.raises(UsageError, match="unknown labelling task"):
        label.spec_for("summarize", "m", None, input=mine)
