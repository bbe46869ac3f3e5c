"""The quality filters: each check drops what its rule says, with a reason and a detail, and
lets ordinary English through."""

from __future__ import annotations

import pytest

from pocketlm.services.data import quality
from tests.services.data.corpus import CLEAN

RULES = quality.Rules()


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_english_passes(text):
    assert quality.check(text, RULES) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("far too short", "too_short"),
        (" ".join(["word"] * 30), "repetition"),
        ("the same line again\n" * 5 + CLEAN[0], "repetition"),
        (CLEAN[1] + " " + " ".join(["buy now"] * 20), "repetition"),
        ("$$ %% 12 34 ## !! && ** 56 @@", "characters"),
        ("# Heading ... and so ... the rest of it ... is # here ... now", "characters"),
        ("a b c d e f g h i j k l m n", "characters"),
        ("the order 12345678 9876543 2233445 of 55667788 to 99001122 for 3344", "characters"),
        (
            "Le petit prince est un roman écrit par Antoine de Saint-Exupéry et publié en "
            "1943 à New York. Il raconte l'histoire d'un aviateur tombé en panne dans le "
            "désert du Sahara, qui rencontre un jeune garçon venu d'une autre planète.",
            "language",
        ),
        ("Привет, как дела? Сегодня хорошая погода, пойдём гулять в парк.", "language"),
    ],
)
def test_each_rule_drops_what_it_names(text, reason):
    verdict = quality.check(text, RULES)
    assert verdict is not None and verdict[0] == reason, verdict
    assert verdict[1]  # a detail for the report


def test_a_short_text_is_not_judged_by_its_stopwords():
    assert quality.check("Great product, fast shipping, works perfectly.", RULES) is None


def test_skipped_checks_do_not_run_and_thresholds_are_settings():
    assert quality.check("far too short", RULES, frozenset({"length"})) is None
    assert quality.check("far too short", quality.Rules(min_words=2)) is None
    assert quality.check(CLEAN[0], quality.Rules(max_words=10))[0] == "too_long"
