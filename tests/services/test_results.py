"""The results database: one row written through ``record`` and read back whole."""

from __future__ import annotations

import dataclasses

import pytest

from pocketlm.errors import UsageError
from pocketlm.services import results
from pocketlm.services.results import Result, ResultsDB
from pocketlm.store.manifest import Manifest
from pocketlm.store.store import Store

MANIFEST = Manifest(
    name="tiny",
    path="/models/tiny.gguf",
    source="file:///models/tiny.gguf",
    sha256="ab" * 32,
    size_bytes=1234,
    architecture="llama",
    parameter_count=1000,
    quantization="Q8_0",
    bits_per_weight=8.5,
)


def test_a_row_is_written_and_read_back_with_every_field():
    metrics = {"acc": 0.5, "nested": {"values": [1.0, 2.0]}}
    settings = {"shots": 2, "format": "arc"}
    row_id = results.record(
        "eval", "arc.jsonl", "tiny", metrics, settings, manifest=MANIFEST, file_type="F32"
    )
    [row] = ResultsDB().query(ids=[row_id])
    assert set(f.name for f in dataclasses.fields(Result)) == set(row.to_dict())
    assert row.id == row_id and isinstance(row_id, int)
    assert (row.kind, row.task, row.model) == ("eval", "arc.jsonl", "tiny")
    assert row.metrics == metrics and row.settings == settings
    assert row.model_sha256 == MANIFEST.sha256
    assert row.quantization == "Q8_0"  # a store model: the manifest's, not the file type
    assert {"cpu", "cores", "threads", "ram_bytes", "system", "pocketlm"} <= set(row.machine)
    assert row.created_at[:2] == "20" and "T" in row.created_at


def test_a_bare_file_is_identified_by_its_file_type_alone():
    row_id = results.record("bench", "speed", "tiny.gguf", {"x": 1}, file_type="F32")
    [row] = ResultsDB().query(kind="bench")
    assert (row.id, row.model_sha256, row.quantization, row.settings) == (row_id, None, "F32", {})


def test_a_store_has_its_own_database(tmp_path):
    store = Store(tmp_path / "elsewhere")
    db = ResultsDB.of(store)
    assert db.path == store.root / results.FILE_NAME
    row_id = results.record("quantize", "calibration.txt", "tiny-q4_0", {}, db=db)
    assert [r.id for r in db.query()] == [row_id]
    assert ResultsDB().query() == []


def test_query_filters_and_compare():
    a = results.record("eval", "arc.jsonl", "tiny", {"acc": 0.1})
    b = results.record("perplexity", "wiki.txt", "tiny", {"ppl": 9.0})
    c = results.record("eval", "arc.jsonl", "other", {"acc": 0.2})
    assert [r.id for r in ResultsDB().query(model="tiny")] == [a, b]
    assert [r.id for r in ResultsDB().query(task="arc.jsonl")] == [a, c]
    assert [r.id for r in ResultsDB().query(kind="perplexity")] == [b]
    assert [r.id for r in results.compare([str(c), "tiny"])] == [c, a, b]
    assert [r.id for r in results.compare(["tiny"], task="wiki.txt")] == [b]
    with pytest.raises(UsageError, match="no results match"):
        results.compare(["999"])
