"""The verifiable workload: its checkers on right, wrong and odd-format answers, the
generator's promises (distinct, seeded, prefix-stable, true answers), and collect's records
and resumption, with a scripted answer function in place of the tiers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
from dataclasses import dataclass

import pytest

from pocketlm.errors import PocketError, UsageError
from pocketlm.services.route import workload as w

# -- checkers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, ok",
    [
        ("Answer: 1250", True),
        ("1,250", True),
        ("**1250**", True),
        ("The sum is 1250.", True),
        ("1250.0", True),
        ("First 1000 + 250 = 1250.\nAnswer: 1250 (1000 plus 250)", True),  # first after marker
        ("Answer: 1205", False),
        ("1250 is wrong, it is 1350", False),  # the last number counts without a marker
        ("I cannot compute that.", False),
        ("", False),
    ],
)
def test_check_number(reply, ok):
    assert w.check_number(reply, 1250) is ok


def test_check_number_negative_and_tolerance():
    assert w.check_number("Answer: -17", -17)
    assert not w.check_number("Answer: 17", -17)
    assert w.check_number("about 17.78 cm", 17.78, rel_tol=0.01)
    assert w.check_number("Answer: 17.8", 17.78, rel_tol=0.01)
    assert not w.check_number("Answer: 18.5", 17.78, rel_tol=0.01)


@pytest.mark.parametrize(
    "reply, ok",
    [
        ("C", True),
        ("C) Paris", True),
        ("(C)", True),
        ("The right option is C.", True),
        ("Answer: **C**", True),
        ("A good answer is C", True),  # "A good": the article, not option A
        ("Answer: A", False),
        ("B) Lyon", False),
        ("Paris", False),
    ],
)
def test_check_letter(reply, ok):
    assert w.check_letter(reply, "C") is ok


def test_check_word_with_vocabulary():
    days = w.WEEKDAYS
    assert w.check_word("Answer: Friday", "Friday", days)
    assert w.check_word("It will be **friday**.", "Friday", days)
    # reasoning mentions other days; without a marker the last weekday is the answer
    assert w.check_word("Today is Monday, 4 days later is Friday", "Friday", days)
    assert not w.check_word("Friday? No: Thursday", "Friday", days)
    assert not w.check_word("Answer: Thursday", "Friday", days)


def test_check_word_free():
    assert w.check_word("Answer: tenalp", "tenalp")
    assert w.check_word("The word backwards is 'tenalp'.", "tenalp")
    assert not w.check_word("Answer: tenlap", "tenalp")


def test_check_list():
    want = [3, 12, 40, 77]
    assert w.check_list("Answer: 3, 12, 40, 77", want)
    assert w.check_list("Sorted:\n[3, 12, 40, 77]", want)
    assert not w.check_list("Answer: 3, 40, 12, 77", want)
    assert not w.check_list("Answer: 3, 12, 40", want)  # one missing
    words = ["fig", "kiwi", "lime"]
    assert w.check_list("Answer: Fig, Kiwi, Lime", words)
    assert not w.check_list("Answer: kiwi, fig, lime", words)


def test_check_fields():
    want = {"invoice": 4821, "company": "Acme GmbH", "total": 1250.4}
    fenced = '```json\n{"Invoice": "4821", "company": "acme gmbh", "total": "1,250.40"}\n```'
    assert w.check_fields(fenced, want)
    assert w.check_fields('{"invoice": 4821, "company": "Acme GmbH", "total": 1250.40}', want)
    assert not w.check_fields('{"invoice": 4821, "company": "Acme GmbH"}', want)  # missing
    assert not w.check_fields('{"invoice": 4822, "company": "Acme GmbH", "total": 1250.4}', want)
    assert not w.check_fields("invoice 4821, Acme GmbH, 1250.40", want)  # no JSON


# -- the generator --------------------------------------------------------------------------


def test_generate_distinct_seeded_prefix_stable():
    items = w.generate(300, seed=3)
    assert len(items) == 300
    assert len({i.id for i in items}) == 300
    assert len({i.prompt for i in items}) == 300
    assert {i.kind for i in items} == set(w.KINDS)
    assert {i.level for i in items} == set(w.LEVELS)
    again = w.generate(120, seed=3)
    assert [i.id for i in again] == [i.id for i in items[:120]]
    other = w.generate(120, seed=4)
    assert [i.id for i in other] != [i.id for i in again]


def test_generate_unknown_kind():
    with pytest.raises(UsageError, match="unknown prompt kind 'poems'"):
        w.generate(10, kinds=["poems"])


def test_every_item_accepts_its_own_answer():
    for item in w.generate(400, seed=1):
        reply = f"Answer: {_spell(item.answer)}"
        assert item.check(reply), (item.prompt, reply)
        assert not item.check("I do not know."), item.prompt


def _spell(answer) -> str:
    if isinstance(answer, dict):
        return json.dumps(answer)
    if isinstance(answer, list):
        return ", ".join(map(str, answer))
    return str(answer)


def test_code_answers_match_running_the_code():
    """The expected output is computed alongside the code: running it must agree."""
    for item in w.generate(400, seed=2, kinds=["code"]):
        code = item.prompt.split("```python\n")[1].split("\n```")[0]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, {})  # our own generated snippet, not user input
        assert float(out.getvalue()) == item.answer, code


def test_arithmetic_answers_are_true():
    for item in w.generate(200, seed=5, kinds=["arithmetic"]):
        expr = item.prompt.removeprefix("Compute ").split(".")[0]
        assert eval(expr, {}) == item.answer, expr  # our own generated expression


# -- collect --------------------------------------------------------------------------------


@dataclass
class FakeAnswer:
    text: str
    tokens_in: int = 20
    tokens_out: int = 4
    mean_logprob: float | None = -0.2
    min_logprob: float | None = -1.0
    tier: str = ""


def scripted(right: dict[str, float], fail: set[str] = frozenset()):
    """An answer function whose tier answers right with the given probability (seeded per
    prompt), and raises for the prompts in ``fail``."""
    calls = []

    async def answer(tier, messages, max_tokens, temperature=0.0):
        prompt = messages[-1]["content"]
        calls.append((tier, prompt, max_tokens, temperature))
        if prompt in fail:
            raise PocketError(f"{tier} is down")
        item = ANSWERS[prompt]
        good = random.Random(f"{tier}{prompt}").random() < right[tier]
        text = f"Answer: {_spell(item.answer)}" if good else "Answer: no idea"
        lp = -0.1 if good else -2.0
        return FakeAnswer(text, mean_logprob=lp, min_logprob=lp * 3, tier=tier)

    answer.calls = calls
    return answer


ITEMS = w.generate(40, seed=9)
ANSWERS = {i.prompt: i for i in ITEMS}


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_collect_writes_checked_records(tmp_path):
    out = tmp_path / "work.jsonl"
    fn = scripted({"small": 0.4, "big": 0.9})
    summary = asyncio.run(w.collect(ITEMS, fn, "small", "big", out, concurrency=3, max_tokens=50))
    recs = _read(out)
    assert summary.written == len(recs) == 40 and summary.skipped == 0 and not summary.failed
    assert {r["id"] for r in recs} == {i.id for i in ITEMS}
    for r in recs:
        item = next(i for i in ITEMS if i.id == r["id"])
        assert r["local_ok"] == item.check(r["local_answer"])
        assert r["remote_ok"] == item.check(r["remote_answer"])
        assert r["local_tier"] == "small" and r["remote_tier"] == "big"
        assert r["local_mean_logprob"] in (-0.1, -2.0) and r["local_tokens"] == 4
    assert 0 < summary.local_accuracy < summary.remote_accuracy
    # greedy, the max_tokens asked for, both tiers once per prompt
    assert {(c[2], c[3]) for c in fn.calls} == {(50, 0.0)}
    assert len(fn.calls) == 80


def test_collect_resumes_and_repairs_a_cut_line(tmp_path):
    out = tmp_path / "work.jsonl"
    asyncio.run(w.collect(ITEMS[:10], scripted({"a": 0.5, "b": 0.5}), "a", "b", out))
    with open(out, "a") as f:
        f.write('{"id": "cut-by-a-cra')  # a crash in the middle of a line
    fn = scripted({"a": 0.5, "b": 0.5})
    summary = asyncio.run(w.collect(ITEMS, fn, "a", "b", out))
    recs = _read(out)
    assert summary.skipped == 10 and summary.written == 30
    assert len(recs) == 40 and len({r["id"] for r in recs}) == 40
    assert len(fn.calls) == 60  # only the 30 new prompts were asked


def test_collect_failures_are_reported_not_written(tmp_path):
    out = tmp_path / "work.jsonl"
    down = {ITEMS[0].prompt, ITEMS[5].prompt}
    summary = asyncio.run(w.collect(ITEMS, scripted({"a": 1, "b": 1}, down), "a", "b", out))
    assert set(summary.failed) == {ITEMS[0].id, ITEMS[5].id}
    assert "down" in summary.failed[ITEMS[0].id]
    assert len(_read(out)) == 38
    # a rerun asks only the two that failed
    fn = scripted({"a": 1, "b": 1})
    asyncio.run(w.collect(ITEMS, fn, "a", "b", out))
    assert len(fn.calls) == 4 and len(_read(out)) == 40


def test_collect_rejects_a_foreign_file(tmp_path):
    out = tmp_path / "notes.jsonl"
    out.write_text('{"text": "hello"}\n')
    with pytest.raises(UsageError, match="notes.jsonl:1: not a workload record"):
        asyncio.run(w.collect(ITEMS, scripted({"a": 1, "b": 1}), "a", "b", out))


def test_read_records_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        w.read_records(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "p", "local_ok": true}\n')
    with pytest.raises(UsageError, match="bad.jsonl:1: record without field 'remote_ok'"):
        w.read_records(bad)
    bad.write_text("{oops\n")
    with pytest.raises(UsageError, match="bad.jsonl:1: not a JSON line"):
        w.read_records(bad)
