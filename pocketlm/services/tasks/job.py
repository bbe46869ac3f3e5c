"""A batch job: every record of an input through one task, results in input order.

Records are read lazily and handed to worker threads (a few more than the engine's parallel
sequences, so the engine never waits for work); results are written in input order as soon
as the oldest record in flight is done, so memory holds a window of records, never the
file. A record that fails is written with its ``error``; none is dropped.

A run on Ray (``distributed``) is made of the same parts: each worker runs its shard with
``run_all``, and the driver writes, counts and resumes with ``Tally``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
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

    def add_tokens(self, counters: Any) -> None:
        """Add an engine's token counts (``TaskEngine.counters``): prompt tokens include
        the ones scored."""
        self.generated_tokens += counters.generated_tokens
        self.prompt_tokens += counters.prompt_tokens + counters.scored_tokens
        self.cached_tokens += counters.cached_tokens

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
    retry: Collection[str] = (),
    count_fields: tuple[str, ...] = (),
    total: int | None = None,
    progress: Progress | None = None,
) -> JobSummary:
    """Run ``work`` on each record (on ``workers`` threads) and ``write`` each result, with
    the record's ``id`` first, in input order."""
    tally = Tally(
        write, done=done, retry=retry, count_fields=count_fields, total=total, progress=progress
    )
    window: collections.deque[tuple[Record, Future]] = collections.deque()

    def finish_oldest() -> None:
        record, fut = window.popleft()
        tally.put(_result(record, fut))

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pocketlm-task")
    try:
        for record in records:
            if tally.skip(record):
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
    return tally.finish()


def run_all(
    records: Sequence[Record], work: Callable[[Record], dict[str, Any]], pool: Executor
) -> list[dict[str, Any]]:
    """``work`` on every one of ``records`` at once, on ``pool``'s threads: the results in
    order, as ``run_job`` writes them (a record that fails has its ``error``)."""
    futures = [pool.submit(_guarded, work, record) for record in records]
    return [_result(record, fut) for record, fut in zip(records, futures)]


class Tally:
    """A job's results as they are written, in input order: each is passed to ``write``,
    counted in ``summary`` and shown in the progress; records already in the output
    (``done``, when resuming) are checked and skipped, but for those in ``retry`` (failed,
    done again)."""

    def __init__(
        self,
        write: Callable[[dict[str, Any]], None],
        *,
        done: Sequence[str] = (),
        retry: Collection[str] = (),
        count_fields: tuple[str, ...] = (),
        total: int | None = None,
        progress: Progress | None = None,
    ):
        self.summary = JobSummary(counts={f: collections.Counter() for f in count_fields})
        self._write, self._done, self._retry, self._fields = write, done, retry, count_fields
        self._seen = 0  # records of the input checked against ``done``
        self._task = (progress or NullProgress()).task("records", total, unit="records")
        self._started = time.perf_counter()

    def skip(self, record: Record) -> bool:
        """True when ``record`` is written already (resuming); its id must be the one written."""
        if self._seen >= len(self._done):
            return False
        _check_same(record, self._done[self._seen], self._seen)
        self._seen += 1
        if str(record.id) in self._retry:
            return False
        self.summary.skipped += 1
        self._task.advance(1)
        return True

    def put(self, result: dict[str, Any]) -> None:
        self._write(result)
        _count(self.summary, result, self._fields)
        self._task.advance(1)

    def finish(self) -> JobSummary:
        self.summary.seconds = time.perf_counter() - self._started
        return self.summary


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
        if f not in result:  # a field some results have (extract's ungrounded)
            continue
        value = result[f]
        if isinstance(value, list):  # each name it lists (extract's ungrounded fields)
            summary.counts[f].update(str(v) for v in value if isinstance(v, (str, int)))
        elif isinstance(value, (str, bool, int)) or value is None:
            summary.counts[f][str(value).lower() if isinstance(value, bool) else str(value)] += 1


def _one_line(text: str, width: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
