"""The job runner and its output file: order, failures, resume, whole lines (no model)."""

from __future__ import annotations

import csv
import json
import threading
import time

import pytest

from pocketlm.errors import PocketError, UsageError
from pocketlm.services.tasks.job import RecordFailed, run_job
from pocketlm.services.tasks.output import Output, output_format
from pocketlm.services.tasks.records import Record
from pocketlm.services.tasks.summarize import split


def records(n: int, start: int = 1) -> list[Record]:
    return [Record(i, f"text {i}", {}) for i in range(start, start + n)]


def slow_upper(record: Record) -> dict:
    time.sleep(0.002 * (record.id % 5))  # finish out of order
    return {"upper": record.text.upper()}


def test_results_come_in_input_order_with_ids():
    out: list[dict] = []
    summary = run_job(records(40), slow_upper, out.append, workers=8)
    assert [r["id"] for r in out] == list(range(1, 41))
    assert out[6] == {"id": 7, "upper": "TEXT 7"}
    assert summary.records == 40 and summary.failed == 0


def test_failures_are_written_never_dropped():
    def work(record: Record) -> dict:
        if record.id == 2:
            raise RecordFailed("no valid JSON after 2 tries: not JSON")
        if record.id == 3:
            raise PocketError("the prompt does not fit")
        if record.id == 4:
            raise ValueError("bad date")
        return {"ok": True}

    out: list[dict] = []
    bad = Record(5, "", {}, error="line 5: not a JSON object")
    summary = run_job([*records(4), bad], work, out.append, workers=2)
    assert [r["id"] for r in out] == [1, 2, 3, 4, 5]
    assert out[1]["error"].startswith("no valid JSON")
    assert out[2]["error"] == "the prompt does not fit"
    assert out[3]["error"] == "invalid record: bad date"
    assert out[4]["error"] == "line 5: not a JSON object"
    assert summary.failed == 4 and len(summary.failures) == 4


def test_reading_stays_a_window_ahead_of_the_oldest_record():
    release = threading.Event()
    read = [0]
    ahead: list[int] = []

    def work(record: Record) -> dict:
        if record.id == 1:  # the oldest record is slow: nothing can be written meanwhile
            release.wait(5)
        return {}

    def lazy():
        for r in records(300):
            read[0] += 1
            yield r

    def watch():
        time.sleep(0.3)
        ahead.append(read[0])
        release.set()

    threading.Thread(target=watch).start()
    run_job(lazy(), work, lambda r: None, workers=4)
    assert read[0] == 300
    assert ahead[0] <= 2 * 4 + 2  # a window of records, not the file


def test_counts_per_label_in_the_summary():
    labels = ["a", "b", "a", "a"]
    summary = run_job(
        records(4), lambda r: {"label": labels[r.id - 1]}, lambda r: None, count_fields=("label",)
    )
    assert summary.to_dict()["counts"] == {"label": {"a": 3, "b": 1}}


def test_output_refuses_to_overwrite_results(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1}\n')
    with pytest.raises(UsageError, match="already holds results"):
        Output(path)
    Output(path, overwrite=True).close()
    assert path.read_text() == ""


def test_resume_drops_a_cut_line_and_skips_written_records(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1, "v": "TEXT 1"}\n{"id": 2, "v": "TEXT 2"}\n{"id": 3, "v": "TE')
    out = Output(path, resume=True)
    assert out.done == ["1", "2"]
    done: list[int] = []

    def work(record: Record) -> dict:
        done.append(record.id)
        return {"v": record.text.upper()}

    summary = run_job(records(5), work, out.write, done=out.done)
    out.close()
    assert sorted(done) == [3, 4, 5] and summary.skipped == 2
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2] == {"id": 3, "v": "TEXT 3"}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_retry_failed_does_failures_again_in_their_places(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    out = Output(path, fmt, columns=["v", "error"])
    for i in range(1, 6):
        out.write({"id": i, "error": "timed out, twice"} if i in (2, 4) else {"id": i, "v": i})
    out.close()
    plain = Output(path, fmt, resume=True)  # without retry_failed: the file as it is
    assert plain.done == ["1", "2", "3", "4", "5"] and plain.retry == set()
    plain.close()
    out = Output(path, fmt, resume=True, retry_failed=True)
    assert out.done == ["1", "2", "3", "4", "5"] and out.retry == {"2", "4"}
    done: list[int] = []

    def work(record: Record) -> dict:
        done.append(record.id)
        return {"v": record.id}

    summary = run_job(records(6), work, out.write, done=out.done, retry=out.retry)
    out.close()
    assert sorted(done) == [2, 4, 6] and summary.skipped == 3 and summary.records == 3
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    else:
        rows = [dict(r) for r in csv.DictReader(path.open())]
        rows = [{"id": int(r["id"]), "v": int(r["v"])} for r in rows]
    assert rows == [{"id": i, "v": i} for i in range(1, 7)]  # in their places: input order
    assert not list(tmp_path.glob(".*"))  # no scratch file left
    again = Output(path, fmt, resume=True, retry_failed=True)  # and it resumes as any file
    assert again.done == [str(i) for i in range(1, 7)] and again.retry == set()
    again.close()


def test_resume_with_another_input_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n')
    out = Output(path, resume=True)
    with pytest.raises(UsageError, match="do not belong to this input"):
        run_job(records(3), slow_upper, out.write, done=out.done)


def test_resume_of_a_file_that_is_not_ours_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("hello\n")
    with pytest.raises(UsageError, match="not a result record"):
        Output(path, resume=True)


def test_csv_output_has_one_header_and_json_cells(tmp_path):
    path = tmp_path / "out.csv"
    assert output_format(path, None) == "csv"
    out = Output(path, "csv", columns=["label", "probs", "error"])
    out.write({"id": 1, "label": "a", "probs": {"a": 0.9, "b": 0.1}})
    out.write({"id": 2, "error": "failed, twice"})
    out.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "id,label,probs,error"
    assert lines[1] == '1,a,"{""a"": 0.9, ""b"": 0.1}",'
    assert lines[2] == '2,,,"failed, twice"'
    resumed = Output(path, "csv", resume=True, columns=["label", "probs", "error"])
    assert resumed.done == ["1", "2"]


def test_unknown_output_format_is_a_usage_error():
    with pytest.raises(UsageError, match="jsonl, csv"):
        output_format(None, "xml")


def words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("room", [5, 12, 40])
def test_split_keeps_every_character_in_order_within_room(room):
    text = "\n\n".join(
        f"Paragraph {p}. " + " ".join(f"word{p}_{i}." for i in range(p * 7)) for p in range(1, 6)
    )
    parts = split(text, room, words)
    assert "".join(parts) == text
    assert all(len(words(p)) <= room for p in parts)
    assert len(parts) > 1


def test_split_cuts_a_text_with_no_breaks_between_characters():
    text = "x" * 500
    parts = split(text, 8, lambda t: list(t))  # a token per character
    assert "".join(parts) == text and all(len(p) <= 8 for p in parts)
