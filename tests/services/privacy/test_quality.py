"""Detector quality on a held-out synthetic corpus (issue 15's targets), table printed."""

from __future__ import annotations

import pytest

pytest.importorskip("presidio_analyzer")
pytest.importorskip("faker")

from pocketlm.services.privacy import corpus, quality  # noqa: E402
from pocketlm.services.privacy.detect import Span, shared  # noqa: E402


def test_corpus_is_labelled_and_deterministic():
    a, b = corpus.generate(50, seed=3), corpus.generate(50, seed=3)
    assert a == b
    assert corpus.generate(50, seed=4) != a
    for example in a:
        for span in example.spans:
            assert example.text[span.start : span.end] == span.text
    assert any(not e.spans for e in a) and any(len(e.spans) >= 3 for e in a)


def test_score_counts_overlaps_by_type():
    class Fixed:
        def find(self, text):
            return [Span("PERSON", 0, 3, text[:3], 1.0), Span("EMAIL_ADDRESS", 10, 12, "", 1.0)]

    gold = [Span("PERSON", 0, 8, "Ann Lee", 1.0), Span("PHONE_NUMBER", 20, 30, "", 1.0)]
    rows = quality.score(Fixed(), [corpus.Example("x" * 40, gold)])
    assert (rows["PERSON"].recall, rows["PERSON"].precision) == (1.0, 1.0)
    assert rows["PHONE_NUMBER"].recall == 0.0
    assert rows["EMAIL_ADDRESS"].precision == 0.0
    assert rows["ALL"].precision == 0.5
    assert quality.misses(rows) == [
        "PHONE_NUMBER recall 0.000 < 0.99",
        "overall precision 0.500 < 0.9",
    ]


def test_held_out_corpus_meets_the_targets():
    examples = corpus.generate(400, seed=20260)  # a seed the detector was not tuned on
    rows = quality.score(shared(), examples)
    print("\n" + quality.table(rows))
    assert quality.misses(rows) == []
