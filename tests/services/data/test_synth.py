"""`synth` with the tiny model as the teacher (its text is gibberish; the mechanics are
real): records and their fields, the plan's balance and coverage, resume, a remote tier."""

from __future__ import annotations

import json

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.data import synth, topics
from tests.server.conftest import serve

FAST = {"max_tokens": 8, "parallel": 2, "threads": 1}


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_textbook_records_carry_their_prompt_teacher_and_seeds(tmp_path, teacher):
    out = tmp_path / "t.jsonl"
    summary = synth.run(synth.SynthSpec(out=out, teacher=teacher, n=5, **FAST))
    assert summary.records == 5 and summary.failed == 0 and summary.model == teacher
    got = rows(out)
    assert [r["id"] for r in got] == [1, 2, 3, 4, 5]
    for r in got:
        assert list(r)[:5] == ["id", "text", "prompt", "teacher", "mode"]
        assert r["text"] and r["teacher"] == teacher and r["mode"] == "textbook"
        assert r["topic"] in topics.TOPICS and r["audience"] in topics.AUDIENCES
        assert r["format"] in topics.FORMATS and r["topic"] in r["prompt"]
        assert (r["max_tokens"], r["temperature"], r["seed"]) == (8, 0.8, 0)
        assert isinstance(r["sample_seed"], int) and r["finish"] in ("stop", "length")
    assert len({r["topic"] for r in got}) == 5  # every topic once before any again


def test_task_records_are_balanced_over_the_labels_and_show_the_examples(tmp_path, teacher):
    shots = tmp_path / "shots.jsonl"
    shots.write_text('{"text": "I was charged twice", "label": "billing"}\n')
    out = tmp_path / "t.jsonl"
    spec = synth.SynthSpec(
        out=out, teacher=teacher, n=7, task="Sort support tickets.", labels="billing,bug",
        examples=shots, **FAST,
    )  # fmt: skip
    summary = synth.run(spec)
    got = rows(out)
    assert [r["label"] for r in got] == ["billing", "bug"] * 3 + ["billing"]
    assert dict(summary.counts["label"]) == {"billing": 4, "bug": 3}
    assert all(r["mode"] == "task" and r["style"] in topics.STYLES for r in got)
    assert all("I was charged twice" in r["prompt"] and r["label"] in r["prompt"] for r in got)


def test_inputs_without_labels_go_through_the_kinds_with_example_inputs(tmp_path, teacher):
    shots = tmp_path / "shots.jsonl"
    shots.write_text('{"text": "Best, Ana Ruiz, ana@example.com"}\n')
    kinds = tmp_path / "kinds.txt"  # a file: a kind may hold a comma
    kinds.write_text("# kinds\nan email signature\na business card, line by line\n")
    out = tmp_path / "t.jsonl"
    spec = synth.SynthSpec(
        out=out, teacher=teacher, n=5, task="Records with a contact.", kinds=str(kinds),
        examples=shots, **FAST,
    )  # fmt: skip
    summary = synth.run(spec)
    got = rows(out)
    want = ["an email signature", "a business card, line by line"] * 2 + ["an email signature"]
    assert [r["kind"] for r in got] == want
    assert dict(summary.counts["kind"]) == {want[0]: 3, want[1]: 2}
    assert all("label" not in r and r["mode"] == "task" for r in got)
    for r in got:
        assert "Text: Best, Ana Ruiz" in r["prompt"] and "Label:" not in r["prompt"]
        assert f"It is {r['kind']}." in r["prompt"] and r["style"] in r["prompt"]


def test_labels_and_kinds_cover_every_pair(tmp_path):
    spec = synth.SynthSpec(
        out=tmp_path / "x", teacher="t", n=4, task="Tickets.", labels="a,b", kinds="short,long"
    )
    got = [(r.fields["label"], r.fields["kind"]) for r in synth.Plan.of(spec).records()]
    assert got == [("a", "short"), ("b", "short"), ("a", "long"), ("b", "long")]


def test_a_long_list_is_a_list_not_a_file_name(tmp_path):
    many = ",".join(f"kind number {i} of a long list" for i in range(20))  # > 255 bytes
    spec = synth.SynthSpec(out=tmp_path / "x", teacher="t", task="T.", kinds=many, labels=many)
    plan = synth.Plan.of(spec)
    assert len(plan.kinds) == 20 and len(plan.labels) == 20
    with pytest.raises(UsageError, match="names no kind"):
        synth.Plan.of(synth.SynthSpec(out=tmp_path / "x", teacher="t", task="T.", kinds=" , "))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": "no text"}\n')
    with pytest.raises(UsageError, match="example 1: needs a 'text'"):
        synth.Plan.of(synth.SynthSpec(out=tmp_path / "x", teacher="t", task="T.", examples=bad))


def test_a_kinds_or_labels_file_under_home_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "kinds.txt").write_text("a note\na card\n")
    (tmp_path / "labels.txt").write_text("billing: money\nbug: broken\n")
    spec = synth.SynthSpec(
        out=tmp_path / "x", teacher="t", task="T.", kinds="~/kinds.txt", labels="~/labels.txt"
    )
    plan = synth.Plan.of(spec)
    assert plan.kinds == ("a note", "a card")
    assert [x.name for x in plan.labels] == ["billing", "bug"]


def test_the_plan_is_a_function_of_the_seed(tmp_path):
    topics_file = tmp_path / "topics.txt"
    topics_file.write_text("# mine\nvolcanoes\n\ntides\nvolcanoes\n")
    spec = synth.SynthSpec(out=tmp_path / "x", teacher="t", n=6, topics=topics_file)
    a = [(r.id, r.text, r.fields) for r in synth.Plan.of(spec).records()]
    assert a == [(r.id, r.text, r.fields) for r in synth.Plan.of(spec).records()]
    assert sorted(f["topic"] for _, _, f in a) == ["tides"] * 3 + ["volcanoes"] * 3
    other = synth.Plan.of(synth.SynthSpec(out=tmp_path / "x", teacher="t", n=6, seed=1))
    assert [r.text for r in other.records()] != [t for _, t, _ in a]


def test_an_interrupted_run_resumes_with_the_records_it_would_have_written(tmp_path, teacher):
    out = tmp_path / "t.jsonl"
    synth.run(synth.SynthSpec(out=out, teacher=teacher, n=3, **FAST))
    first = out.read_text()
    with out.open("a") as f:
        f.write('{"id": 4, "text": "cut sh')  # a line cut short by a crash
    with pytest.raises(UsageError, match="--resume"):
        synth.run(synth.SynthSpec(out=out, teacher=teacher, n=6, **FAST))
    summary = synth.run(synth.SynthSpec(out=out, teacher=teacher, n=6, resume=True, **FAST))
    assert (summary.skipped, summary.records) == (3, 3)
    assert out.read_text().startswith(first)
    whole = tmp_path / "whole.jsonl"
    synth.run(synth.SynthSpec(out=whole, teacher=teacher, n=6, **FAST))
    assert [r["prompt"] for r in rows(out)] == [r["prompt"] for r in rows(whole)]
    with pytest.raises(UsageError, match="seed"):
        synth.run(synth.SynthSpec(out=out, teacher=teacher, n=8, seed=3, resume=True, **FAST))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"n": 0}, "n=0"),
        ({"labels": "a,b"}, r"add task=\.\.\."),
        ({"task": " "}, r"task=\.\.\. needs a description"),
        ({"kinds": "a,b"}, r"add task=\.\.\."),
        ({"temperature": 9.0}, "temperature=9.0"),
    ],
)
def test_bad_settings_are_usage_errors(tmp_path, changes, needle):
    with pytest.raises(UsageError, match=needle):
        synth.SynthSpec(out=tmp_path / "x", teacher="t", **changes)


def test_a_missing_topics_file_or_teacher_fails_before_writing(tmp_path, teacher):
    out = tmp_path / "t.jsonl"
    with pytest.raises(UsageError, match="topics"):
        synth.run(synth.SynthSpec(out=out, teacher=teacher, topics=tmp_path / "no.txt"))
    with pytest.raises(Exception, match="no-such-model"):
        synth.run(synth.SynthSpec(out=out, teacher="no-such-model", n=1))
    assert not out.exists() or out.read_text() == ""


def test_an_oversized_topics_or_kinds_file_is_refused_unread(tmp_path):
    big = tmp_path / "big.txt"
    with big.open("wb") as f:  # sparse: 17 MiB of one line, which reading would hold whole
        f.truncate(synth.MAX_TOPICS_BYTES + 1)
    with pytest.raises(UsageError, match="big.txt is over 16,384 KiB"):
        synth.Plan.of(synth.SynthSpec(out=tmp_path / "x", teacher="t", topics=big))
    with pytest.raises(UsageError, match="give fewer kinds"):
        synth.Plan.of(synth.SynthSpec(out=tmp_path / "x", teacher="t", task="t", kinds=str(big)))


def test_a_remote_tier_writes_through_its_openai_api(tmp_path, tiny_gguf, teacher):
    with serve("--preload", str(tiny_gguf), "--parallel", "2", "--ctx", "512") as url:
        tiers = tmp_path / "tiers.toml"
        tiers.write_text(
            f'[[tier]]\nname = "local"\nmodel = "{teacher}"\n'
            f'[[tier]]\nname = "cloud"\nurl = "{url}/v1"\nmodel = "tiny"\nprivacy = "allow"\n'
        )
        out = tmp_path / "t.jsonl"
        spec = synth.SynthSpec(out=out, teacher="cloud", tiers=tiers, n=3, **FAST)
        summary = synth.run(spec)
    assert summary.failed == 0, summary.failures
    assert [r["teacher"] for r in rows(out)] == ["cloud:tiny"] * 3
    assert summary.generated_tokens > 0
