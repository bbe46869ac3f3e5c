"""Placeholders: consistent within a conversation, restored in answers and in streams."""

from __future__ import annotations

import re

import pytest

from pocketlm.services.privacy.detect import Span
from pocketlm.services.privacy.pseudonym import Pseudonymizer, Restorer


class FakeDetector:
    """Emails and capitalised pairs as PERSON: the pseudonymizer's logic without Presidio."""

    PATTERN = re.compile(r"(?P<EMAIL_ADDRESS>\b\S+@\S+\.\w+)|(?P<PERSON>\b[A-Z][a-z]+ [A-Z][a-z]+)")

    def find(self, text: str) -> list[Span]:
        return [
            Span(m.lastgroup, m.start(), m.end(), m.group(), 1.0)
            for m in self.PATTERN.finditer(text)
        ]


@pytest.fixture
def pseudo():
    return Pseudonymizer(FakeDetector())


def test_same_value_same_placeholder_numbered_by_first_appearance(pseudo):
    text, reps = pseudo.redact("Ann Lee wrote to bob@x.org; Carl Diaz and Ann Lee replied")
    assert text == "<PERSON_1> wrote to <EMAIL_ADDRESS_1>; <PERSON_2> and <PERSON_1> replied"
    assert [r.placeholder for r in reps] == [
        "<PERSON_1>",
        "<EMAIL_ADDRESS_1>",
        "<PERSON_2>",
        "<PERSON_1>",
    ]
    assert (reps[0].start, reps[0].end) == (0, 7)
    assert pseudo.counts() == {"PERSON": 3, "EMAIL_ADDRESS": 1}


def test_counts_hold_no_values(pseudo):
    pseudo.redact("Ann Lee")
    assert "Ann Lee" not in repr(pseudo.counts())


def test_messages_share_one_mapping_and_resending_is_stable():
    turns = [
        {"role": "user", "content": "I am Ann Lee, mail ann@x.org"},
        {"role": "assistant", "content": "hello Ann Lee"},
    ]
    first = Pseudonymizer(FakeDetector()).redact_messages(turns)
    more = turns + [{"role": "user", "content": "Carl Diaz and Ann Lee"}]
    second = Pseudonymizer(FakeDetector()).redact_messages(more)
    assert second[:2] == first
    assert first[1] == {"role": "assistant", "content": "hello <PERSON_1>"}
    assert second[2]["content"] == "<PERSON_2> and <PERSON_1>"


def test_content_parts_are_redacted(pseudo):
    out = pseudo.redact_messages(
        [{"role": "user", "content": [{"type": "text", "text": "Ann Lee"}, {"type": "image"}]}]
    )
    assert out[0]["content"] == [{"type": "text", "text": "<PERSON_1>"}, {"type": "image"}]


def test_restore_with_and_without_brackets(pseudo):
    pseudo.redact("Ann Lee, bob@x.org")
    answer = "Dear <PERSON_1>, PERSON_1 wrote to <EMAIL_ADDRESS_1>."
    assert pseudo.restore(answer) == "Dear Ann Lee, Ann Lee wrote to bob@x.org."


def test_restore_leaves_unknown_and_partial_names_alone(pseudo):
    pseudo.redact("Ann Lee")
    text = "PERSON_2, <PERSON_9>, XPERSON_1, PERSON_10, person_1 and MY_PERSON_1x stay"
    assert pseudo.restore(text) == text


def test_user_text_that_looks_like_a_placeholder_is_not_confused(pseudo):
    text, _ = pseudo.redact("The template says <PERSON_1>; the client is Ann Lee")
    assert text == "The template says <PERSON_1>; the client is <PERSON_2>"
    assert pseudo.restore("<PERSON_1> is <PERSON_2>") == "<PERSON_1> is Ann Lee"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_restorer_holds_back_cut_placeholders(pseudo, size):
    pseudo.redact("Ann Lee, bob@x.org")
    answer = "Hi <PERSON_1>! Mail EMAIL_ADDRESS_1 or <b>OK</b> <PERSON_1>"
    restorer = Restorer(pseudo)
    chunks = [answer[i : i + size] for i in range(0, len(answer), size)]
    shown = [restorer.feed(c) for c in chunks]
    shown.append(restorer.flush())
    assert "".join(shown) == "Hi Ann Lee! Mail bob@x.org or <b>OK</b> Ann Lee"
    assert not any("<PERS" in s or "PERSON" in s for s in shown)


def test_restorer_emits_plain_text_at_once(pseudo):
    restorer = Restorer(pseudo)
    assert restorer.feed("hello there ") == "hello there "
    assert restorer.feed("<") == ""
    assert restorer.feed("b>bold") == "<b>bold"


def test_with_the_real_detector():
    pytest.importorskip("presidio_analyzer")
    from pocketlm.services.privacy.detect import shared

    pseudo = Pseudonymizer(shared())
    text, _ = pseudo.redact("Hi, my name is John Smith, mail john@example.com, John Smith")
    assert "John" not in text and "example.com" not in text
    assert text.count("<PERSON_1>") == 2
    assert pseudo.restore(text) == "Hi, my name is John Smith, mail john@example.com, John Smith"
