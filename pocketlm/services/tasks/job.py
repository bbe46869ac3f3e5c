"""A batch job: every record of an input through one task, results in input order.

Records are read lazily and handed to worker threads (a few more than the engine's parallel
sequences, so the engine never waits for work); results are written in input order as soon
as the oldest record in flight is done, so memory holds a window of records, never the
file. A record that fails is written with its ``error``; none is dropped.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pocketlm.errors import PocketError, UsageError
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.tasks.records import Record


class RecordFailed(Exception):
    """A record the task could not do; the message (one line) goes into its ``error``."""


@dataclass
class JobSummary:
    model: str = ""
    records: int = 0  # done in this run
    skipped: int = 0  # already in the output (resumed)
    failed: int = 0
    counts: dict[str, collections.Counter] = field(default_factory=dict)  # field -> value counts
    seconds: float = 0.0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    failures: list[tuple[Any, str]] = field(default_factory=list)  # the first few
    report_lines: list[str] = field(default_factory=list)  # a task's own report, for people

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "records": self.records,
            "skipped": self.skipped,
            "failed": self.failed,
            "counts": {k: dict(v.most_common()) for k, v in self.counts.items()},
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records_per_s, 3),
            "generated_tokens": self.generated_tokens,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "failures": [{"id": i, "error": e} for i, e in self.failures],
        }


def run_job(
    records: Iterable[Record],
    work: Callable[[Record], dict[str, Any]],
    write: Callable[[dict[str, Any]], None],
    *,
    workers: int = 8,
    done: Sequence[str] = (),
    count_fields: tuple[str, ...] = (),
    total: int | None = None,
    progress: Progress | None = None,
) -> JobSummary:
    """Run ``work`` on each record (on ``workers`` threads) and ``write`` each result, with
    the record's ``id`` first, in input order."""
    summary = JobSummary(counts={f: collections.Counter() for f in count_fields})
    task = (progress or NullProgress()).task("records", total, unit="records")
    started = time.perf_counter()
    window: collections.deque[tuple[Record, Future]] = collections.deque()

    def finish_oldest() -> None:
        record, fut = window.popleft()
        result = _result(record, fut)
        write(result)
        _count(summary, result, count_fields)
        task.advance(1)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pocketlm-task")
    try:
        for record in records:
            if summary.skipped < len(done):  # resuming: this one is written already
                _check_same(record, done[summary.skipped], summary.skipped)
                summary.skipped += 1
                task.advance(1)
                continue
            window.append((record, pool.submit(_guarded, work, record)))
            while window and (len(window) > 2 * workers or window[0][1].done()):
                finish_oldest()
        while window:
            finish_oldest()
    finally:
        # Interrupted: records not written are dropped (a resumed run does them); the ones
        # running end when their engine closes, which the caller does next.
        pool.shutdown(wait=False, cancel_futures=True)
    summary.seconds = time.perf_counter() - started
    return summary


def _check_same(record: Record, written: str, index: int) -> None:
    if str(record.id) != written:
        raise UsageError(
            f"the results being resumed do not belong to this input: result {index + 1} is "
            f"for id {written}, record {index + 1} has id {record.id}",
            "resume with the same input, or pass --overwrite to start again",
        )


def _guarded(work: Callable[[Record], dict[str, Any]], record: Record) -> dict[str, Any]:
    if record.error is not None:
        raise RecordFailed(record.error)
    return work(record)


def _result(record: Record, fut: Future) -> dict[str, Any]:
    try:
        return {"id": record.id, **fut.result()}
    except (RecordFailed, PocketError) as e:
        return {"id": record.id, "error": _one_line(str(e))}
    except ValueError as e:  # bad data inside a record (a parser's complaint)
        return {"id": record.id, "error": _one_line(f"invalid record: {e}")}


def _count(summary: JobSummary, result: dict[str, Any], fields: tuple[str, ...]) -> None:
    summary.records += 1
    if "error" in result:
        summary.failed += 1
        if len(summary.failures) < 10:
            summary.failures.append((result["id"], result["error"]))
        return
    for f in fields:
        value = result.get(f)
        if isinstance(value, (str, bool, int)) or value is None:
            summary.counts[f][str(value).lower() if isinstance(value, bool) else str(value)] += 1


def _one_line(text: str, width: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
